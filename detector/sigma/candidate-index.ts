/**
 * The candidate index: rules are keyed by literals an event must contain for them to possibly match, one
 * Aho-Corasick automaton per field, so one pass over each present field finds every rule worth evaluating.
 * Rules with no such literal (only negations, numeric comparisons, ...) are evaluated on every event.
 */
import {
  type Atom,
  type CompiledRule,
  type Gates,
  gatedTest,
  type Predicate,
  selectionRequirement,
} from './compile.js';
import { type EvalContext, type FieldRef, fieldRef } from './event-view.js';

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
  /** 1 where a state ends some pattern: the scan skips the output list everywhere else. */
  private readonly hasOut: Uint8Array;

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
    this.hasOut = new Uint8Array(states);
    for (let q = 0; q < states; q++) if (this.out[q]!.length > 0) this.hasOut[q] = 1;
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
    const { out, dense, narrowClass, width, hasOut } = this;
    let state = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      state = dense !== undefined && c < 256 ? dense[state * width + narrowClass[c]!]! : this.step(state, c);
      if (hasOut[state] === 1) {
        const o = out[state]!;
        for (let k = 0; k < o.length; k++) onMatch(o[k]!);
      }
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
  /** Pattern id → the targets it stands for. */
  rules: number[][];
}

function buildAutomaton(byLiteral: Map<string, Set<number>>): FieldAutomaton {
  const patterns = [...byLiteral.keys()];
  return { ac: new AhoCorasick(patterns), rules: patterns.map((p) => [...byLiteral.get(p)!]) };
}

/** What the index knows of one field: targets keyed by its exact value, and by substrings of it. */
interface FieldIndex {
  ref: FieldRef;
  /** Targets that only need the field to be there. */
  presence: number[] | undefined;
  exact: Map<string, number[]> | undefined;
  substrings: FieldAutomaton | undefined;
  /** The keyword automaton, when this index also searches the field's value as one of the event's values. */
  keywords: FieldAutomaton | undefined;
  /**
   * Raw value → targets it marks. Field values repeat heavily across a fleet (images, directories, users, cron
   * and service command lines): a repeated value costs one lookup instead of a lowercase and a scan. Fields
   * with exact values only have none: their lookup is already one read.
   */
  memo: Memo | undefined;
}

/** Lookups per measurement of a memo's miss rate. */
const MEMO_WINDOW = 1024;

/**
 * A field's memo, raw value → targets. Values that never repeat (pids, GUIDs) only pay it a hash and an insert:
 * a field whose values mostly miss scans directly for a while, then measures again.
 */
class Memo {
  readonly map = new Map<string, readonly number[]>();
  lookups = 0;
  misses = 0;
  /** Values left to scan without the memo. */
  skip = 0;
}

/** Values longer than this are scanned every time (they rarely repeat and would make the memo large). */
const MEMO_MAX_VALUE = 256;
/** Entries per field before the memo starts afresh (a bounded, allocation-cheap stand-in for an LRU). */
const MEMO_MAX_ENTRIES = 4096;
/** The memo's answer for the many values that mark nothing: shared, so a miss allocates no list. */
const NONE: readonly number[] = Object.freeze([]);

/**
 * A field of an event whose values are its fields' values (`keywordsAreFields`): its own index, if any, and
 * one that also runs the keyword automaton over the value, so a repeated value costs one memo lookup for both.
 */
interface NamedField {
  ref: FieldRef;
  own: FieldIndex | undefined;
  both: FieldIndex;
}

/**
 * Targets are the rules (0..rules.length-1) and, after them, gates: selections of the rules that have no
 * requirement of their own. Such a rule (`not a and not b`) runs on every event, but a selection none of
 * whose literals the event holds is false without being evaluated, so its test asks the gate first.
 */
