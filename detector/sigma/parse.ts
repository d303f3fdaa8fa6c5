/**
 * YAML → Sigma documents (detection rules, filters, correlations), keeping every node's line so that a rule
 * author gets `file:line: reason` for any problem, and one bad document never stops the others from loading.
 */
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';
import { join, relative } from 'node:path';
import {
  type Document,
  isMap,
  isPair,
  isScalar,
  isSeq,
  LineCounter,
  type Node,
  parseAllDocuments,
  visit,
} from 'yaml';
import { EdrError } from '../../infra/errors.js';
import { isLevel, LEVEL_ORDER } from '../../schemas/levels.js';
import { DEFAULT_RULE_LIMITS, LIMIT_CODE, type RuleLimits } from './limits.js';

export interface LogSource {
  product?: string;
  category?: string;
  service?: string;
}

/** Finds the line (1-based) of the YAML node at a path of keys/indexes; falls back to the closest parent. */
export type Locator = (path: readonly (string | number)[]) => number;

interface DocBase {
  file: string;
  /** Line of the document's first key. */
  line: number;
  at: Locator;
  id: string | undefined;
  title: string;
  /** The document as plain data (unknown keys kept). */
  raw: Record<string, unknown>;
}

export interface RuleDoc extends DocBase {
  kind: 'rule';
  name: string | undefined;
  status: string | undefined;
  level: string | undefined;
  description: string | undefined;
  author: string | undefined;
  tags: string[];
  references: string[];
  falsepositives: string[];
  fields: string[];
  logsource: LogSource;
  detection: Record<string, unknown>;
}

export interface FilterDoc extends DocBase {
  kind: 'filter';
  logsource: LogSource;
  /** Ids or names of the rules the filter applies to. */
  rules: string[];
  /** Selections and condition of the filter, shaped like a rule's detection. */
  detection: Record<string, unknown>;
}

export interface CorrelationDoc extends DocBase {
  kind: 'correlation';
  name: string | undefined;
  level: string | undefined;
  correlation: Record<string, unknown>;
}

export type SigmaDoc = RuleDoc | FilterDoc | CorrelationDoc;

const hashes = new WeakMap<SigmaDoc, string>();

/** The content hash of a document (its parsed form, so formatting and comments do not count); computed once. */
export function docHash(doc: SigmaDoc): string {
  let h = hashes.get(doc);
  if (h === undefined) {
    h = createHash('sha256').update(JSON.stringify(doc.raw)).digest('hex');
    hashes.set(doc, h);
  }
  return h;
}

/** A document's identity for caches: kind, file, line and content hash (the same four compile the same). */
export function docKey(doc: SigmaDoc): string {
  let k = keys.get(doc);
  if (k === undefined) {
    k = `${doc.kind}\0${doc.file}\0${doc.line}\0${docHash(doc)}`;
    keys.set(doc, k);
  }
  return k;
}
const keys = new WeakMap<SigmaDoc, string>();

/** A document that could not be turned into a rule, with where and why. */
export interface RuleProblem {
  file: string;
  line: number;
  id: string | undefined;
  title: string | undefined;
  code: string;
  message: string;
}

export const STATUSES = new Set(['stable', 'test', 'experimental', 'deprecated', 'unsupported']);

/** Throws an EdrError carrying the line of `path` in the document. */
export function fail(
  at: Locator,
  path: readonly (string | number)[],
  message: string,
  code = 'EDR_SIGMA_PARSE',
): never {
  throw new EdrError(code, message, { details: { line: at(path) } });
}

/** Line of an error thrown while handling a document, or the document's own line. */
export function problemOf(
  doc: { file: string; line: number; id?: string | undefined; title?: string },
  err: unknown,
): RuleProblem {
  if (err instanceof EdrError) {
    const line = typeof err.details['line'] === 'number' ? err.details['line'] : doc.line;
    return { file: doc.file, line, id: doc.id, title: doc.title, code: err.code, message: err.message };
  }
  const message = err instanceof Error ? err.message : String(err);
  return {
    file: doc.file,
    line: doc.line,
    id: doc.id,
    title: doc.title,
    code: 'EDR_SIGMA_INTERNAL',
    message,
  };
}

