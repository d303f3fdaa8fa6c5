/**
 * Values and modifiers: the one table of Sigma modifiers, the parsing of Sigma strings (wildcards and
 * escapes), and the compilation of `field|mod|mod: values` into tests that run without re-parsing.
 */
import { EdrError } from '../../infra/errors.js';
import { asString, type EvalContext, type FieldRef, fieldRef } from './event-view.js';
import { DEFAULT_RULE_LIMITS, LIMIT_CODE, type RuleLimits } from './limits.js';
import { caseSensitive, compileRegex, requiredLiterals } from './safe-regex.js';

type ModifierKind =
  | 'wrap' // where the value sits in the field: contains, startswith, endswith
  | 'list' // all: values are ANDed
  | 'transform' // rewrites the value: encodings, windash, expand
  | 'type' // how the value is compared: re, cidr, exists, fieldref, gt, ...
  | 'reflag' // sub-modifier of re
  | 'flag' // cased, neq
  | 'timepart'; // extracts a number from the event's date value

/** Every modifier of Sigma 2.1 (appendix "modifiers"), and what kind of thing it does. */
export const MODIFIERS: Readonly<Record<string, ModifierKind>> = {
  contains: 'wrap',
  startswith: 'wrap',
  endswith: 'wrap',
  all: 'list',
  base64: 'transform',
  base64offset: 'transform',
  utf16le: 'transform',
  utf16be: 'transform',
  utf16: 'transform',
  wide: 'transform',
  windash: 'transform',
  expand: 'transform',
  re: 'type',
  cidr: 'type',
  exists: 'type',
  fieldref: 'type',
  gt: 'type',
  gte: 'type',
  lt: 'type',
  lte: 'type',
  i: 'reflag',
  m: 'reflag',
  s: 'reflag',
  cased: 'flag',
  neq: 'flag',
  minute: 'timepart',
  hour: 'timepart',
  day: 'timepart',
  week: 'timepart',
  month: 'timepart',
  year: 'timepart',
};

/** The dash-like characters `windash` makes interchangeable. */
const DASHES = '-/\u2013\u2014\u2015';

// A Sigma string after escape processing: literal text, `*`, `?`, a windash position, or a placeholder.
type Part =
  | { t: 'lit'; s: string }
  | { t: 'star' }
  | { t: 'one' }
  | { t: 'dash' }
  | { t: 'ph'; name: string };

/**
 * Parses a Sigma string value: `*` and `?` are wildcards; a backslash escapes `*`, `?` and itself; any other
 * backslash is literal (spec "Escaping"). With placeholders on, `%name%` is a placeholder and `\%` a percent.
 */
export function parseSigmaString(raw: string, placeholders = false): Part[] {
  const parts: Part[] = [];
  let lit = '';
  const push = (p: Part): void => {
    if (lit) parts.push({ t: 'lit', s: lit });
    lit = '';
    parts.push(p);
  };
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    if (c === '\\') {
      const n = raw[i + 1];
      if (n === '*' || n === '?' || n === '\\' || (placeholders && n === '%')) {
        lit += n;
        i++;
      } else lit += c;
    } else if (c === '*') push({ t: 'star' });
    else if (c === '?') push({ t: 'one' });
    else if (placeholders && c === '%') {
      const end = raw.indexOf('%', i + 1);
      if (end > i + 1) {
        push({ t: 'ph', name: raw.slice(i + 1, end) });
        i = end;
      } else lit += c;
    } else lit += c;
  }
  if (lit) parts.push({ t: 'lit', s: lit });
  return parts;
}

/**
 * What the candidate index may use of a test: the field's lowercased value contains one of the literals (or,
 * when exact, equals one of them) whenever the test passes.
 */
export interface IndexKey {
  literals: readonly string[];
  exact: boolean;
}

/** A compiled test of one rule value against one field (or, with field undefined, the whole event). */
export interface ValueTest {
  test(ctx: EvalContext, field: FieldRef | undefined): boolean;
  /** Undefined when no literal is known to be needed (regex without literals, null, numeric comparisons...). */
  readonly key: IndexKey | undefined;
  /** True when the test cannot pass on an absent or null field (the index can then ask for its presence). */
  readonly needsField?: boolean;
  /** Set on simple case-insensitive values, so long lists of them can be combined. */
  readonly shape?: Shape;
}

