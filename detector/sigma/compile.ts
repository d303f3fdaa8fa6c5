/**
 * Rule document → compiled rule: selections become AND/OR groups of field items, the condition a tree over
 * them, and the whole rule gets the literals an event must contain for it to possibly match (for the index).
 */
import { EdrError } from '../../infra/errors.js';
import { type Condition, parseCondition } from './conditions.js';
import type { EvalContext, FieldRef } from './event-view.js';
import { type CompileOptions, compileFieldItem, type FieldItem, itemMatches } from './modifiers.js';
import { fail, type Locator, type LogSource, type RuleDoc } from './parse.js';

/** One selection: any of its groups matches when all the items of that group match. */
export interface Selection {
  name: string;
  groups: FieldItem[][];
}

/**
 * A literal the named field (or, with field undefined, any value of the event) must contain or, exact, equal;
 * or, with presence, only that the field is there (not null).
 */
export interface Atom {
  field: string | undefined;
  literal: string;
  exact: boolean;
  presence?: boolean;
}

/** Detection part shared by rules and filters. */
export interface CompiledDetection {
  selections: ReadonlyMap<string, Selection>;
  condition: Condition;
  /** At least one atom holds in every event the detection matches; undefined when no such set is known. */
  requirement: Atom[] | undefined;
  /**
   * Further sets of atoms that, like `requirement`, each have one atom holding in every event the detection
   * matches (the other operands of an `and`, the other items of a selection): the index drops a candidate
   * missing any of them without evaluating it.
   */
  alsoRequired?: Atom[][];
  /** The condition as one closure over pre-resolved selections: no lookups at match time. */
  test: Predicate;
  /** The selections a match reports fields of (not under a `not`), each once, in condition order. */
  reported: readonly Selection[];
  warnings: string[];
}

export type Predicate = (ctx: EvalContext) => boolean;

export interface CompiledRule extends CompiledDetection {
  doc: RuleDoc;
  id: string;
  title: string;
  level: string;
  author: string | undefined;
  logsource: LogSource;
  /** Filters (Sigma filters spec) applied to this rule; each must also hold for a match. */
  filters: CompiledDetection[];
}

/**
 * Re-throws an EdrError with the line of `path` unless it already carries one: the line of the value it names
 * (`details.valueIndex`, mapped to its path by `valuePath`) if any, else the line of `path`.
 */
function located<T>(
  at: Locator,
  path: readonly (string | number)[],
  f: () => T,
  valuePath: (i: number) => readonly (string | number)[] = (i) => [...path, i],
): T {
  try {
    return f();
  } catch (err) {
    if (err instanceof EdrError && typeof err.details['line'] !== 'number') {
      const i = err.details['valueIndex'];
      throw new EdrError(err.code, err.message, {
        cause: err.cause,
        details: { ...err.details, line: at(typeof i === 'number' ? valuePath(i) : path) },
      });
    }
    throw err;
  }
}

function compileGroup(
  map: Record<string, unknown>,
  path: (string | number)[],
  at: Locator,
  opts: CompileOptions,
  warn: (m: string) => void,
): FieldItem[] {
  const keys = Object.keys(map);
  if (keys.length === 0) fail(at, path, 'empty selection map');
  return keys.map((k) => located(at, [...path, k], () => compileFieldItem(k, map[k], opts, warn)));
}

function compileSelection(
  name: string,
  value: unknown,
  base: (string | number)[],
  at: Locator,
  opts: CompileOptions,
  warn: (m: string) => void,
): Selection {
  const path = [...base, name];
  const isMap = (v: unknown): v is Record<string, unknown> =>
    typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
  if (isMap(value)) return { name, groups: [compileGroup(value, path, at, opts, warn)] };
  if (Array.isArray(value)) {
    if (value.length === 0) fail(at, path, `selection '${name}' is an empty list`);
    const groups: FieldItem[][] = [];
    const keywords: unknown[] = [];
    const keywordAt: number[] = []; // each keyword's index in the selection's list
    value.forEach((v, i) => {
      if (isMap(v)) groups.push(compileGroup(v, [...path, i], at, opts, warn));
      else if (Array.isArray(v))
        fail(at, [...path, i], `selection '${name}': a list inside a list is not Sigma`);
      else {
        keywords.push(v);
        keywordAt.push(i);
      }
    });
    if (keywords.length > 0) {
      groups.push([
        located(
          at,
          path,
          () => compileFieldItem('', keywords, opts, warn),
          (i) => [...path, keywordAt[i]!],
        ),
      ]);
    }
    return { name, groups };
  }
  if (typeof value === 'string' || typeof value === 'number') {
    return { name, groups: [[located(at, path, () => compileFieldItem('', value, opts, warn))]] };
  }
  return fail(
    at,
    path,
    `selection '${name}' must be a map, a list of maps or a list of keywords, not ${String(value)}`,
  );
}

