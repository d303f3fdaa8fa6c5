/**
 * The Sigma engine's public face: load a rule tree, build an engine (log source routing + candidate index),
 * and `evaluate(engine, event)`: pure, synchronous, returning the matching rules with the fields that matched.
 */
import { auditdExecveFields, processCreationFields } from '../../schemas/sigma-fields.js';
import type { ExecveEvent } from '../../schemas/types.js';
import { CandidateIndex } from './candidate-index.js';
import { type CompiledRule, compileRule, matchedFields, ruleMatches } from './compile.js';
import { type CompiledCorrelation, compileCorrelation } from './correlations.js';
import { asString, EvalContext, type SigmaEvent } from './event-view.js';
import { applyFilters, type CompiledFilter, compileFilter, withFilters } from './filters.js';
import type { CompileOptions } from './modifiers.js';
import { docKey, type LogSource, parseRuleDir, problemOf, type RuleProblem, type SigmaDoc } from './parse.js';

export type { CompiledRule } from './compile.js';
export type { SigmaEvent } from './event-view.js';
export type { LogSource, RuleProblem } from './parse.js';

export interface RuleSet {
  rules: CompiledRule[];
  filters: CompiledFilter[];
  correlations: CompiledCorrelation[];
  /** Documents that did not compile, each with file, line and reason. */
  problems: RuleProblem[];
  /** Non-fatal notes per rule (unresolved placeholders, filters naming unknown rules). */
  warnings: { file: string; line: number; id: string | undefined; message: string }[];
}

type Outcome =
  | { kind: 'rule'; value: CompiledRule }
  | { kind: 'filter'; value: CompiledFilter }
  | { kind: 'correlation'; value: CompiledCorrelation }
  | { kind: 'error'; err: unknown };

/**
 * Compiled documents kept from one build to the next, so that a change to one rule compiles that rule only. A
 * document is found by its file, line and content hash: the same three compile to the same result, problem lines
 * included. What a build does not use is dropped at its end. One cache serves one set of compile options.
 */
export class CompileCache {
  private entries = new Map<string, Outcome>();
  private next = new Map<string, Outcome>();
  /** Rule with its filters, as the last build made it: reused while the filters are the same. */
  private readonly filtered = new WeakMap<CompiledRule, CompiledRule>();
  /** Documents the last build compiled; the others it reused. */
  compiled = 0;

  /** The compiled form of `doc`, from the cache or made now. */
  outcome(doc: SigmaDoc, make: () => Outcome): Outcome {
    const key = docKey(doc);
    let o = this.next.get(key) ?? this.entries.get(key);
    if (o === undefined) {
      o = make();
      this.compiled++;
    }
    this.next.set(key, o);
    return o;
  }

  /** `rule` with `filters`, the same object as last time if they did not change. */
  withFilters(rule: CompiledRule, filters: CompiledFilter[]): CompiledRule {
    const known = this.filtered.get(rule);
    if (known?.filters.length === filters.length && known.filters.every((f, i) => f === filters[i]))
      return known;
    const made = withFilters(rule, filters);
    this.filtered.set(rule, made);
    return made;
  }

  /** Ends a build: what it did not use is forgotten. */
  sweep(): void {
    this.entries = this.next;
    this.next = new Map();
  }

  /** Starts a build's count. */
  begin(): void {
    this.compiled = 0;
  }
}

function compileOne(doc: SigmaDoc, opts: CompileOptions): Outcome {
  try {
    if (doc.kind === 'rule') return { kind: 'rule', value: compileRule(doc, opts) };
    if (doc.kind === 'filter') return { kind: 'filter', value: compileFilter(doc, opts) };
    return { kind: 'correlation', value: compileCorrelation(doc) };
  } catch (err) {
    return { kind: 'error', err };
  }
}

/**
 * Compiles parsed documents; a document that fails becomes a problem, the others still compile. With a cache,
 * documents compiled by an earlier build are reused (the same objects), and only new or changed ones compile.
 */