const NEVER: ValueTest = { test: () => false, key: undefined };

// ---- wildcard patterns --------------------------------------------------------------------------------

// A segment between stars: each element matches one UTF-16 unit: a char, any char (`?`) or a dash.
type Elem = string | 0 | 1; // 0 = any char, 1 = dash class

function segMatchAt(seg: readonly Elem[], s: string, at: number): boolean {
  for (let k = 0; k < seg.length; k++) {
    const e = seg[k]!;
    const c = s[at + k];
    if (c === undefined) return false;
    if (e === 0) continue;
    if (e === 1) {
      if (!DASHES.includes(c)) return false;
    } else if (e !== c) return false;
  }
  return true;
}

function segFind(seg: readonly Elem[], s: string, from: number): number {
  for (let at = from; at + seg.length <= s.length; at++) if (segMatchAt(seg, s, at)) return at;
  return -1;
}

/** Builds a matcher for a wildcard pattern over an already case-normalised string. */
function globMatcher(
  parts: readonly Part[],
  lower: boolean,
): { match: (s: string) => boolean; key: IndexKey | undefined; shape?: Shape } {
  const segs: Elem[][] = [[]];
  for (const p of parts) {
    if (p.t === 'star') segs.push([]);
    else {
      const seg = segs[segs.length - 1]!;
      if (p.t === 'lit') {
        // One element per UTF-16 unit, the unit `?` stands for in every backend.
        const text = lower ? p.s.toLowerCase() : p.s;
        for (let i = 0; i < text.length; i++) seg.push(text[i]!);
      } else if (p.t === 'one') seg.push(0);
      else if (p.t === 'dash') seg.push(1);
      else throw new Error('placeholder left in a value');
    }
  }
  const anchoredStart = parts[0]?.t !== 'star';
  const anchoredEnd = parts[parts.length - 1]?.t !== 'star' && parts.length > 0;
  const nonEmpty = segs.filter((s) => s.length > 0);
  // Longest literal run, for the candidate index.
  let atom: string | undefined;
  for (const seg of segs) {
    let run = '';
    for (const e of [...seg, 0 as const]) {
      if (typeof e === 'string') run += e;
      else {
        if (run && (atom === undefined || run.length > atom.length)) atom = run;
        run = '';
      }
    }
  }
  const plain = segs.every((s) => s.every((e) => typeof e === 'string'));
  const key: IndexKey | undefined =
    plain && segs.length === 1
      ? { literals: [segs[0]!.join('').toLowerCase()], exact: true }
      : atom === undefined
        ? undefined
        : { literals: [atom.toLowerCase()], exact: false };
  if (plain && segs.length <= 2) {
    const a = segs[0]!.join('');
    if (segs.length === 1) return { match: (s) => s === a, key, shape: { kind: 'exact', text: a } };
    const b = segs[1]!.join('');
    if (anchoredStart && a && !b)
      return { match: (s) => s.startsWith(a), key, shape: { kind: 'prefix', text: a } };
    if (!a && b && anchoredEnd)
      return { match: (s) => s.endsWith(b), key, shape: { kind: 'suffix', text: b } };
    return { match: (s) => s.length >= a.length + b.length && s.startsWith(a) && s.endsWith(b), key };
  }
  if (plain && segs.length === 3 && segs[0]!.length === 0 && segs[2]!.length === 0) {
    const mid = segs[1]!.join('');
    return { match: (s) => s.includes(mid), key, shape: { kind: 'contains', text: mid } };
  }
  if (segs.length === 1) {
    const seg = segs[0]!;
    return { match: (s) => s.length === seg.length && segMatchAt(seg, s, 0), key };
  }
  const first = segs[0]!;
  const last = segs[segs.length - 1]!;
  const middle = segs.slice(1, -1).filter((s) => s.length > 0);
  const minLen = nonEmpty.reduce((n, s) => n + s.length, 0);
  return {
    match: (s) => {
      if (s.length < minLen) return false;
      if (!segMatchAt(first, s, 0)) return false;
      let pos = first.length;
      const end = s.length - last.length;
      if (end < pos || !segMatchAt(last, s, end)) return false;
      for (const seg of middle) {
        const at = segFind(seg, s, pos);
        if (at < 0 || at + seg.length > end) return false;
        pos = at + seg.length;
      }
      return true;
    },
    key,
  };
}

