/**
 * Sigma correlation rules: parsing and validation of the seven types, and `stepCorrelation`, a pure function
 * from (correlation, state, matched event) to (new state, matches) that the detector drives with its own
 * storage. State is immutable: a step returns a new state and never changes the one it was given.
 */
import { type CorrelationDoc, describe, fail } from './parse.js';

export const CORRELATION_TYPES = [
  'event_count',
  'value_count',
  'temporal',
  'temporal_ordered',
  'value_sum',
  'value_avg',
  'value_percentile',
] as const;
export type CorrelationType = (typeof CORRELATION_TYPES)[number];

const OPS = ['gt', 'gte', 'lt', 'lte', 'eq'] as const;
type Op = (typeof OPS)[number];

/** Types that aggregate a field's values and so need `condition.field`. */
const FIELD_TYPES = new Set<CorrelationType>(['value_count', 'value_sum', 'value_avg', 'value_percentile']);

export interface CompiledCorrelation {
  doc: CorrelationDoc;
  id: string;
  title: string;
  level: string;
  type: CorrelationType;
  /** Ids or names of the rules (or correlations) whose matches feed this one. */
  rules: string[];
  groupBy: string[];
  timespanMs: number;
  /** Every given bound must hold (a range is `gt` + `lte`). */
  condition: Partial<Record<Op, number>>;
  field: string | undefined;
  /** alias → rule reference → field name in that rule's events. */
  aliases: Record<string, Record<string, string>>;
  generate: boolean;
}

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

export function parseTimespan(s: string): number | undefined {
  const m = /^(\d+)([smhdw])$/.exec(s);
  return m === null ? undefined : Number(m[1]) * UNITS[m[2]!]!;
}

function strings(v: unknown): string[] | undefined {
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
  return undefined;
}

export function compileCorrelation(doc: CorrelationDoc): CompiledCorrelation {
  const c = doc.correlation;
  const at = doc.at;
  const p = (k: string): string[] => ['correlation', k];
  const type = c['type'];
  if (!CORRELATION_TYPES.includes(type as CorrelationType)) {
    fail(
      at,
      p('type'),
      `correlation type must be one of ${CORRELATION_TYPES.join(', ')}, not ${describe(type)}`,
    );
  }
  const t = type as CorrelationType;
  const rules = strings(c['rules']);
  if (rules === undefined || rules.length === 0)
    fail(at, p('rules'), "'correlation.rules' must list rule ids or names");
  const groupBy = c['group-by'] === undefined ? [] : strings(c['group-by']);
  if (groupBy === undefined) fail(at, p('group-by'), "'correlation.group-by' must be a list of field names");
  const ts = c['timespan'] ?? c['timeframe'];
  const timespanMs = typeof ts === 'string' ? parseTimespan(ts) : undefined;
  if (timespanMs === undefined || timespanMs <= 0) {
    fail(
      at,
      p('timespan'),
      `'correlation.timespan' must be a number and a unit s, m, h, d or w (like 5m), not ${describe(ts)}`,
    );
  }
  const condition: Partial<Record<Op, number>> = {};
  let field: string | undefined;
  const cond = c['condition'];
  if (cond !== undefined) {
    if (typeof cond !== 'object' || cond === null || Array.isArray(cond)) {
      fail(at, p('condition'), "'correlation.condition' must be a map like {gte: 10}");
    }
    for (const [k, v] of Object.entries(cond)) {
      if (k === 'field') {
        if (typeof v !== 'string')
          fail(at, ['correlation', 'condition', k], "'condition.field' must be a field name");
        field = v;
      } else if ((OPS as readonly string[]).includes(k)) {
        if (typeof v !== 'number')
          fail(at, ['correlation', 'condition', k], `'condition.${k}' must be a number`);
        condition[k as Op] = v;
      } else {
        fail(
          at,
          ['correlation', 'condition', k],
          `unknown condition '${k}' (expected field, ${OPS.join(', ')})`,
        );
      }
    }
  }
  const temporal = t === 'temporal' || t === 'temporal_ordered';
  if (Object.keys(condition).length === 0) {
    // Temporal correlations default to "all the rules"; counts need an explicit bound.
    if (temporal) condition.gte = rules.length;
    else fail(at, p('condition'), `a ${t} correlation needs a condition like {gte: 10}`);
  }
  if (FIELD_TYPES.has(t) && field === undefined)
    fail(at, p('condition'), `a ${t} correlation needs 'condition.field'`);
  if (!FIELD_TYPES.has(t) && field !== undefined) {
    fail(
      at,
      ['correlation', 'condition', 'field'],
      `'condition.field' has no meaning for a ${t} correlation`,
    );
  }
  if (temporal && rules.length < 2) fail(at, p('rules'), `a ${t} correlation needs at least two rules`);
  const aliases: Record<string, Record<string, string>> = {};
  const al = c['aliases'];
  if (al !== undefined) {
    if (typeof al !== 'object' || al === null || Array.isArray(al))
      fail(at, p('aliases'), "'aliases' must be a map");
    for (const [name, m] of Object.entries(al)) {
      if (
        typeof m !== 'object' ||
        m === null ||
        Array.isArray(m) ||
        !Object.values(m).every((x) => typeof x === 'string')
      ) {
        fail(at, ['correlation', 'aliases', name], `alias '${name}' must map rule names to field names`);
      }
      aliases[name] = m as Record<string, string>;
    }
  }
  const generate = c['generate'] ?? doc.raw['generate'] ?? false;
  if (typeof generate !== 'boolean') fail(at, p('generate'), "'generate' must be true or false");
  return {
    doc,
    id: doc.id ?? doc.title,
    title: doc.title,
    level: doc.level ?? 'medium',
    type: t,
    rules,
    groupBy,
    timespanMs: timespanMs as number,
    condition,
    field,
    aliases,
    generate,
  };
}