function locator(root: Node | null, lc: LineCounter): Locator {
  const lineOf = (offset: number): number => lc.linePos(offset).line;
  return (path) => {
    let node: unknown = root;
    let best = root?.range ? lineOf(root.range[0]) : 1;
    for (const key of path) {
      if (isMap(node)) {
        const pair = node.items.find(
          (p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(key),
        );
        if (pair === undefined) return best;
        const k = pair.key as Node;
        if (k.range) best = lineOf(k.range[0]);
        node = pair.value;
      } else if (isSeq(node) && typeof key === 'number') {
        const item = node.items[key] as Node | undefined;
        if (item === undefined) return best;
        if (item.range) best = lineOf(item.range[0]);
        node = item;
      } else return best;
    }
    if (node && typeof node === 'object' && 'range' in node) {
      const r = (node as Node).range;
      if (r) best = lineOf(r[0]);
    }
    return best;
  };
}

function str(raw: Record<string, unknown>, key: string, at: Locator, required = false): string | undefined {
  const v = raw[key];
  if (v === undefined || v === null) {
    if (required) fail(at, [], `missing required key '${key}'`);
    return undefined;
  }
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (v instanceof Date) return v.toISOString().slice(0, 10);
  return fail(at, [key], `'${key}' must be a string, not ${describe(v)}`);
}

function strList(raw: Record<string, unknown>, key: string, at: Locator): string[] {
  const v = raw[key];
  if (v === undefined || v === null) return [];
  if (typeof v === 'string') return [v];
  if (!Array.isArray(v)) return fail(at, [key], `'${key}' must be a list of strings, not ${describe(v)}`);
  return v.map((item, i) => {
    if (typeof item === 'string' || typeof item === 'number') return String(item);
    return fail(at, [key, i], `'${key}' must be a list of strings; item ${i + 1} is ${describe(item)}`);
  });
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  return `the ${typeof v} ${JSON.stringify(v)}`;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

function logsourceOf(raw: Record<string, unknown>, at: Locator): LogSource {
  const ls = raw['logsource'];
  if (ls === undefined || ls === null) fail(at, [], "missing required key 'logsource'");
  if (!isRecord(ls)) fail(at, ['logsource'], `'logsource' must be a map, not ${describe(ls)}`);
  const out: LogSource = {};
  for (const k of ['product', 'category', 'service'] as const) {
    const v = ls[k];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'string')
      fail(at, ['logsource', k], `'logsource.${k}' must be a string, not ${describe(v)}`);
    out[k] = v.toLowerCase();
  }
  return out;
}

/** Validates one YAML document's data as a Sigma rule, filter or correlation. */
export function toDoc(raw: unknown, file: string, at: Locator): SigmaDoc {
  const line = at([]);
  if (!isRecord(raw)) fail(at, [], `a Sigma document must be a map, not ${describe(raw)}`);
  if (raw['action'] !== undefined) {
    fail(
      at,
      ['action'],
      `'action: ${String(raw['action'])}' rule collections are Sigma 1 syntax; write each rule as its own document`,
    );
  }
  const id = str(raw, 'id', at);
  const title = str(raw, 'title', at, true) as string;
  const base = { file, line, at, id, title, raw };
  if (raw['correlation'] !== undefined) {
    if (!isRecord(raw['correlation'])) fail(at, ['correlation'], "'correlation' must be a map");
    return {
      ...base,
      kind: 'correlation',
      name: str(raw, 'name', at),
      level: str(raw, 'level', at),
      correlation: raw['correlation'],
    };
  }
  if (raw['filter'] !== undefined && raw['detection'] === undefined) {
    const f = raw['filter'];
    if (!isRecord(f)) fail(at, ['filter'], `'filter' must be a map, not ${describe(f)}`);
    const rules = f['rules'];
    let ruleRefs: string[];
    if (typeof rules === 'string') ruleRefs = [rules];
    else if (Array.isArray(rules) && rules.every((r) => typeof r === 'string')) ruleRefs = rules as string[];
    else fail(at, ['filter', 'rules'], "'filter.rules' must list the ids or names of the rules to filter");
    const detection: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(f)) if (k !== 'rules') detection[k] = v;
    return { ...base, kind: 'filter', logsource: logsourceOf(raw, at), rules: ruleRefs, detection };
  }
  const detection = raw['detection'];
  if (detection === undefined || detection === null) fail(at, [], "missing required key 'detection'");
  if (!isRecord(detection)) fail(at, ['detection'], `'detection' must be a map, not ${describe(detection)}`);
  const level = str(raw, 'level', at)?.toLowerCase();
  if (level !== undefined && !isLevel(level)) {
    fail(at, ['level'], `unknown level '${level}' (expected one of ${LEVEL_ORDER.join(', ')})`);
  }
  const status = str(raw, 'status', at)?.toLowerCase();
  if (status !== undefined && !STATUSES.has(status)) {
    fail(at, ['status'], `unknown status '${status}' (expected one of ${[...STATUSES].join(', ')})`);
  }
  return {
    ...base,
    kind: 'rule',
    name: str(raw, 'name', at),
    status,
    level,
    description: str(raw, 'description', at),
    author: str(raw, 'author', at),
    tags: strList(raw, 'tags', at),
    references: strList(raw, 'references', at),
    falsepositives: strList(raw, 'falsepositives', at),
    fields: strList(raw, 'fields', at),
    logsource: logsourceOf(raw, at),
    detection,
  };
}