export function compileDocs(
  docs: readonly SigmaDoc[],
  opts: CompileOptions = {},
  cache?: CompileCache,
): RuleSet {
  const set: RuleSet = { rules: [], filters: [], correlations: [], problems: [], warnings: [] };
  cache?.begin();
  const seen = new Map<string, SigmaDoc>();
  for (const doc of docs) {
    if (doc.id !== undefined) {
      const prev = seen.get(doc.id);
      if (prev !== undefined) {
        set.problems.push({
          ...problemOf(doc, undefined),
          code: 'EDR_SIGMA_DUPLICATE',
          message: `duplicate id ${doc.id} (also ${prev.file}:${prev.line})`,
        });
        continue;
      }
      seen.set(doc.id, doc);
    }
    const make = () => compileOne(doc, opts);
    const o = cache === undefined ? make() : cache.outcome(doc, make);
    if (o.kind === 'rule') {
      set.rules.push(o.value);
      for (const message of o.value.warnings)
        set.warnings.push({ file: doc.file, line: doc.line, id: doc.id, message });
    } else if (o.kind === 'filter') set.filters.push(o.value);
    else if (o.kind === 'correlation') set.correlations.push(o.value);
    else set.problems.push(problemOf(doc, o.err));
  }
  cache?.sweep();
  const known = new Set<string>();
  for (const r of set.correlations.length > 0 ? [...set.rules, ...set.correlations] : []) {
    if (r.doc.id !== undefined) known.add(r.doc.id);
    if (r.doc.name !== undefined) known.add(r.doc.name);
  }
  for (const c of set.correlations) {
    const missing = c.rules.filter((ref) => !known.has(ref));
    if (missing.length > 0) {
      const message = `correlation refers to rules that are not loaded: ${missing.join(', ')}`;
      set.warnings.push({ file: c.doc.file, line: c.doc.line, id: c.doc.id, message });
    }
  }
  const { attached, unresolved } =
    set.filters.length > 0
      ? applyFilters(set.rules, set.filters)
      : { attached: new Map(), unresolved: new Map() };
  if (attached.size > 0) {
    set.rules = set.rules.map((r) => {
      const fs = attached.get(r);
      if (fs === undefined) return r;
      return cache === undefined ? withFilters(r, fs) : cache.withFilters(r, fs);
    });
  }
  for (const [f, refs] of unresolved) {
    const message = `filter names rules that are not loaded: ${refs.join(', ')}`;
    set.warnings.push({ file: f.doc.file, line: f.doc.line, id: f.doc.id, message });
  }
  return set;
}

/** Loads and compiles every rule under dir (a file works too), within `opts.limits` (default DEFAULT_RULE_LIMITS). */
export function loadRules(dir: string, opts: CompileOptions = {}): RuleSet {
  const { docs, problems } = parseRuleDir(dir, dir, opts.limits);
  const set = compileDocs(docs, opts);
  set.problems.unshift(...problems);
  set.problems.sort((a, b) => (a.file === b.file ? a.line - b.line : a.file < b.file ? -1 : 1));
  return set;
}

export interface MatchedField {
  field: string;
  value: string;
}

export interface Match {
  rule: CompiledRule;
  /** The log source of the view of the event that matched. */
  logsource: LogSource;
  fields: MatchedField[];
}

export interface EngineOptions {
  /** Evaluate only the rules of the event's log source (default true). Off: every rule sees every event. */
  routing?: boolean;
  /** Use the candidate index (default true). Off: evaluate every routed rule, the naive baseline. */
  index?: boolean;
}

interface Route {
  rules: CompiledRule[];
  index: CandidateIndex | undefined;
}

export interface Engine {
  readonly rules: readonly CompiledRule[];
  readonly options: Required<EngineOptions>;
  /** Rules per log source, built on first use; a cache, invisible to callers. */
  readonly routes: Map<string, Route>;
  readonly bySource: WeakMap<LogSource, Route>;
  readonly ctx: EvalContext;
  /** Reused views of execve events (evaluation is synchronous, so one of each suffices). */
  readonly views: { pc: ProcessCreationView; auditd: AuditdExecveView };
  /**
   * Routes of the engine this one replaces, by key: a route whose rules are the very same (same objects, same
   * order) is taken over with its candidate index instead of being built again.
   */
  readonly inherited: Map<string, Route>;
}

/**
 * An engine over `rules`. Given the engine it replaces (same options), it takes over each route (log source) whose
 * rules did not change, candidate index included: after a one-rule change only that rule's log source pays for a
 * new index.
 */
export function createEngine(
  rules: readonly CompiledRule[],
  options: EngineOptions = {},
  previous?: Engine,
): Engine {
  const opts = { routing: options.routing ?? true, index: options.index ?? true };
  const same =
    previous !== undefined &&
    previous.options.routing === opts.routing &&
    previous.options.index === opts.index;
  return {
    rules,
    options: opts,
    routes: new Map(),
    bySource: new WeakMap(),
    ctx: new EvalContext(),
    views: { pc: new ProcessCreationView(), auditd: new AuditdExecveView() },
    // Copied, not linked: an engine never holds the one before it (nor, through it, every earlier one).
    inherited: same ? new Map([...previous.inherited, ...previous.routes]) : new Map(),
  };
}