function anyScalar(raw: unknown, f: (s: string) => boolean, lower: boolean): boolean {
  if (Array.isArray(raw)) {
    for (const x of raw) {
      const s = asString(x);
      if (s !== undefined && f(lower ? s.toLowerCase() : s)) return true;
    }
  }
  return false;
}

function globTest(parts: readonly Part[], cased: boolean): ValueTest {
  const { match, key, shape } = globMatcher(parts, !cased);
  return { ...stringTest(match, cased, key), ...(shape && !cased ? { shape } : {}) };
}

/** A test applying `match` to the field's string (lowercased unless cased), to list elements, or to keywords. */
function stringTest(match: (s: string) => boolean, cased: boolean, key: IndexKey | undefined): ValueTest {
  return {
    key,
    needsField: true,
    test(ctx, field) {
      if (field === undefined) {
        const vals = cased ? ctx.keywordValues() : ctx.keywordValuesLower();
        for (const v of vals) if (match(v)) return true;
        return false;
      }
      if (cased) {
        const raw = ctx.raw(field);
        const s = asString(raw);
        return s !== undefined ? match(s) : anyScalar(raw, match, false);
      }
      const s = ctx.lower(field);
      return s !== undefined ? match(s) : anyScalar(ctx.raw(field), match, true);
    },
  };
}

/** The simple forms most rule values take, which a long list of values can share one matcher for. */
interface Shape {
  kind: 'exact' | 'prefix' | 'suffix' | 'contains';
  text: string;
}

/** The index key of an OR of tests: any of their literals; undefined if one of them has none. */
function unionKey(tests: readonly ValueTest[]): IndexKey | undefined {
  const keys = tests.map((t) => t.key);
  if (!keys.every((k) => k !== undefined)) return undefined;
  return { literals: [...new Set(keys.flatMap((k) => k!.literals))], exact: keys.every((k) => k!.exact) };
}

/** Below this many values a plain loop over the tests is as fast. */
const COMBINE_MIN = 8;

/**
 * One test for a long OR-list of simple case-insensitive values: a set for exact values and sets per length
 * for prefixes and suffixes, instead of one comparison per value.
 */
function combinedTest(tests: readonly ValueTest[]): ValueTest | undefined {
  if (tests.length < COMBINE_MIN || tests.some((t) => t.shape === undefined)) return undefined;
  const exact = new Set<string>();
  const prefixes = new Map<number, Set<string>>();
  const suffixes = new Map<number, Set<string>>();
  const infixes: string[] = [];
  for (const t of tests) {
    const { kind, text } = t.shape!;
    if (kind === 'exact') exact.add(text);
    else if (kind === 'contains') {
      if (text === '') return undefined; // matches everything; not worth an automaton
      infixes.push(text);
    } else {
      const byLen = kind === 'prefix' ? prefixes : suffixes;
      const set = byLen.get(text.length) ?? new Set<string>();
      set.add(text);
      byLen.set(text.length, set);
    }
  }
  const prefixLens = [...prefixes];
  const suffixLens = [...suffixes];
  const match = (s: string): boolean => {
    if (exact.has(s)) return true;
    for (const [n, set] of prefixLens) if (s.length >= n && set.has(s.slice(0, n))) return true;
    for (const [n, set] of suffixLens) if (s.length >= n && set.has(s.slice(s.length - n))) return true;
    // Substrings stay a loop: `includes` is fast, and an automaton per list costs more memory than it saves.
    for (const x of infixes) if (s.includes(x)) return true;
    return false;
  };
  return stringTest(match, false, unionKey(tests));
}

// ---- value pipeline -------------------------------------------------------------------------------------

type Variant = { parts: Part[]; cased?: boolean } | { bytes: Uint8Array };