export class CandidateIndex {
  private readonly fields = new Map<string, FieldIndex>();
  private readonly byNames = new WeakMap<readonly string[], FieldIndex[]>();
  private lastNames: readonly string[] | undefined;
  private lastIndexed: FieldIndex[] = [];
  private readonly named = new Map<string, NamedField>();
  private readonly byNamesNamed = new WeakMap<readonly string[], NamedField[]>();
  private lastNamedNames: readonly string[] | undefined;
  private lastNamed: NamedField[] = [];
  /** Keyword literals, searched in every value of the event. */
  private readonly anyField: FieldIndex | undefined;
  /** Rules without a requirement: candidates for every event. */
  readonly always: readonly number[];
  /**
   * Per rule, the targets of its further requirements (CompiledDetection.alsoRequired): a rule found by its
   * requirement stays a candidate only if the event marked each of these too.
   */
  private readonly also: readonly (Int32Array | undefined)[];
  private readonly anyAlso: boolean;
  /**
   * The condition to test per rule: its own, or for a rule in `always`, the same condition with gated
   * selections. Valid for the event of the last `candidates` call.
   */
  readonly tests: readonly Predicate[];
  private readonly stamp: Uint32Array;
  private generation = 0;
  /** The stamps and generation the gated tests read (the event's). */
  private readonly gates: Gates;
  // Memo entries are computed with their own stamps, so marks made earlier for the event do not hide targets.
  private readonly memoStamp: Uint32Array;
  private memoGeneration = 0;
  private activeStamp: Uint32Array;
  private activeGeneration = 0;
  /** Marked targets below this are listed: the rules for an event, every target for a memo entry. */
  private listBelow: number;
  // Scan state, kept on the instance so a scan allocates nothing but its result. Lists are filled up to a
  // count rather than truncated: setting an array's length is a runtime call.
  private current: number[][] = [];
  private list: number[] = [];
  private count = 0;
  private readonly eventList: number[] = [];
  private readonly memoList: number[] = [];
  private readonly hit = (id: number): void => {
    const rs = this.current[id]!;
    for (let k = 0; k < rs.length; k++) this.mark(rs[k]!);
  };

  constructor(readonly rules: readonly CompiledRule[]) {
    const substrings = new Map<string, Map<string, Set<number>>>();
    const exact = new Map<string, Map<string, number[]>>();
    const presence = new Map<string, number[]>();
    const any = new Map<string, Set<number>>();
    const always: number[] = [];
    const add = <K, V>(m: Map<K, V>, k: K, make: () => V): V => {
      const v = m.get(k);
      if (v !== undefined) return v;
      const fresh = make();
      m.set(k, fresh);
      return fresh;
    };
    const requirements: Atom[][] = [];
    const tests: Predicate[] = [];
    rules.forEach((r, i) => {
      tests.push(r.test);
      if (r.requirement === undefined || r.requirement.length === 0) always.push(i);
      requirements.push(r.requirement ?? []);
    });
    const gates: Gates = { stamp: new Uint32Array(0), generation: 0 };
    const also: (Int32Array | undefined)[] = rules.map(() => undefined);
    for (const i of always) {
      tests[i] = gatedTest(rules[i]!, gates, (sel) => {
        const req = selectionRequirement(sel);
        if (req === undefined || req.length === 0) return undefined;
        requirements.push(req);
        return requirements.length - 1;
      });
    }
    // Further requirements only on fields the index reads anyway: reading and scanning another field for every
    // event (User, LogonId) costs more than the evaluations it saves.
    const read = new Set(requirements.flatMap((req) => req.map((a) => a.field)));
    rules.forEach((r, i) => {
      if (r.alsoRequired === undefined || requirements[i]!.length === 0) return;
      const usable = r.alsoRequired.filter((req) => req.every((a) => read.has(a.field)));
      if (usable.length > 0) also[i] = Int32Array.from(usable, (req) => requirements.push(req) - 1);
    });
    requirements.forEach((req, i) => {
      for (const a of req) {
        if (a.presence && a.field !== undefined) {
          const list = add(presence, a.field, () => []);
          if (!list.includes(i)) list.push(i);
        } else if (a.field === undefined) add(any, a.literal, () => new Set()).add(i);
        else if (a.exact) {
          const list = add(
            add(exact, a.field, () => new Map()),
            a.literal,
            () => [],
          );
          if (!list.includes(i)) list.push(i);
        } else
          add(
            add(substrings, a.field, () => new Map()),
            a.literal,
            () => new Set(),
          ).add(i);
      }
    });
    for (const f of new Set([...exact.keys(), ...substrings.keys(), ...presence.keys()])) {
      const sub = substrings.get(f);
      this.fields.set(f, {
        ref: fieldRef(f),
        presence: presence.get(f),
        memo: sub === undefined ? undefined : new Memo(),
        exact: exact.get(f),
        substrings: sub === undefined ? undefined : buildAutomaton(sub),
        keywords: undefined,
      });
    }
    this.anyField =
      any.size > 0
        ? {
            ref: fieldRef(''),
            presence: undefined,
            memo: new Memo(),
            exact: undefined,
            substrings: buildAutomaton(any),
            keywords: undefined,
          }
        : undefined;
    this.always = always;
    this.also = also;
    this.anyAlso = also.some((a) => a !== undefined);
    this.tests = tests;
    this.stamp = new Uint32Array(requirements.length);
    gates.stamp = this.stamp;
    this.gates = gates;
    this.memoStamp = new Uint32Array(requirements.length);
    this.activeStamp = this.stamp;
    this.listBelow = rules.length;
    this.list = this.eventList;
  }

