/**
 * What the engine sees of an event: its log source, field values by Sigma name, and all values for keyword
 * search. Lowercased values are computed at most once per event and field, then shared by every rule.
 */
import type { LogSource } from './parse.js';

export interface SigmaEvent {
  readonly logsource: LogSource;
  /** Value of a Sigma field; undefined when the event does not have it. */
  get(field: string): unknown;
  /** Every scalar value of the event as a string, for keyword searches. */
  values(): readonly string[];
  /** Names of the fields the event has (nested ones dotted), for the candidate index. */
  fieldNames(): readonly string[];
  /**
   * True when values() are exactly the string forms (asString) of the fields of fieldNames() that have one:
   * the index then searches keywords in the same pass over the fields.
   */
  readonly keywordsAreFields?: boolean;
}

/** Scalar as the string a Sigma string value is compared with; undefined for null/absent/objects. */
export function asString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  return undefined;
}

/** A field name resolved once, at compile time, to a slot in every evaluation's cache. */
export interface FieldRef {
  readonly name: string;
  readonly slot: number;
}

const refs = new Map<string, FieldRef>();

/** The one FieldRef of a field name (process-wide, so every rule and index shares the slots). */
export function fieldRef(name: string): FieldRef {
  let r = refs.get(name);
  if (r === undefined) {
    r = { name, slot: refs.size };
    refs.set(name, r);
  }
  return r;
}

/**
 * Per-evaluation cache over one event: raw and lowercased values by slot, valid while their stamp equals the
 * current generation. `reset` moves to the next event without clearing or allocating.
 */
export class EvalContext {
  event!: SigmaEvent;
  private generation = 0;
  private rawStamp = new Uint32Array(64);
  private lowStamp = new Uint32Array(64);
  // Filled to their length so they stay dense arrays (a write far past the end would make them dictionaries).
  private rawValues: unknown[] = new Array(64).fill(undefined);
  private lowValues: (string | undefined)[] = new Array(64).fill(undefined);
  private keywordLower: string[] | undefined;

  reset(event: SigmaEvent): this {
    this.event = event;
    if (++this.generation === 0xffffffff) {
      this.rawStamp.fill(0);
      this.lowStamp.fill(0);
      this.generation = 1;
    }
    this.keywordLower = undefined;
    return this;
  }

  private grow(slot: number): void {
    const size = Math.max(slot + 1, this.rawStamp.length * 2);
    const r = new Uint32Array(size);
    r.set(this.rawStamp);
    this.rawStamp = r;
    const l = new Uint32Array(size);
    l.set(this.lowStamp);
    this.lowStamp = l;
    while (this.rawValues.length < size) this.rawValues.push(undefined);
    while (this.lowValues.length < size) this.lowValues.push(undefined);
  }

  raw(ref: FieldRef): unknown {
    const slot = ref.slot;
    if (slot >= this.rawStamp.length) this.grow(slot);
    if (this.rawStamp[slot] === this.generation) return this.rawValues[slot];
    const v = this.event.get(ref.name);
    this.rawValues[slot] = v;
    this.rawStamp[slot] = this.generation;
    return v;
  }

  /** Lowercased string form of a scalar field, cached. */
  lower(ref: FieldRef): string | undefined {
    const slot = ref.slot;
    if (slot >= this.lowStamp.length) this.grow(slot);
    if (this.lowStamp[slot] === this.generation) return this.lowValues[slot];
    const v = asString(this.raw(ref))?.toLowerCase();
    this.lowValues[slot] = v;
    this.lowStamp[slot] = this.generation;
    return v;
  }

  keywordValues(): readonly string[] {
    return this.event.values();
  }

  keywordValuesLower(): readonly string[] {
    if (this.keywordLower === undefined) this.keywordLower = this.event.values().map((s) => s.toLowerCase());
    return this.keywordLower;
  }
}

/** Reads a field of a JSON object: an exact key first ("a.b" as one key), else a dotted path into nested maps. */
export function dottedGet(obj: Record<string, unknown>, field: string): unknown {
  if (Object.hasOwn(obj, field)) return obj[field];
  if (!field.includes('.')) return undefined;
  let cur: unknown = obj;
  for (const part of field.split('.')) {
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur)) return undefined;
    if (!Object.hasOwn(cur, part)) return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur;
}

function collectScalars(v: unknown, out: string[]): void {
  const s = asString(v);
  if (s !== undefined) out.push(s);
  else if (Array.isArray(v)) for (const x of v) collectScalars(x, out);
  else if (v !== null && typeof v === 'object') for (const x of Object.values(v)) collectScalars(x, out);
}

function collectNames(obj: Record<string, unknown>, prefix: string, out: string[]): void {
  for (const [k, v] of Object.entries(obj)) {
    out.push(prefix + k);
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
      collectNames(v as Record<string, unknown>, `${prefix}${k}.`, out);
    }
  }
}

/** A JSON object as a Sigma event (hunt input, tests). */
export function jsonEvent(obj: Record<string, unknown>, logsource: LogSource): SigmaEvent {
  let all: string[] | undefined;
  let names: string[] | undefined;
  return {
    logsource,
    get: (field) => dottedGet(obj, field),
    fieldNames: () => {
      if (names === undefined) {
        names = [];
        collectNames(obj, '', names);
      }
      return names;
    },
    values: () => {
      if (all === undefined) {
        all = [];
        collectScalars(obj, all);
      }
      return all;
    },
  };
}