function plainOf(v: Variant, mod: string): Uint8Array | string {
  if ('bytes' in v) return v.bytes;
  let s = '';
  for (const p of v.parts) {
    if (p.t !== 'lit') {
      throw new EdrError(
        'EDR_SIGMA_MODIFIER',
        `'${mod}' cannot encode a value with wildcards or placeholders`,
      );
    }
    s += p.s;
  }
  return s;
}

function utf16(s: string, le: boolean, bom: boolean): Uint8Array {
  const out = new Uint8Array(s.length * 2 + (bom ? 2 : 0));
  let o = 0;
  if (bom) {
    out[o++] = le ? 0xff : 0xfe;
    out[o++] = le ? 0xfe : 0xff;
  }
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out[o++] = le ? c & 0xff : c >> 8;
    out[o++] = le ? c >> 8 : c & 0xff;
  }
  return out;
}

const toBytes = (p: Uint8Array | string): Buffer =>
  typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p);

/** The three base64 forms of a value at byte offsets 0, 1 and 2, trimmed to their position-independent part. */
export function base64Offsets(value: Uint8Array | string): string[] {
  const bytes = toBytes(value);
  const out: string[] = [];
  for (let i = 0; i < 3; i++) {
    const enc = Buffer.concat([Buffer.alloc(i), bytes]).toString('base64');
    const start = [0, 2, 3][i]!;
    const endTrim = [0, 3, 2][(bytes.length + i) % 3]!;
    out.push(enc.slice(start, enc.length - endTrim));
  }
  return out;
}

const lit = (s: string): Part[] => (s ? [{ t: 'lit', s }] : []);

function applyTransform(
  mod: string,
  v: Variant,
  placeholders: Placeholders,
  warn: (m: string) => void,
): Variant[] {
  switch (mod) {
    case 'utf16le':
    case 'wide': {
      const p = plainOf(v, mod);
      return [{ bytes: utf16(typeof p === 'string' ? p : Buffer.from(p).toString('latin1'), true, false) }];
    }
    case 'utf16be': {
      const p = plainOf(v, mod);
      return [{ bytes: utf16(typeof p === 'string' ? p : Buffer.from(p).toString('latin1'), false, false) }];
    }
    case 'utf16': {
      const p = plainOf(v, mod);
      return [{ bytes: utf16(typeof p === 'string' ? p : Buffer.from(p).toString('latin1'), true, true) }];
    }
    case 'base64':
      // Encoded text is case-sensitive by nature: matching it case-insensitively would find other bytes.
      return [{ parts: lit(toBytes(plainOf(v, mod)).toString('base64')), cased: true }];
    case 'base64offset':
      return base64Offsets(plainOf(v, mod)).map((s) => ({ parts: lit(s), cased: true }));
    case 'windash': {
      if ('bytes' in v) return [v];
      const parts: Part[] = [];
      for (const p of v.parts) {
        if (p.t !== 'lit') parts.push(p);
        else {
          let run = '';
          for (const ch of p.s) {
            if (DASHES.includes(ch)) {
              if (run) parts.push({ t: 'lit', s: run });
              run = '';
              parts.push({ t: 'dash' });
            } else run += ch;
          }
          if (run) parts.push({ t: 'lit', s: run });
        }
      }
      return [{ ...v, parts }];
    }
    case 'expand': {
      if ('bytes' in v) return [v];
      let acc: Part[][] = [[]];
      for (const p of v.parts) {
        if (p.t !== 'ph') {
          for (const a of acc) a.push(p);
          continue;
        }
        const values = placeholders[p.name];
        if (values === undefined || values.length === 0) {
          warn(`placeholder %${p.name}% has no values in the configuration: this value matches nothing`);
          return [];
        }
        acc = acc.flatMap((a) => values.map((x) => [...a, ...parseSigmaString(x)]));
      }
      return acc.map((parts) => ({ ...v, parts }));
    }
    default:
      throw new Error(`not a transform: ${mod}`);
  }
}

function wrap(v: Variant, mod: string): Variant {
  const parts = 'bytes' in v ? lit(Buffer.from(v.bytes).toString('latin1')) : v.parts;
  const cased = 'bytes' in v ? true : v.cased;
  const star: Part = { t: 'star' };
  const startsStar = parts[0]?.t === 'star';
  const endsStar = parts[parts.length - 1]?.t === 'star';
  const head = (mod === 'contains' || mod === 'endswith') && !startsStar ? [star] : [];
  const tail = (mod === 'contains' || mod === 'startswith') && !endsStar ? [star] : [];
  return { parts: [...head, ...parts, ...tail], ...(cased ? { cased } : {}) };
}

