/**
 * The candidate index: rules are keyed by literals an event must contain for them to possibly match, one
 * Aho-Corasick automaton per field, so one pass over each present field finds every rule worth evaluating.
 * Rules with no such literal (only negations, numeric comparisons, ...) are evaluated on every event.
 */
import type { CompiledRule } from './compile.js';
import type { EvalContext } from './event-view.js';

/** Beyond this many table cells an automaton keeps sparse transitions (memory over speed). */
const MAX_DENSE_CELLS = 16_000_000;

/**
 * Multi-pattern substring matcher (Aho-Corasick) over UTF-16 code units. Transitions are resolved into a dense
 * table over the characters the patterns use (all others share one class), so a scan costs one table read
 * per character.
 */
export class AhoCorasick {
  private readonly next: Map<number, number>[] = [new Map()];
  private readonly fail: number[] = [0];
  /** Pattern ids ending at each state, including those of its suffix states. */
  private readonly out: number[][] = [[]];
  /** Character → class for codes below 256 (class 0: no pattern uses it). Other characters step sparsely. */
  private readonly narrowClass = new Uint16Array(256);
  private width = 1;
  private dense: Int32Array | undefined;

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
        if (c < 256 && this.narrowClass[c] === 0) this.narrowClass[c] = this.width++;
      }
      this.out[s]!.push(id);
    });
    const order: number[] = [];
    for (const t of this.next[0]!.values()) order.push(t);
    for (let q = 0; q < order.length; q++) {
      const s = order[q]!;
      for (const [c, t] of this.next[s]!) {
        let f = this.fail[s]!;
        while (f !== 0 && !this.next[f]!.has(c)) f = this.fail[f]!;
        const ft = this.next[f]!.get(c);
        this.fail[t] = ft !== undefined && ft !== t ? ft : 0;
        const extra = this.out[this.fail[t]!]!;
        if (extra.length > 0) this.out[t] = [...this.out[t]!, ...extra];
        order.push(t);
      }
    }
    const states = this.next.length;
    if (states * this.width <= MAX_DENSE_CELLS) {
      const w = this.width;
      const table = new Int32Array(states * w);
      for (const [c, t] of this.next[0]!) if (c < 256) table[this.narrowClass[c]!] = t;
      // BFS order guarantees a state's fail target is complete before the state itself.
      for (const s of order) {
        const f = this.fail[s]!;
        table.copyWithin(s * w, f * w, f * w + w);
        for (const [c, t] of this.next[s]!) if (c < 256) table[s * w + this.narrowClass[c]!] = t;
      }
      this.dense = table;
    }
  }

  /** Calls onMatch(patternId) for every occurrence (a pattern may be reported more than once). */
  scan(s: string, onMatch: (id: number) => void): void {
    const { out, dense, narrowClass, width } = this;
    let state = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      state = dense !== undefined && c < 256 ? dense[state * width + narrowClass[c]!]! : this.step(state, c);
      const o = out[state]!;
      for (let k = 0; k < o.length; k++) onMatch(o[k]!);
    }
  }

  /** One transition through the trie and failure links (non-Latin-1 characters, or no dense table). */
  private step(state: number, c: number): number {
    const { next, fail } = this;
    for (;;) {
      const t = next[state]!.get(c);
      if (t !== undefined) return t;
      if (state === 0) return 0;
      state = fail[state]!;
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
  /** Field → exact lowercased value → rules, for atoms that must equal the whole value. */
  private readonly exactByField = new Map<string, Map<string, number[]>>();
  private readonly anyField: FieldAutomaton | undefined;
  /** Rules without a requirement: candidates for every event. */
  readonly always: readonly number[];
  private readonly stamp: Uint32Array;
  private generation = 0;
  // Scan state, kept on the instance so a scan allocates nothing but its result.
  private current: number[][] = [];
  private found: number[] = [];
  private readonly hit = (id: number): void => {
    const rs = this.current[id]!;
    const gen = this.generation;
    for (let k = 0; k < rs.length; k++) {
      const r = rs[k]!;
      if (this.stamp[r] !== gen) {
        this.stamp[r] = gen;
        this.found.push(r);
      }
    }
  };

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
        if (a.exact && a.field !== undefined) {
          const m = this.exactByField.get(a.field) ?? new Map<string, number[]>();
          this.exactByField.set(a.field, m);
          const list = m.get(a.literal) ?? [];
          if (!list.includes(i)) list.push(i);
          m.set(a.literal, list);
          continue;
        }
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

  private mark(r: number): void {
    if (this.stamp[r] !== this.generation) {
      this.stamp[r] = this.generation;
      this.found.push(r);
    }
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
    this.found = found;
    const hit = this.hit;
    for (const f of fieldNames) {
      const ex = this.exactByField.get(f);
      if (ex !== undefined) {
        const s = ctx.lower(f);
        const rs = s === undefined ? undefined : ex.get(s);
        if (rs !== undefined) for (const r of rs) this.mark(r);
        else if (s === undefined) {
          const raw = ctx.raw(f);
          if (Array.isArray(raw))
            for (const x of raw) for (const r of ex.get(String(x).toLowerCase()) ?? []) this.mark(r);
        }
      }
      const fa = this.byField.get(f);
      if (fa === undefined) continue;
      this.current = fa.rules;
      const s = ctx.lower(f);
      if (s !== undefined) fa.ac.scan(s, hit);
      else {
        const raw = ctx.raw(f);
        if (Array.isArray(raw)) for (const x of raw) fa.ac.scan(String(x).toLowerCase(), hit);
      }
    }
    if (this.anyField !== undefined) {
      this.current = this.anyField.rules;
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
