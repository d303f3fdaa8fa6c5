/**
 * The candidate index: rules are keyed by literals an event must contain for them to possibly match, one
 * Aho-Corasick automaton per field, so one pass over each present field finds every rule worth evaluating.
 * Rules with no such literal (only negations, numeric comparisons, ...) are evaluated on every event.
 */
import type { CompiledRule } from './compile.js';
import type { EvalContext } from './event-view.js';

/** Multi-pattern substring matcher (Aho-Corasick) over UTF-16 code units. */
export class AhoCorasick {
  private readonly next: Map<number, number>[] = [new Map()];
  private readonly fail: number[] = [0];
  /** Pattern ids ending at each state, including those of its suffix states. */
  private readonly out: number[][] = [[]];
  /** Dense transitions of the root for ASCII, the common first step. */
  private readonly rootAscii = new Int32Array(128);

  constructor(patterns: readonly string[]) {
    patterns.forEach((p, id) => {
      let s = 0;
      for (let i = 0; i < p.length; i++) {
        const c = p.charCodeAt(i);
        let t = this.next[s]!.get(c);
        if (t === undefined) {
          t = this.next.length;
          this.next.push(new Map());
          this.fail.push(0);
          this.out.push([]);
          this.next[s]!.set(c, t);
        }
        s = t;
      }
      this.out[s]!.push(id);
    });
    const queue: number[] = [];
    for (const t of this.next[0]!.values()) queue.push(t);
    for (let q = 0; q < queue.length; q++) {
      const s = queue[q]!;
      for (const [c, t] of this.next[s]!) {
        let f = this.fail[s]!;
        while (f !== 0 && !this.next[f]!.has(c)) f = this.fail[f]!;
        const ft = this.next[f]!.get(c);
        this.fail[t] = ft !== undefined && ft !== t ? ft : 0;
        const extra = this.out[this.fail[t]!]!;
        if (extra.length > 0) this.out[t] = [...this.out[t]!, ...extra];
        queue.push(t);
      }
    }
    for (let c = 0; c < 128; c++) this.rootAscii[c] = this.next[0]!.get(c) ?? 0;
  }

  /** Calls onMatch(patternId) for every occurrence (a pattern may be reported more than once). */
  scan(s: string, onMatch: (id: number) => void): void {
    const { next, fail, out, rootAscii } = this;
    let state = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      for (;;) {
        if (state === 0) {
          state = c < 128 ? rootAscii[c]! : (next[0]!.get(c) ?? 0);
          break;
        }
        const t = next[state]!.get(c);
        if (t !== undefined) {
          state = t;
          break;
        }
        state = fail[state]!;
      }
      const o = out[state]!;
      for (let k = 0; k < o.length; k++) onMatch(o[k]!);
    }
  }
}

interface FieldAutomaton {
  ac: AhoCorasick;
  /** Pattern id → indexes of the rules it stands for. */
  rules: number[][];
}

function buildAutomaton(byLiteral: Map<string, Set<number>>): FieldAutomaton {
  const patterns = [...byLiteral.keys()];
  return { ac: new AhoCorasick(patterns), rules: patterns.map((p) => [...byLiteral.get(p)!]) };
}

export class CandidateIndex {
  private readonly byField = new Map<string, FieldAutomaton>();
  private readonly anyField: FieldAutomaton | undefined;
  /** Rules without a requirement: candidates for every event. */
  readonly always: readonly number[];
  private readonly stamp: Uint32Array;
  private generation = 0;

  constructor(readonly rules: readonly CompiledRule[]) {
    const fields = new Map<string, Map<string, Set<number>>>();
    const any = new Map<string, Set<number>>();
    const always: number[] = [];
    rules.forEach((r, i) => {
      if (r.requirement === undefined || r.requirement.length === 0) {
        always.push(i);
        return;
      }
      for (const a of r.requirement) {
        let m: Map<string, Set<number>>;
        if (a.field === undefined) m = any;
        else {
          m = fields.get(a.field) ?? new Map();
          fields.set(a.field, m);
        }
        const set = m.get(a.literal) ?? new Set();
        set.add(i);
        m.set(a.literal, set);
      }
    });
    for (const [f, m] of fields) this.byField.set(f, buildAutomaton(m));
    this.anyField = any.size > 0 ? buildAutomaton(any) : undefined;
    this.always = always;
    this.stamp = new Uint32Array(rules.length);
  }

  /** Indexes (ascending) of the rules that may match the event; every other rule cannot. */
  candidates(ctx: EvalContext, fieldNames: readonly string[]): number[] {
    if (++this.generation === 0xffffffff) {
      this.stamp.fill(0);
      this.generation = 1;
    }
    const gen = this.generation;
    const stamp = this.stamp;
    const found: number[] = [];
    let current: number[][] = [];
    const hit = (id: number): void => {
      const rs = current[id]!;
      for (let k = 0; k < rs.length; k++) {
        const r = rs[k]!;
        if (stamp[r] !== gen) {
          stamp[r] = gen;
          found.push(r);
        }
      }
    };
    for (const f of fieldNames) {
      const fa = this.byField.get(f);
      if (fa === undefined) continue;
      current = fa.rules;
      const s = ctx.lower(f);
      if (s !== undefined) fa.ac.scan(s, hit);
      else {
        const raw = ctx.raw(f);
        if (Array.isArray(raw)) for (const x of raw) fa.ac.scan(String(x).toLowerCase(), hit);
      }
    }
    if (this.anyField !== undefined) {
      current = this.anyField.rules;
      for (const s of ctx.keywordValuesLower()) this.anyField.ac.scan(s, hit);
    }
    for (const r of this.always) {
      if (stamp[r] !== gen) {
        stamp[r] = gen;
        found.push(r);
      }
    }
    return found.sort((a, b) => a - b);
  }
}