export type Placeholders = Readonly<Record<string, readonly string[]>>;

export interface CompileOptions {
  /** Values for `|expand` placeholders, by name without the percent signs. */
  placeholders?: Placeholders;
  /** Bounds on a rule's cost (the regular expression length here); default DEFAULT_RULE_LIMITS. */
  limits?: RuleLimits;
}

/** A compiled `field|modifiers: values` item of a selection. */
export interface FieldItem {
  /** Sigma field name; undefined for a keyword search over the whole event. */
  field: string | undefined;
  /** The field's cache slot (undefined with field). */
  ref: FieldRef | undefined;
  key: string;
  tests: ValueTest[];
  /** `all`: every value must match (else any). */
  all: boolean;
  /** Fields read by the tests other than `field` (fieldref), for matched-field reports. */
  refs: string[];
  /** Their cache slots. */
  refRefs: FieldRef[];
}

// ---- the other value types --------------------------------------------------------------------------------

function numberOf(v: unknown): number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'string' && v.trim() !== '' && !Number.isNaN(Number(v))) return Number(v);
  return undefined;
}

function timePart(raw: unknown, part: string): number | undefined {
  let d: Date;
  if (typeof raw === 'number') d = new Date(raw < 1e11 ? raw * 1000 : raw);
  else if (typeof raw === 'string') d = new Date(raw);
  else if (raw instanceof Date) d = raw;
  else return undefined;
  const t = d.getTime();
  if (Number.isNaN(t)) return undefined;
  switch (part) {
    case 'minute':
      return d.getUTCMinutes();
    case 'hour':
      return d.getUTCHours();
    case 'day':
      return d.getUTCDate();
    case 'month':
      return d.getUTCMonth() + 1;
    case 'year':
      return d.getUTCFullYear();
    default: {
      // ISO 8601 week number.
      const day = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
      const dow = day.getUTCDay() || 7;
      day.setUTCDate(day.getUTCDate() + 4 - dow);
      const yearStart = Date.UTC(day.getUTCFullYear(), 0, 1);
      return Math.ceil(((day.getTime() - yearStart) / 86400000 + 1) / 7);
    }
  }
}

const COMPARE: Readonly<Record<string, (a: number, b: number) => boolean>> = {
  eq: (a, b) => a === b,
  gt: (a, b) => a > b,
  gte: (a, b) => a >= b,
  lt: (a, b) => a < b,
  lte: (a, b) => a <= b,
};

function numericTest(op: string, n: number, part: string | undefined): ValueTest {
  const cmp = COMPARE[op]!;
  return {
    key: undefined,
    needsField: true,
    test(ctx, field) {
      if (field === undefined) return false;
      const raw = ctx.raw(field);
      const x = part === undefined ? numberOf(raw) : timePart(raw, part);
      return x !== undefined && cmp(x, n);
    },
  };
}

/** IPv4 or IPv6 address as 16 bytes (IPv4 mapped), or undefined. */
export function parseIp(s: string): Uint8Array | undefined {
  const out = new Uint8Array(16);
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(s)) {
    const p = s.split('.').map(Number);
    if (p.some((x) => x > 255)) return undefined;
    out[10] = 0xff;
    out[11] = 0xff;
    out.set(p, 12);
    return out;
  }
  if (!s.includes(':') || !/^[0-9a-fA-F:.]+$/.test(s)) return undefined;
  let tail4: number[] = [];
  let text = s;
  const v4 = /(\d{1,3}(\.\d{1,3}){3})$/.exec(s);
  if (v4) {
    tail4 = v4[1]!.split('.').map(Number);
    text = `${s.slice(0, v4.index)}0:0`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const head = halves[0] ? halves[0].split(':') : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(':') : [];
  const groups =
    halves.length === 2 ? [...head, ...Array(8 - head.length - tail.length).fill('0'), ...tail] : head;
  if (groups.length !== 8 || groups.some((g) => !/^[0-9a-fA-F]{1,4}$/.test(g))) return undefined;
  groups.forEach((g, i) => {
    const v = Number.parseInt(g, 16);
    out[i * 2] = v >> 8;
    out[i * 2 + 1] = v & 0xff;
  });
  if (tail4.length === 4) out.set(tail4, 12);
  return out;
}