// ---- requirement (for the candidate index) -------------------------------------------------------------

// Fields whose values repeat across most events of a log source: poor index keys.
const COMMON_FIELDS = new Set([
  'type',
  'EventID',
  'Channel',
  'Provider_Name',
  'EventType',
  'User',
  'LogonId',
]);

/** Rough chance that an event holds one of the atoms: exact values are rarer than substrings, long rarer than short. */
function cost(req: Atom[]): number {
  let c = 0;
  for (const a of req) {
    const common = COMMON_FIELDS.has(a.field ?? '') ? 20 : 1;
    c += common * (a.presence ? 2 : a.exact ? 0.02 : 1 / Math.min(a.literal.length, 8) ** 2);
  }
  return c;
}

function best(reqs: (Atom[] | undefined)[]): Atom[] | undefined {
  let out: Atom[] | undefined;
  for (const r of reqs) if (r !== undefined && (out === undefined || cost(r) < cost(out))) out = r;
  return out;
}

function union(reqs: (Atom[] | undefined)[]): Atom[] | undefined {
  const out: Atom[] = [];
  for (const r of reqs) {
    if (r === undefined) return undefined;
    out.push(...r);
  }
  return out;
}

function itemRequirement(item: FieldItem): Atom[] | undefined {
  const field = item.field;
  const per = item.tests.map((t): Atom[] | undefined => {
    if (t.key !== undefined) {
      return t.key.literals.map((literal) => ({
        field,
        literal,
        exact: t.key!.exact && field !== undefined,
      }));
    }
    return t.needsField && field !== undefined
      ? [{ field, literal: '', exact: false, presence: true }]
      : undefined;
  });
  return item.all ? best(per) : union(per);
}

export function selectionRequirement(sel: Selection): Atom[] | undefined {
  return union(sel.groups.map((g) => best(g.map(itemRequirement))));
}

function requirementOf(c: Condition, sels: ReadonlyMap<string, Selection>): Atom[] | undefined {
  switch (c.t) {
    case 'sel':
      return selectionRequirement(sels.get(c.name)!);
    case 'not':
      return undefined;
    case 'and':
      return best(c.a.map((x) => requirementOf(x, sels)));
    case 'or':
      return union(c.a.map((x) => requirementOf(x, sels)));
    case 'of': {
      const reqs = c.names.map((n) => selectionRequirement(sels.get(n)!));
      return c.min === c.names.length ? best(reqs) : union(reqs);
    }
  }
}

/**
 * Sets of atoms each of which has one atom holding in every event `c` matches: the requirements of the
 * operands of an `and` (or an `all of`) and of the items of a one-group selection, one set for anything else.
 */
function conjunctionOf(c: Condition, sels: ReadonlyMap<string, Selection>): Atom[][] {
  const one = (r: Atom[] | undefined): Atom[][] => (r === undefined ? [] : [r]);
  const ofSelection = (sel: Selection): Atom[][] => {
    if (sel.groups.length !== 1) return one(selectionRequirement(sel));
    const out: Atom[][] = [];
    for (const item of sel.groups[0]!) out.push(...one(itemRequirement(item)));
    return out;
  };
  switch (c.t) {
    case 'sel':
      return ofSelection(sels.get(c.name)!);
    case 'and':
      return c.a.flatMap((x) => conjunctionOf(x, sels));
    case 'of':
      if (c.min === c.names.length) return c.names.flatMap((n) => ofSelection(sels.get(n)!));
      return one(requirementOf(c, sels));
    default:
      return one(requirementOf(c, sels));
  }
}