  private mark(r: number): void {
    if (this.activeStamp[r] !== this.activeGeneration) {
      this.activeStamp[r] = this.activeGeneration;
      if (r < this.listBelow) this.list[this.count++] = r;
    }
  }

  private markAll(rs: readonly number[]): void {
    for (let k = 0; k < rs.length; k++) this.mark(rs[k]!);
  }

  private scanField(fi: FieldIndex, s: string): void {
    if (fi.exact !== undefined) {
      const rs = fi.exact.get(s);
      if (rs !== undefined) this.markAll(rs);
    }
    if (fi.substrings !== undefined) {
      this.current = fi.substrings.rules;
      fi.substrings.ac.scan(s, this.hit);
    }
    if (fi.keywords !== undefined) {
      this.current = fi.keywords.rules;
      fi.keywords.ac.scan(s, this.hit);
    }
  }

  /** The fields of a `keywordsAreFields` event, each with its own index and its combined one (see NamedField). */
  private namedFields(fieldNames: readonly string[], anyField: FieldIndex): NamedField[] {
    if (fieldNames === this.lastNamedNames) return this.lastNamed;
    const frozen = Object.isFrozen(fieldNames);
    let list = frozen ? this.byNamesNamed.get(fieldNames) : undefined;
    if (list === undefined) {
      list = [];
      for (const f of fieldNames) {
        let nf = this.named.get(f);
        if (nf === undefined) {
          const own = this.fields.get(f);
          const ref = fieldRef(f);
          nf = {
            ref,
            own,
            both: {
              ref,
              presence: undefined,
              exact: own?.exact,
              substrings: own?.substrings,
              keywords: anyField.substrings,
              memo: new Memo(),
            },
          };
          this.named.set(f, nf);
        }
        list.push(nf);
      }
      if (frozen) this.byNamesNamed.set(fieldNames, list);
    }
    if (frozen) {
      this.lastNamedNames = fieldNames;
      this.lastNamed = list;
    }
    return list;
  }

  /**
   * The indexed fields among an event's names. A frozen names array (a view's fixed field list) is resolved
   * once and remembered; others, often built per event, are resolved each time.
   */
  private indexedFields(fieldNames: readonly string[]): FieldIndex[] {
    if (fieldNames === this.lastNames) return this.lastIndexed;
    const frozen = Object.isFrozen(fieldNames);
    let list = frozen ? this.byNames.get(fieldNames) : undefined;
    if (list === undefined) {
      list = [];
      for (const f of fieldNames) {
        const fi = this.fields.get(f);
        if (fi !== undefined) list.push(fi);
      }
      if (frozen) this.byNames.set(fieldNames, list);
    }
    if (frozen) {
      this.lastNames = fieldNames;
      this.lastIndexed = list;
    }
    return list;
  }

  /**
   * Marks the targets a string value marks, through the field's memo when it has one and the value is short.
   * The lowercased value comes from `ctx` for a field (shared with the rules), else is made here, and only
   * when the memo does not answer.
   */
  private scanValue(fi: FieldIndex, raw: string, ctx: EvalContext | undefined): void {
    const memo = fi.memo;
    if (memo === undefined || raw.length > MEMO_MAX_VALUE || memo.skip > 0) {
      if (memo !== undefined && memo.skip > 0) memo.skip--;
      this.scanField(fi, ctx !== undefined ? ctx.lower(fi.ref)! : raw.toLowerCase());
      return;
    }
    let rs = memo.map.get(raw);
    if (rs === undefined) {
      rs = this.scanAlone(fi, ctx !== undefined ? ctx.lower(fi.ref)! : raw.toLowerCase());
      if (memo.map.size >= MEMO_MAX_ENTRIES) memo.map.clear();
      memo.map.set(raw, rs);
      memo.misses++;
    }
    if (++memo.lookups === MEMO_WINDOW) {
      // Mostly misses: skip the memo for the next 15 windows' worth of values, then look again.
      if (memo.misses * 4 > MEMO_WINDOW * 3) memo.skip = MEMO_WINDOW * 15;
      memo.lookups = 0;
      memo.misses = 0;
    }
    if (rs.length > 0) this.markAll(rs);
  }