function cidrTest(value: string): ValueTest {
  const [addr, bitsText] = value.split('/');
  const ip = parseIp(addr ?? '');
  const isV4 = /^\d/.test(addr ?? '') && !(addr ?? '').includes(':');
  const maxBits = isV4 ? 32 : 128;
  const bits = bitsText === undefined ? maxBits : Number(bitsText);
  if (ip === undefined || !Number.isInteger(bits) || bits < 0 || bits > maxBits) {
    throw new EdrError(
      'EDR_SIGMA_MODIFIER',
      `'${value}' is not a CIDR network (like 10.0.0.0/8 or fe80::/10)`,
    );
  }
  const prefix = bits + (isV4 ? 96 : 0);
  const inNet = (s: string): boolean => {
    const x = parseIp(s);
    if (x === undefined) return false;
    if (isV4 !== (x[10] === 0xff && x[11] === 0xff && x.slice(0, 10).every((b) => b === 0))) return false;
    for (let b = 0; b < prefix; b += 8) {
      const mask = prefix - b >= 8 ? 0xff : (0xff << (8 - (prefix - b))) & 0xff;
      if ((x[b >> 3]! & mask) !== (ip[b >> 3]! & mask)) return false;
    }
    return true;
  };
  return {
    key: undefined,
    needsField: true,
    test(ctx, field) {
      if (field === undefined) return false;
      const raw = ctx.raw(field);
      const s = asString(raw);
      return s !== undefined ? inNet(s) : anyScalar(raw, inNet, false);
    },
  };
}

function fieldrefTest(ref: FieldRef, wrapMod: string | undefined, cased: boolean): ValueTest {
  const cmp: (a: string, b: string) => boolean =
    wrapMod === 'contains'
      ? (a, b) => a.includes(b)
      : wrapMod === 'startswith'
        ? (a, b) => a.startsWith(b)
        : wrapMod === 'endswith'
          ? (a, b) => a.endsWith(b)
          : (a, b) => a === b;
  return {
    key: undefined,
    needsField: true,
    test(ctx, field) {
      if (field === undefined) return false;
      const a = cased ? asString(ctx.raw(field)) : ctx.lower(field);
      const b = cased ? asString(ctx.raw(ref)) : ctx.lower(ref);
      return a !== undefined && b !== undefined && cmp(a, b);
    },
  };
}

const nullTest: ValueTest = {
  key: undefined,
  test: (ctx, field) => (field === undefined ? false : ctx.raw(field) == null),
};

function existsTest(want: boolean): ValueTest {
  return {
    key: undefined,
    test: (ctx, field) => field !== undefined && (ctx.raw(field) !== undefined) === want,
  };
}

function negate(t: ValueTest): ValueTest {
  // A value "different from" another needs a value: an absent field is not different, it is absent.
  return {
    key: undefined,
    needsField: true,
    test: (ctx, field) => field !== undefined && ctx.raw(field) != null && !t.test(ctx, field),
  };
}

function anyOf(tests: ValueTest[]): ValueTest {
  if (tests.length === 1) return tests[0]!;
  if (tests.length === 0) return NEVER;
  const key = unionKey(tests);
  return {
    key,
    needsField: tests.every((t) => t.needsField === true),
    test(ctx, field) {
      for (const t of tests) if (t.test(ctx, field)) return true;
      return false;
    },
  };
}

/**
 * Compiles one `key: value(s)` entry of a selection. `warn` receives non-fatal notes (unresolved placeholders).
 * Throws EdrError (EDR_SIGMA_MODIFIER / EDR_SIGMA_REGEX / EDR_SIGMA_VALUE) for what cannot work.
 */