/** The sets besides `requirement` that a match also needs (see CompiledDetection.alsoRequired). */
function alsoRequiredOf(
  c: Condition,
  sels: ReadonlyMap<string, Selection>,
  requirement: Atom[] | undefined,
): Atom[][] | undefined {
  if (requirement === undefined) return undefined;
  const key = (r: Atom[]): string => JSON.stringify(r);
  const seen = new Set([key(requirement)]);
  const out: Atom[][] = [];
  for (const r of conjunctionOf(c, sels)) {
    if (r.length === 0 || seen.has(key(r))) continue;
    seen.add(key(r));
    out.push(r);
  }
  return out.length > 0 ? out : undefined;
}

// ---- evaluation -------------------------------------------------------------------------------------------

/** `test` may be a stand-in for the rule's own condition that gives the same answers (the index's gated one). */
export function ruleMatches(rule: CompiledRule, ctx: EvalContext, test: Predicate = rule.test): boolean {
  if (!test(ctx)) return false;
  for (const f of rule.filters) if (!f.test(ctx)) return false;
  return true;
}

function all(ps: Predicate[]): Predicate {
  if (ps.length === 1) return ps[0]!;
  if (ps.length === 2) {
    const [a, b] = ps as [Predicate, Predicate];
    return (ctx) => a(ctx) && b(ctx);
  }
  return (ctx) => {
    for (const p of ps) if (!p(ctx)) return false;
    return true;
  };
}

function any(ps: Predicate[]): Predicate {
  if (ps.length === 1) return ps[0]!;
  if (ps.length === 2) {
    const [a, b] = ps as [Predicate, Predicate];
    return (ctx) => a(ctx) || b(ctx);
  }
  return (ctx) => {
    for (const p of ps) if (p(ctx)) return true;
    return false;
  };
}

function itemPredicate(item: FieldItem): Predicate {
  const { ref: field, tests } = item;
  if (tests.length === 1) {
    const t = tests[0]!;
    return (ctx) => t.test(ctx, field);
  }
  return (ctx) => itemMatches(item, ctx);
}

function selectionPredicate(sel: Selection): Predicate {
  return any(sel.groups.map((g) => all(g.map(itemPredicate))));
}

function conditionPredicate(c: Condition, sels: ReadonlyMap<string, Predicate>): Predicate {
  switch (c.t) {
    case 'sel':
      return sels.get(c.name)!;
    case 'not': {
      const e = conditionPredicate(c.e, sels);
      return (ctx) => !e(ctx);
    }
    case 'and':
      return all(c.a.map((x) => conditionPredicate(x, sels)));
    case 'or':
      return any(c.a.map((x) => conditionPredicate(x, sels)));
    case 'of': {
      const ps = c.names.map((n) => sels.get(n)!);
      if (c.min === 1) return any(ps);
      if (c.min === ps.length) return all(ps);
      const min = c.min;
      return (ctx) => {
        let n = 0;
        for (const p of ps) if (p(ctx) && ++n >= min) return true;
        return false;
      };
    }
  }
}

/** The selections outside `not` branches, in the order the condition names them, each once. */
function reportedSelections(c: Condition, sels: ReadonlyMap<string, Selection>): Selection[] {
  const out: Selection[] = [];
  const visit = (x: Condition): void => {
    if (x.t === 'not') return;
    if (x.t === 'and' || x.t === 'or') for (const y of x.a) visit(y);
    const names = x.t === 'sel' ? [x.name] : x.t === 'of' ? x.names : [];
    for (const name of names) {
      const sel = sels.get(name)!;
      if (!out.includes(sel)) out.push(sel);
    }
  };
  visit(c);
  return out;
}

function groupMatches(group: readonly FieldItem[], ctx: EvalContext): boolean {
  for (let k = 0; k < group.length; k++) if (!itemMatches(group[k]!, ctx)) return false;
  return true;
}

function report(
  out: { field: string; value: string }[],
  field: string,
  ref: FieldRef,
  ctx: EvalContext,
): void {
  for (let k = 0; k < out.length; k++) if (out[k]!.field === field) return;
  const raw = ctx.raw(ref);
  if (raw !== undefined) out.push({ field, value: typeof raw === 'string' ? raw : JSON.stringify(raw) });
}