function sameRules(a: readonly CompiledRule[], b: readonly CompiledRule[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Whether a rule is meant for events of this log source (attributes the rule leaves out are not checked). */
export function ruleApplies(rule: LogSource, event: LogSource): boolean {
  return (
    rule.category === event.category &&
    rule.service === event.service &&
    (rule.product === undefined || rule.product === event.product)
  );
}

function routeFor(engine: Engine, ls: LogSource): Route {
  // Views of our own events share their LogSource objects: find their route without building a key.
  const known = engine.bySource.get(ls);
  if (known !== undefined) return known;
  const key = engine.options.routing ? `${ls.product ?? ''}|${ls.category ?? ''}|${ls.service ?? ''}` : '*';
  let route = engine.routes.get(key);
  if (route === undefined) {
    const rules = engine.options.routing
      ? engine.rules.filter((r) => ruleApplies(r.logsource, ls))
      : [...engine.rules];
    const old = engine.inherited.get(key);
    engine.inherited.delete(key);
    route =
      old !== undefined && sameRules(old.rules, rules)
        ? old
        : { rules, index: engine.options.index ? new CandidateIndex(rules) : undefined };
    engine.routes.set(key, route);
  }
  engine.bySource.set(ls, route);
  return route;
}

/** Rules matching one event view (appended to `out`). Pure and synchronous: the same event, the same matches. */
export function evaluate(engine: Engine, event: SigmaEvent, out: Match[] = []): Match[] {
  const route = routeFor(engine, event.logsource);
  // No rule for this log source (the auditd view when no auditd rule is loaded): nothing to read or scan.
  if (route.rules.length === 0) return out;
  const ctx = engine.ctx.reset(event);
  if (route.index !== undefined) {
    // Candidates come in scan order; matches are reported in rule order, like the naive path.
    const hits: number[] = [];
    const { tests } = route.index;
    const n = route.index.collect(ctx, event.fieldNames());
    const cands = route.index.found;
    for (let k = 0; k < n; k++) {
      const i = cands[k]!;
      if (ruleMatches(route.rules[i]!, ctx, tests[i])) hits.push(i);
    }
    if (hits.length > 1) hits.sort((a, b) => a - b);
    for (const i of hits) {
      const rule = route.rules[i]!;
      out.push({ rule, logsource: event.logsource, fields: matchedFields(rule, ctx) });
    }
  } else {
    for (const rule of route.rules) {
      if (ruleMatches(rule, ctx))
        out.push({ rule, logsource: event.logsource, fields: matchedFields(rule, ctx) });
    }
  }
  return out;
}

export const PROCESS_CREATION: LogSource = { product: 'linux', category: 'process_creation' };
export const AUDITD: LogSource = { product: 'linux', service: 'auditd' };

const PC_FIELDS: readonly string[] = Object.freeze(Object.keys(processCreationFields));

/**
 * An execve event seen as Sysmon-style process_creation, through the one field table. `reset` lets an engine
 * reuse one view for every event instead of allocating.
 */
export class ProcessCreationView implements SigmaEvent {
  readonly logsource = PROCESS_CREATION;
  readonly keywordsAreFields = true;
  private e!: ExecveEvent;
  private all: string[] | undefined;

  reset(e: ExecveEvent): this {
    this.e = e;
    this.all = undefined;
    return this;
  }

  /** Computed on each call: the evaluation context caches what rules read. */
  get(field: string): unknown {
    return processCreationFields[field]?.(this.e);
  }

  // The names the table can produce; absent ones read as undefined. Computing none here keeps the index
  // from paying for fields (hashes, GUIDs) that no rule reads.
  fieldNames(): readonly string[] {
    return PC_FIELDS;
  }

  values(): readonly string[] {
    this.all ??= PC_FIELDS.map((f) => asString(this.get(f))).filter((s): s is string => s !== undefined);
    return this.all;
  }
}

// Events with as many arguments have the same field names: one frozen list per count lets the index resolve
// them once instead of per event.
const AUDITD_NAMES: (readonly string[])[] = [];
function sharedNames(names: string[]): readonly string[] {
  const known = AUDITD_NAMES[names.length];
  if (known !== undefined) {
    let same = true;
    for (let i = 0; i < names.length && same; i++) same = known[i] === names[i];
    if (same) return known;
  }
  const frozen = Object.freeze(names);
  AUDITD_NAMES[names.length] = frozen;
  return frozen;
}

/**
 * An execve event seen as an auditd EXECVE record (`type`, `argc`, `a0`, `a1`, ...). The record is built on
 * first read: an engine without auditd rules never reads it.
 */
export class AuditdExecveView implements SigmaEvent {
  readonly logsource = AUDITD;
  readonly keywordsAreFields = true;
  private e!: ExecveEvent;
  private built: Record<string, string> | undefined;
  private names: readonly string[] | undefined;

  reset(e: ExecveEvent): this {
    this.e = e;
    this.built = undefined;
    this.names = undefined;
    return this;
  }

  private get fields(): Record<string, string> {
    this.built ??= auditdExecveFields(this.e);
    return this.built;
  }

  get(field: string): unknown {
    const fields = this.fields;
    return Object.hasOwn(fields, field) ? fields[field] : undefined;
  }

  fieldNames(): readonly string[] {
    this.names ??= sharedNames(Object.keys(this.fields));
    return this.names;
  }

  values(): readonly string[] {
    return Object.values(this.fields);
  }
}

/** Matches of an execve event under both its views. */
export function evaluateExecve(engine: Engine, e: ExecveEvent): Match[] {
  const out = evaluate(engine, engine.views.pc.reset(e));
  return evaluate(engine, engine.views.auditd.reset(e), out);
}