export function compileFieldItem(
  key: string,
  value: unknown,
  opts: CompileOptions,
  warn: (m: string) => void,
): FieldItem {
  const [fieldName = '', ...mods] = key.split('|');
  const field = fieldName === '' ? undefined : fieldName;
  const bad = (m: string): never => {
    throw new EdrError('EDR_SIGMA_MODIFIER', `'${key}': ${m}`);
  };
  const seen = new Set<string>();
  let typeMod: string | undefined;
  let wrapMod: string | undefined;
  let timeMod: string | undefined;
  const reFlags: string[] = [];
  for (const m of mods) {
    const kind = MODIFIERS[m];
    if (kind === undefined) bad(`unknown modifier '${m}' (known: ${Object.keys(MODIFIERS).join(', ')})`);
    if (seen.has(m) && kind !== 'transform') bad(`modifier '${m}' given twice`);
    seen.add(m);
    if (kind === 'type') {
      if (typeMod !== undefined) bad(`modifiers '${typeMod}' and '${m}' cannot be combined`);
      typeMod = m;
    } else if (kind === 'wrap') {
      if (wrapMod !== undefined) bad(`modifiers '${wrapMod}' and '${m}' cannot be combined`);
      wrapMod = m;
    } else if (kind === 'reflag') {
      if (!seen.has('re')) bad(`'${m}' is a sub-modifier of 're' and must follow it`);
      reFlags.push(m);
    } else if (kind === 'timepart') {
      if (timeMod !== undefined) bad(`modifiers '${timeMod}' and '${m}' cannot be combined`);
      timeMod = m;
    }
  }
  const cased = seen.has('cased');
  const all = seen.has('all');
  if (typeMod === 're' && (wrapMod !== undefined || mods.some((m) => MODIFIERS[m] === 'transform'))) {
    bad(
      `'re' cannot be combined with ${wrapMod ?? 'encoding'} modifiers: write the regular expression accordingly`,
    );
  }
  if (field === undefined && typeMod !== undefined) bad(`'${typeMod}' needs a field name`);
  const values = Array.isArray(value) ? value : [value];
  if (values.length === 0) throw new EdrError('EDR_SIGMA_VALUE', `'${key}': empty list of values`);
  if (all && values.length === 1 && !Array.isArray(value)) {
    bad("'all' needs a list of values (for a single value, drop the modifier)");
  }
  const transforms = mods.filter((m) => MODIFIERS[m] === 'transform' || MODIFIERS[m] === 'wrap');
  const refs: string[] = [];
  const maxRegex = opts.limits?.maxRegexLength ?? DEFAULT_RULE_LIMITS.maxRegexLength;
  const valueTest = (v: unknown, idx: number): ValueTest => {
    const where = values.length > 1 ? ` (value ${idx + 1})` : '';
    const badValue = (m: string): never => {
      throw new EdrError('EDR_SIGMA_VALUE', `'${key}'${where}: ${m}`);
    };
    if (v === null) {
      if (typeMod !== undefined) badValue(`'${typeMod}' needs a value, not null`);
      return seen.has('neq') ? existsTest(true) : nullTest;
    }
    if (typeof v === 'object')
      badValue('a value must be a string, number, boolean or null, not a list or map');
    let t: ValueTest;
    switch (typeMod) {
      case 'exists':
        if (typeof v !== 'boolean') badValue(`'exists' takes true or false, not ${JSON.stringify(v)}`);
        return existsTest(v as boolean);
      case 'gt':
      case 'gte':
      case 'lt':
      case 'lte': {
        const n = numberOf(v);
        if (n === undefined) badValue(`'${typeMod}' compares numbers; ${JSON.stringify(v)} is not one`);
        t = numericTest(typeMod, n as number, timeMod);
        break;
      }
      case 're': {
        if (typeof v !== 'string') badValue("'re' needs a string");
        if ((v as string).length > maxRegex) {
          throw new EdrError(
            LIMIT_CODE,
            `'${key}'${where}: a regular expression of ${(v as string).length} characters, over the limit of ${maxRegex} (rules.limits.maxRegexLength)`,
          );
        }
        const flags = reFlags.join('');
        const re = compileRegex(v as string, flags);
        const literals = requiredLiterals(v as string);
        // A case-sensitive pattern's literals, as written: checked on the value itself, they rule out far more
        // values than their lowercase forms (`-(W|R)` and every command line with `-r` or `-w`).
        const cased = caseSensitive(v as string, flags) ? requiredLiterals(v as string, true) : undefined;
        t = {
          key: literals === undefined ? undefined : { literals, exact: false },
          needsField: true,
          test(ctx, f) {
            if (f === undefined) {
              for (const s of ctx.keywordValues()) if (re.test(s)) return true;
              return false;
            }
            const raw = ctx.raw(f);
            const s = asString(raw);
            if (s === undefined) return anyScalar(raw, re.test, false);
            // A cheap necessary check before crossing into the regex engine.
            if (cased !== undefined) {
              if (!cased.some((l) => s.includes(l))) return false;
            } else if (literals !== undefined) {
              const low = ctx.lower(f)!;
              if (!literals.some((l) => low.includes(l))) return false;
            }
            return re.test(s);
          },
        };
        break;
      }
      case 'cidr':
        if (typeof v !== 'string') badValue("'cidr' needs a string like 10.0.0.0/8");
        t = cidrTest(v as string);
        break;
      case 'fieldref':
        if (typeof v !== 'string') badValue("'fieldref' needs the name of another field");
        refs.push(v as string);
        t = fieldrefTest(fieldRef(v as string), wrapMod, cased);
        break;
      default: {
        if (timeMod !== undefined) {
          const n = numberOf(v);
          if (n === undefined) badValue(`'${timeMod}' compares numbers; ${JSON.stringify(v)} is not one`);
          t = numericTest('eq', n as number, timeMod);
          break;
        }
        if ((typeof v === 'number' || typeof v === 'boolean') && transforms.length === 0) {
          // A YAML number or boolean matches the same value or its string form: `LogonId: 0` matches "0"
          // (not "00": strings compare as strings, which also keeps the index key exact).
          const s = String(v).toLowerCase();
          t = {
            key: { literals: [s], exact: true },
            needsField: true,
            test(ctx, f) {
              if (f === undefined) return ctx.keywordValuesLower().some((x) => x.includes(s));
              const low = ctx.lower(f);
              return low !== undefined ? low === s : anyScalar(ctx.raw(f), (x) => x === s, true);
            },
          };
          break;
        }
        const raw = String(v);
        let variants: Variant[] = [{ parts: parseSigmaString(raw, seen.has('expand')) }];
        if (field === undefined && wrapMod === undefined) variants = [wrap(variants[0]!, 'contains')];
        for (const m of transforms) {
          variants =
            MODIFIERS[m] === 'wrap'
              ? variants.map((x) => wrap(x, m))
              : variants.flatMap((x) => applyTransform(m, x, opts.placeholders ?? {}, warn));
        }
        t = anyOf(
          variants.map((x) =>
            'bytes' in x
              ? globTest(lit(Buffer.from(x.bytes).toString('latin1')), true)
              : globTest(x.parts, cased || x.cased === true),
          ),
        );
      }
    }
    return seen.has('neq') ? negate(t) : t;
  };
  const tests = values.map((v, idx): ValueTest => {
    try {
      return valueTest(v, idx);
    } catch (err) {
      // Which value of a list failed, so the problem points at its own line.
      if (err instanceof EdrError && Array.isArray(value) && err.details['valueIndex'] === undefined) {
        throw new EdrError(err.code, err.message, {
          cause: err.cause,
          details: { ...err.details, valueIndex: idx },
        });
      }
      throw err;
    }
  });
  const combined = all || seen.has('neq') ? undefined : combinedTest(tests);
  if (combined !== undefined) tests.splice(0, tests.length, combined);
  // "Different from each value": a neq list is ANDed, else it would hold for any field with two values.
  return {
    field,
    ref: field === undefined ? undefined : fieldRef(field),
    key,
    tests,
    all: all || seen.has('neq'),
    refs,
    refRefs: refs.map(fieldRef),
  };
}

/** Whether an item matches the event (no recording). */
export function itemMatches(item: FieldItem, ctx: EvalContext): boolean {
  const { tests, ref: field } = item;
  if (item.all) {
    for (const t of tests) if (!t.test(ctx, field)) return false;
    return true;
  }
  for (const t of tests) if (t.test(ctx, field)) return true;
  return false;
}