  /** The targets one value of the field marks, on their own (for the memo). */
  private scanAlone(fi: FieldIndex, s: string): readonly number[] {
    if (++this.memoGeneration === 0xffffffff) {
      this.memoStamp.fill(0);
      this.memoGeneration = 1;
    }
    const eventCount = this.count;
    this.activeStamp = this.memoStamp;
    this.activeGeneration = this.memoGeneration;
    this.listBelow = this.memoStamp.length;
    this.list = this.memoList;
    this.count = 0;
    this.scanField(fi, s);
    const out = this.count === 0 ? NONE : this.memoList.slice(0, this.count);
    this.list = this.eventList;
    this.count = eventCount;
    this.listBelow = this.rules.length;
    this.activeStamp = this.stamp;
    this.activeGeneration = this.generation;
    return out;
  }

  /**
   * Finds the rules that may match the event (every other rule cannot) and returns how many: they are the
   * first that many entries of `found`, in no particular order, until the next call.
   */
  collect(ctx: EvalContext, fieldNames: readonly string[]): number {
    if (++this.generation === 0xffffffff) {
      this.stamp.fill(0);
      this.generation = 1;
    }
    this.gates.generation = this.generation;
    this.activeStamp = this.stamp;
    this.activeGeneration = this.generation;
    this.count = 0;
    const anyField = this.anyField;
    if (anyField !== undefined && ctx.event.keywordsAreFields === true) {
      // One pass over the fields serves the keyword search too: the event's values are its fields' values.
      const named = this.namedFields(fieldNames, anyField);
      for (let i = 0; i < named.length; i++) {
        const nf = named[i]!;
        const raw = ctx.raw(nf.ref);
        if (raw == null) continue;
        const own = nf.own;
        if (own?.presence !== undefined) this.markAll(own.presence);
        if (typeof raw === 'string') this.scanValue(nf.both, raw, ctx);
        else if (Array.isArray(raw)) {
          // Not a value of the event as keywords see it (asString), but its elements are the field's values.
          if (own !== undefined) for (const x of raw) this.scanField(own, String(x).toLowerCase());
        } else {
          const s = ctx.lower(nf.ref); // numbers, booleans; objects have no string form
          if (s !== undefined) this.scanField(nf.both, s);
        }
      }
    } else {
      const indexed = this.indexedFields(fieldNames);
      for (let i = 0; i < indexed.length; i++) {
        const fi = indexed[i]!;
        const raw = ctx.raw(fi.ref);
        if (raw == null) continue;
        if (fi.presence !== undefined) this.markAll(fi.presence);
        if (typeof raw === 'string') this.scanValue(fi, raw, ctx);
        else if (Array.isArray(raw)) for (const x of raw) this.scanField(fi, String(x).toLowerCase());
        else {
          const s = ctx.lower(fi.ref); // numbers, booleans
          if (s !== undefined) this.scanField(fi, s);
        }
      }
      if (anyField !== undefined) {
        const values = ctx.keywordValues();
        for (let i = 0; i < values.length; i++) this.scanValue(anyField, values[i]!, undefined);
      }
    }
    this.markAll(this.always);
    if (this.anyAlso) this.dropUnmet();
    return this.count;
  }

  /** Drops the found rules whose further requirements the event did not all mark. */
  private dropUnmet(): void {
    const { also, stamp, generation, eventList } = this;
    let kept = 0;
    for (let k = 0; k < this.count; k++) {
      const r = eventList[k]!;
      const need = also[r];
      let met = true;
      if (need !== undefined) {
        for (let j = 0; j < need.length && met; j++) met = stamp[need[j]!] === generation;
      }
      if (met) eventList[kept++] = r;
    }
    this.count = kept;
  }

  /** The list `collect` fills. */
  get found(): readonly number[] {
    return this.eventList;
  }

  /** Indexes (in no particular order) of the rules that may match the event; every other rule cannot. */
  candidates(ctx: EvalContext, fieldNames: readonly string[]): number[] {
    return this.eventList.slice(0, this.collect(ctx, fieldNames));
  }
}