/** A match of one of the correlation's rules, as the detector hands it to `stepCorrelation`. */
export interface CorrelationInput {
  /** Event time, milliseconds. Inputs are expected in time order per group. */
  timeMs: number;
  /** Id or name of the rule that matched (one of the correlation's `rules`). */
  rule: string;
  /** Reads a field of the matched event. */
  get(field: string): unknown;
}

interface Entry {
  timeMs: number;
  rule: number;
  value: string | number | undefined;
}

export interface CorrelationState {
  /** Group key (group-by values) → entries inside the time span, oldest first. */
  readonly groups: ReadonlyMap<string, readonly Entry[]>;
}

export interface CorrelationMatch {
  correlation: CompiledCorrelation;
  group: Record<string, unknown>;
  /** The aggregate the condition held for (count, distinct count, sum, average, percentile). */
  value: number;
  firstMs: number;
  lastMs: number;
}

export const emptyCorrelationState = (): CorrelationState => ({ groups: new Map() });

function holds(cond: Partial<Record<Op, number>>, x: number): boolean {
  return (
    (cond.gt === undefined || x > cond.gt) &&
    (cond.gte === undefined || x >= cond.gte) &&
    (cond.lt === undefined || x < cond.lt) &&
    (cond.lte === undefined || x <= cond.lte) &&
    (cond.eq === undefined || x === cond.eq)
  );
}

function fieldFor(c: CompiledCorrelation, name: string, rule: string): string {
  return c.aliases[name]?.[rule] ?? name;
}

function scalar(v: unknown): string | number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'string') return v;
  if (typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  return undefined;
}

function aggregate(c: CompiledCorrelation, entries: readonly Entry[], current: Entry): number {
  switch (c.type) {
    case 'event_count':
      return entries.length;
    case 'value_count':
      return new Set(entries.map((e) => e.value).filter((v) => v !== undefined)).size;
    case 'temporal':
      return new Set(entries.map((e) => e.rule)).size;
    case 'temporal_ordered': {
      // Length of the longest prefix of `rules` seen in order (each step later than the previous one).
      let next = 0;
      for (const e of entries) if (e.rule === next) next++;
      return next;
    }
    case 'value_sum':
    case 'value_avg': {
      const nums = entries.map((e) => Number(e.value)).filter((n) => !Number.isNaN(n));
      const sum = nums.reduce((a, b) => a + b, 0);
      return c.type === 'value_sum' ? sum : nums.length === 0 ? 0 : sum / nums.length;
    }
    case 'value_percentile': {
      // Numbers: percentile rank of the current value; other values: how common it is, in percent.
      const vals = entries.map((e) => e.value).filter((v) => v !== undefined);
      if (vals.length === 0 || current.value === undefined) return 100;
      const cur = current.value;
      const numeric = typeof cur === 'number' || !Number.isNaN(Number(cur));
      const n = numeric
        ? vals.filter((v) => Number(v) <= Number(cur)).length
        : vals.filter((v) => v === cur).length;
      return (100 * n) / vals.length;
    }
  }
}

/**
 * Feeds one rule match to a correlation. Pure: returns the new state and the correlation matches (at most
 * one). A group that matched starts afresh, so a burst raises one alert per threshold crossing.
 */
export function stepCorrelation(
  c: CompiledCorrelation,
  state: CorrelationState,
  input: CorrelationInput,
): { state: CorrelationState; matches: CorrelationMatch[] } {
  const ruleIdx = c.rules.indexOf(input.rule);
  if (ruleIdx < 0) return { state, matches: [] };
  const group: Record<string, unknown> = {};
  for (const g of c.groupBy) group[g] = input.get(fieldFor(c, g, input.rule)) ?? null;
  const key = JSON.stringify(c.groupBy.map((g) => group[g]));
  const value = c.field === undefined ? undefined : scalar(input.get(fieldFor(c, c.field, input.rule)));
  const entry: Entry = { timeMs: input.timeMs, rule: ruleIdx, value };
  const since = input.timeMs - c.timespanMs;
  const kept = (state.groups.get(key) ?? []).filter((e) => e.timeMs > since);
  const entries = [...kept, entry];
  const x = aggregate(c, entries, entry);
  const groups = new Map(state.groups);
  // Drop groups whose entries all left the window, so state does not grow without bound.
  for (const [k, es] of groups) if (k !== key && (es[es.length - 1]?.timeMs ?? 0) <= since) groups.delete(k);
  if (holds(c.condition, x)) {
    groups.delete(key);
    const match: CorrelationMatch = {
      correlation: c,
      group,
      value: x,
      firstMs: entries[0]!.timeMs,
      lastMs: input.timeMs,
    };
    return { state: { groups }, matches: [match] };
  }
  groups.set(key, entries);
  return { state: { groups }, matches: [] };
}

/** The rule reference (id or name) by which a correlation names this rule, if it does. */
export function ruleRef(
  c: CompiledCorrelation,
  rule: { id: string; doc: { name?: string | undefined } },
): string | undefined {
  if (c.rules.includes(rule.id)) return rule.id;
  const name = rule.doc.name;
  return name !== undefined && c.rules.includes(name) ? name : undefined;
}