/** 1-based line holding the byte at `offset` of `text` (UTF-8). */
function lineAtByte(bytes: Uint8Array, offset: number): number {
  let line = 1;
  const end = Math.min(offset, bytes.length);
  for (let i = 0; i < end; i++) if (bytes[i] === 0x0a) line++;
  return line;
}

function tooLarge(file: string, bytes: Uint8Array, max: number): RuleProblem {
  return {
    file,
    line: lineAtByte(bytes, max),
    id: undefined,
    title: undefined,
    code: LIMIT_CODE,
    message: `rule file is larger than ${max} bytes (rules.limits.maxFileBytes); it passes the limit on this line`,
  };
}

/** Line of the first alias in a YAML document (where an alias bomb or a self-reference starts). */
function firstAliasLine(yd: Document, lc: LineCounter, fallback: number): number {
  let line = fallback;
  visit(yd, {
    Alias(_, node) {
      if (node.range) line = lc.linePos(node.range[0]).line;
      return visit.BREAK;
    },
  });
  return line;
}

/**
 * Rejects data that contains itself (a YAML alias inside its own anchor: no rule means that, and it would loop
 * whatever walks it) and a detection with more than `maxValues` values (aliases expanded), at the offending line.
 */
function checkShape(raw: Record<string, unknown>, at: Locator, maxValues: number): void {
  const detectionKey = raw['detection'] !== undefined ? 'detection' : 'filter';
  const ancestors = new Set<object>();
  let values = 0;
  const walk = (v: unknown, path: (string | number)[], counted: boolean): void => {
    if (typeof v !== 'object' || v === null || v instanceof Date) {
      if (counted && ++values > maxValues) {
        fail(
          at,
          path,
          `more than ${maxValues} values in the detection (rules.limits.maxValues), counting YAML aliases expanded`,
          LIMIT_CODE,
        );
      }
      return;
    }
    if (ancestors.has(v)) fail(at, path, 'a YAML alias refers to a node that contains it', LIMIT_CODE);
    ancestors.add(v);
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) walk(v[i], [...path, i], counted);
    } else {
      for (const [k, x] of Object.entries(v)) {
        walk(x, [...path, k], counted || (path.length === 0 && k === detectionKey));
      }
    }
    ancestors.delete(v);
  };
  walk(raw, [], false);
}

/**
 * Parses one file's text (possibly several YAML documents). Never throws: problems are returned. A text over
 * `limits.maxFileBytes` is not parsed at all.
 */
