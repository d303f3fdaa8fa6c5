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
}

/** Scalar as the string a Sigma string value is compared with; undefined for null/absent/objects. */
export function asString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  return undefined;
}

/** Per-evaluation cache over one event. Reused across events by `reset` so the hot path does not allocate. */
export class EvalContext {
  event!: SigmaEvent;
  private readonly lowerCache = new Map<string, string | undefined>();
  private keywordLower: string[] | undefined;

  reset(event: SigmaEvent): this {
    this.event = event;
    this.lowerCache.clear();
    this.keywordLower = undefined;
    return this;
  }

  raw(field: string): unknown {
    return this.event.get(field);
  }

  /** Lowercased string form of a scalar field, cached. */
  lower(field: string): string | undefined {
    let v = this.lowerCache.get(field);
    if (v === undefined && !this.lowerCache.has(field)) {
      v = asString(this.event.get(field))?.toLowerCase();
      this.lowerCache.set(field, v);
    }
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
