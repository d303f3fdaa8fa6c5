/**
 * The rules a worker runs: a watched directory plus the compacted rules topic (key rule id, value YAML, a
 * tombstone deletes). Every change builds a new snapshot off to the side and swaps one reference, so an event is
 * evaluated against the old set or the new one, never half of each. A build parses only the files and records that
 * changed and compiles only the documents that changed (the rest are the previous build's objects), so a one-rule
 * change costs about one rule's compile on the thread that runs the Kafka client (test/bench/rule-reload.ts). A
 * document that fails is rejected with its reason; the others apply.
 *
 * The version is a hash of what runs (each rule's id and content, and the ids disabled), so workers that read
 * the same directory and topic compute the same version.
 */
import { createHash } from 'node:crypto';
import { statSync } from 'node:fs';
import { relative } from 'node:path';
import type { Logger } from '../infra/log.js';
import { belowLevel, type Level } from '../schemas/levels.js';
import { type CompiledCorrelation, ruleRef } from './sigma/correlations.js';
import {
  CompileCache,
  type CompiledRule,
  compileDocs,
  createEngine,
  type Engine,
  type RuleProblem,
} from './sigma/engine.js';
import { DEFAULT_RULE_LIMITS, type RuleLimits } from './sigma/limits.js';
import { docHash, parseRuleFile, parseRuleText, ruleFiles, type SigmaDoc } from './sigma/parse.js';

export interface RuleSnapshot {
  readonly version: string;
  /** The documents compiled (before `disabled` is applied): what an evaluation thread compiles the same set from. */
  readonly docs: readonly SigmaDoc[];
  readonly rules: readonly CompiledRule[];
  readonly correlations: readonly CompiledCorrelation[];
  readonly engine: Engine;
  /** Rule ids disabled after throwing at evaluation, with why. */
  readonly disabled: ReadonlyMap<string, string>;
  /** Documents rejected in the last build, with file (or `rules-topic:<key>`), line and reason. */
  readonly problems: readonly RuleProblem[];
  /**
   * Rules below the store's `minLevel`: they raise no alert. Those a correlation names are evaluated (in `rules`),
   * as that correlation's input; the others are not evaluated at all.
   */
  readonly belowLevel: ReadonlySet<string>;
  /** The least level that raises alerts (correlations below it update their state and raise none). */
  readonly minLevel: Level;
  /** The limits the rules were loaded within (an evaluation thread compiles with the same). */
  readonly limits: Readonly<RuleLimits>;
}

export interface RuleStoreOptions {
  dir?: string | undefined;
  log: Logger;
  /**
   * Rules below this level raise no alert (default: every level alerts). Sigma's `informational` level is meant
   * for enrichment: "no case or alerting should be triggered by such rules".
   */
  minLevel?: Level;
  /** What one rule may cost to load (default DEFAULT_RULE_LIMITS): a rule over a limit is rejected. */
  limits?: Readonly<RuleLimits> | undefined;
  /** Called after every swap. */
  onChange?: (snap: RuleSnapshot, previous: RuleSnapshot) => void;
}

export { docHash };

export function docId(doc: SigmaDoc): string {
  return doc.id ?? doc.title;
}

function gone(file: string): boolean {
  try {
    statSync(file);
    return false;
  } catch {
    return true;
  }
}

export class RuleStore {
  #current: RuleSnapshot;
  private dirDocs: SigmaDoc[] = [];
  private dirProblems: RuleProblem[] = [];
  private dirSignature = '';
  /** Each rule file's parse, with the mtime and size it was read at: only changed files are parsed again. */
  private dirFiles = new Map<string, { stat: string; docs: SigmaDoc[]; problems: RuleProblem[] }>();
  /** Compiled documents from the last build: a change compiles only the documents it changed. */
  private readonly cache = new CompileCache();
  private readonly topicEntries = new Map<string, { docs: SigmaDoc[]; problems: RuleProblem[] }>();
  /** The topic's keys in order, kept while no key comes or goes (a changed rule keeps its key). */
  private topicOrder: string[] | undefined;
  private readonly disabled = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;

  private readonly limits: Readonly<RuleLimits>;

  constructor(private readonly opts: RuleStoreOptions) {
    this.limits = opts.limits ?? DEFAULT_RULE_LIMITS;
    this.#current = this.build();
  }

  /** The snapshot to evaluate an event (or a batch) against: read it once and hold it. */
  get current(): RuleSnapshot {
    return this.#current;
  }