/**
 * Fields of the positively matched selections of a matched rule, for the alert: per selection, those of its
 * first group that matches; each field once, first report wins.
 */
export function matchedFields(rule: CompiledDetection, ctx: EvalContext): { field: string; value: string }[] {
  const out: { field: string; value: string }[] = [];
  for (const sel of rule.reported) {
    let group: readonly FieldItem[] | undefined;
    for (const g of sel.groups) {
      if (groupMatches(g, ctx)) {
        group = g;
        break;
      }
    }
    if (group === undefined) continue;
    for (const item of group) {
      if (item.field === undefined) continue;
      report(out, item.field, item.ref!, ctx);
      for (let k = 0; k < item.refs.length; k++) report(out, item.refs[k]!, item.refRefs[k]!, ctx);
    }
  }
  return out;
}

/** Which gates hold for the current event: gate `t` holds when `stamp[t] === generation`. */
export interface Gates {
  stamp: Uint32Array;
  generation: number;
}

/**
 * The detection's condition with each selection that `gateOf` gives a gate asked only when that gate holds:
 * the index opens a selection's gate when the event holds one of its literals, and a selection without any
 * of them cannot match, so the answers are the same.
 */
export function gatedTest(
  d: CompiledDetection,
  gates: Gates,
  gateOf: (sel: Selection) => number | undefined,
): Predicate {
  const preds = new Map<string, Predicate>();
  for (const [name, sel] of d.selections) {
    const p = selectionPredicate(sel);
    const t = gateOf(sel);
    preds.set(name, t === undefined ? p : (ctx) => gates.stamp[t] === gates.generation && p(ctx));
  }
  return conditionPredicate(d.condition, preds);
}

// ---- compile ---------------------------------------------------------------------------------------------

/** Compiles a detection map (`selections` + `condition`) found at `base` in the document. */
export function compileDetection(
  detection: Record<string, unknown>,
  base: (string | number)[],
  at: Locator,
  opts: CompileOptions,
): CompiledDetection {
  const warnings: string[] = [];
  const warn = (m: string): void => {
    warnings.push(m);
  };
  const selections = new Map<string, Selection>();
  for (const [name, value] of Object.entries(detection)) {
    if (name === 'condition') continue;
    if (name === 'timeframe') {
      fail(
        at,
        [...base, name],
        "'timeframe' in a detection is Sigma 1 syntax; write a correlation rule instead",
      );
    }
    selections.set(name, compileSelection(name, value, base, at, opts, warn));
  }
  const cond = detection['condition'];
  if (cond === undefined || cond === null) fail(at, base, "missing required key 'condition'");
  const conds = Array.isArray(cond) ? cond : [cond];
  const names = [...selections.keys()];
  const parsed = conds.map((c, i) => {
    if (typeof c !== 'string')
      fail(at, [...base, 'condition'], `a condition must be a string, not ${String(c)}`);
    const path = Array.isArray(cond) ? [...base, 'condition', i] : [...base, 'condition'];
    return located(at, path, () => parseCondition(c as string, names));
  });
  const condition: Condition = parsed.length === 1 ? parsed[0]! : { t: 'or', a: parsed };
  const preds = new Map([...selections].map(([n, sel]) => [n, selectionPredicate(sel)]));
  const test = conditionPredicate(condition, preds);
  const requirement = requirementOf(condition, selections);
  const alsoRequired = alsoRequiredOf(condition, selections, requirement);
  return {
    selections,
    condition,
    requirement,
    ...(alsoRequired !== undefined ? { alsoRequired } : {}),
    test,
    reported: reportedSelections(condition, selections),
    warnings,
  };
}

export function compileRule(doc: RuleDoc, opts: CompileOptions = {}): CompiledRule {
  const d = compileDetection(doc.detection, ['detection'], doc.at, opts);
  return {
    ...d,
    doc,
    id: doc.id ?? doc.title,
    title: doc.title,
    level: doc.level ?? 'medium',
    author: doc.author,
    logsource: doc.logsource,
    filters: [],
  };
}