export function parseRuleText(
  text: string,
  file: string,
  limits: RuleLimits = DEFAULT_RULE_LIMITS,
): { docs: SigmaDoc[]; problems: RuleProblem[] } {
  const docs: SigmaDoc[] = [];
  const problems: RuleProblem[] = [];
  // Cheap bound first (a UTF-16 unit is at most 3 UTF-8 bytes), the exact count only when it could be over.
  if (text.length * 3 > limits.maxFileBytes && Buffer.byteLength(text) > limits.maxFileBytes) {
    problems.push(tooLarge(file, Buffer.from(text), limits.maxFileBytes));
    return { docs, problems };
  }
  const lc = new LineCounter();
  let yamlDocs: ReturnType<typeof parseAllDocuments>;
  try {
    yamlDocs = parseAllDocuments(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  } catch (err) {
    problems.push(problemOf({ file, line: 1 }, err));
    return { docs, problems };
  }
  const list = Array.isArray(yamlDocs) ? yamlDocs : [];
  let collectionLine: number | undefined; // line of a Sigma 1 `action: global` document in this file
  for (const yd of list) {
    const at = locator(yd.contents, lc);
    if (collectionLine !== undefined && yd.contents !== null) {
      problems.push({
        file,
        line: at([]),
        id: undefined,
        title: undefined,
        code: 'EDR_SIGMA_PARSE',
        message: `part of the Sigma 1 rule collection started at line ${collectionLine} ('action: global'): not supported`,
      });
      continue;
    }
    const first = yd.errors[0];
    if (first !== undefined) {
      const line = lc.linePos(first.pos[0]).line;
      problems.push({
        file,
        line,
        id: undefined,
        title: undefined,
        code: 'EDR_SIGMA_YAML',
        message: `invalid YAML: ${first.message.split('\n')[0]}`,
      });
      continue;
    }
    if (yd.contents === null) continue; // empty document, e.g. a trailing `---`
    let raw: unknown;
    try {
      try {
        raw = yd.toJS({ maxAliasCount: limits.maxAliasCount });
      } catch (err) {
        // The yaml package's guard against alias bombs ("billion laughs"); anything else is reported as it is.
        if (!(err instanceof ReferenceError && /alias count/i.test(err.message))) throw err;
        throw new EdrError(
          LIMIT_CODE,
          `YAML aliases expand beyond ${limits.maxAliasCount} (rules.limits.maxAliasCount)`,
          { details: { line: firstAliasLine(yd, lc, at([])) } },
        );
      }
      if (isRecord(raw)) checkShape(raw, at, limits.maxValues);
      if (isRecord(raw) && raw['action'] !== undefined) collectionLine = at([]);
      docs.push(toDoc(raw, file, at));
    } catch (err) {
      const r = isRecord(raw) ? raw : {};
      problems.push(
        problemOf(
          {
            file,
            line: at([]),
            id: typeof r['id'] === 'string' ? r['id'] : undefined,
            title: typeof r['title'] === 'string' ? r['title'] : '',
          },
          err,
        ),
      );
    }
  }
  return { docs, problems };
}

/**
 * Reads and parses one rule file; a file over `limits.maxFileBytes` is refused after reading only that much, so a
 * huge file costs no more memory than a large rule. Never throws.
 */
export function parseRuleFile(
  path: string,
  name: string,
  limits: RuleLimits = DEFAULT_RULE_LIMITS,
): { docs: SigmaDoc[]; problems: RuleProblem[] } {
  let text: string;
  try {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      if (size > limits.maxFileBytes) {
        const head = Buffer.alloc(limits.maxFileBytes);
        const n = readSync(fd, head, 0, head.length, 0);
        return { docs: [], problems: [tooLarge(name, head.subarray(0, n), limits.maxFileBytes)] };
      }
      text = readFileSync(fd, 'utf8');
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    return {
      docs: [],
      problems: [
        {
          file: name,
          line: 0,
          id: undefined,
          title: undefined,
          code: 'EDR_SIGMA_READ',
          message: `cannot read file: ${(err as Error).message}`,
        },
      ],
    };
  }
  return parseRuleText(text, name, limits);
}

/** Every .yml/.yaml file under dir (or dir itself if it is a file), sorted for stable output. */
export function ruleFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    const entries = readdirSync(d, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of entries) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && /\.ya?ml$/i.test(e.name)) out.push(p);
    }
  };
  try {
    walk(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR') return [dir];
    throw new EdrError('EDR_SIGMA_READ', `cannot read rule directory ${dir}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return out;
}

/** Parses every rule file under dir; file names in results are relative to `base` (default: dir). */
export function parseRuleDir(
  dir: string,
  base = dir,
  limits: RuleLimits = DEFAULT_RULE_LIMITS,
): { docs: SigmaDoc[]; problems: RuleProblem[] } {
  const docs: SigmaDoc[] = [];
  const problems: RuleProblem[] = [];
  for (const path of ruleFiles(dir)) {
    const r = parseRuleFile(path, relative(base, path) || path, limits);
    docs.push(...r.docs);
    problems.push(...r.problems);
  }
  return { docs, problems };
}