  /** Reads the directory now if it changed since the last read; returns whether it did. */
  refreshDir(): boolean {
    const dir = this.opts.dir;
    if (dir === undefined) return false;
    let files: string[];
    try {
      files = ruleFiles(dir);
    } catch (err) {
      this.opts.log.warn('cannot read rule directory', { dir, err });
      return false;
    }
    const stats = files.map((f) => {
      try {
        const st = statSync(f);
        return `${st.mtimeMs}:${st.size}`;
      } catch {
        return 'gone';
      }
    });
    const signature = files.map((f, i) => `${f}:${stats[i]}`).join('\n');
    if (signature === this.dirSignature) return false;
    this.dirSignature = signature;
    const docs: SigmaDoc[] = [];
    const problems: RuleProblem[] = [];
    const parsed = new Map<string, { stat: string; docs: SigmaDoc[]; problems: RuleProblem[] }>();
    files.forEach((f, i) => {
      const stat = stats[i]!;
      const known = this.dirFiles.get(f);
      let r = known !== undefined && known.stat === stat ? known : undefined;
      if (r === undefined) {
        const fresh = parseRuleFile(f, relative(dir, f) || f, this.limits);
        // Removed between listing and reading: the next poll sees it gone.
        if (fresh.problems[0]?.code === 'EDR_SIGMA_READ' && gone(f)) return;
        r = { stat, ...fresh };
      }
      parsed.set(f, r);
      docs.push(...r.docs);
      problems.push(...r.problems);
    });
    this.dirFiles = parsed;
    this.dirDocs = docs;
    this.dirProblems = problems;
    this.swap();
    return true;
  }

  /** Follows the directory every `pollMs` (mtime and size of each file; cheap enough for thousands). */
  watch(pollMs: number): void {
    this.refreshDir();
    this.timer = setInterval(() => this.refreshDir(), pollMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Applies records of the rules topic (in offset order) and swaps once. */
  applyTopic(records: ReadonlyArray<{ key: string; value: string | null }>): void {
    for (const { key, value } of records) {
      if (value === null) {
        if (this.topicEntries.delete(key)) this.topicOrder = undefined;
        continue;
      }
      const r = parseRuleText(value, `rules-topic:${key}`, this.limits);
      if (!this.topicEntries.has(key)) this.topicOrder = undefined;
      this.topicEntries.set(key, r);
    }
    if (records.length > 0) this.swap();
  }

  /** Takes a rule out of evaluation after it threw; a new snapshot (and version) follows. */
  disable(ruleId: string, reason: string): void {
    if (this.disabled.has(ruleId)) return;
    this.disabled.set(ruleId, reason);
    this.swap();
  }

  private swap(): void {
    const prev = this.#current;
    const next = this.build(prev);
    this.#current = next;
    for (const p of next.problems) {
      if (!prev.problems.some((q) => q.file === p.file && q.line === p.line && q.message === p.message)) {
        this.opts.log.warn('rule rejected', {
          file: p.file,
          line: p.line,
          ruleId: p.id,
          code: p.code,
          reason: p.message,
        });
      }
    }
    if (next.version !== prev.version) {
      this.opts.log.info('rule set loaded', {
        version: next.version,
        rules: next.rules.length,
        correlations: next.correlations.length,
        rejected: next.problems.length,
        belowMinLevel: next.belowLevel.size,
      });
    }
    this.opts.onChange?.(next, prev);
  }

  /**
   * A new snapshot. Only documents that are new or changed since the last build compile (the cache); the rest of
   * the work is over the whole set but cheap (merging lists, the version hash over cached document hashes), and
   * the new engine takes over the previous one's candidate index of every log source whose rules are unchanged.
   */
  private build(prev?: RuleSnapshot): RuleSnapshot {
    // Topic rules override directory rules with the same id: the topic is the fleet-wide source of truth.
    const fromTopic: SigmaDoc[] = [];
    const problems: RuleProblem[] = [...this.dirProblems];
    this.topicOrder ??= [...this.topicEntries.keys()].sort();
    for (const key of this.topicOrder) {
      const e = this.topicEntries.get(key)!;
      fromTopic.push(...e.docs);
      problems.push(...e.problems);
    }
    const topicIds = new Set(fromTopic.map(docId));
    const docs = [...this.dirDocs.filter((d) => !topicIds.has(docId(d))), ...fromTopic];
    const set = compileDocs(docs, { limits: this.limits }, this.cache);
    problems.push(...set.problems);
    const min = this.opts.minLevel ?? 'informational';
    const below = new Set(set.rules.filter((r) => belowLevel(r.level, min)).map((r) => r.id));
    const named = (r: CompiledRule) => set.correlations.some((c) => ruleRef(c, r) !== undefined);
    const rules = set.rules.filter((r) => !this.disabled.has(r.id) && (!below.has(r.id) || named(r)));
    const lines = [
      // The set's content, whatever this store's alert level: workers at other levels run the same version.
      ...set.rules.filter((r) => !this.disabled.has(r.id)).map((r) => `r ${r.id} ${docHash(r.doc)}`),
      ...set.correlations.map((c) => `c ${c.id} ${docHash(c.doc)}`),
      ...set.filters.map((f) => `f ${docId(f.doc)} ${docHash(f.doc)}`),
      ...[...this.disabled.keys()].map((id) => `d ${id}`),
    ].sort();
    const version = createHash('sha256').update(lines.join('\n')).digest('hex').slice(0, 16);
    return {
      version,
      docs,
      rules,
      correlations: set.correlations,
      engine: createEngine(rules, {}, prev?.engine),
      disabled: new Map(this.disabled),
      problems,
      belowLevel: below,
      minLevel: min,
      limits: this.limits,
    };
  }
}
