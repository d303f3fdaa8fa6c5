/**
 * A batch's records against one rule set: decode (a view), evaluate, encode each match's alert. One function
 * whatever runs the rules: the Kafka client's thread calls it in-process (no evaluation threads), an evaluation
 * thread (eval-thread.ts) on the packed values the pool sent it.
 */
import { type EdrError, errorMessage } from '../infra/errors.js';
import type { InRecord } from '../infra/transport.js';
import { projectCodec } from '../schemas/codec.js';
import type { ExecveEvent } from '../schemas/types.js';
import { encodeMatchAlert, ruleInfo } from './alerts.js';
import { type CompiledRule, createEngine, type Engine, evaluateExecve } from './sigma/engine.js';

/** A compiled rule set and what its alerts carry. */
export interface EvalSet {
  engine: Engine;
  rules: readonly CompiledRule[];
  version: string;
  detectorId: string;
  /** The replay run the alerts belong to (live detection: absent). */
  runId?: string;
}

/**
 * A batch's record values: the records, or their values packed into one buffer (record i's value is
 * data[bounds[2i]..bounds[2i+1]), a null value empty).
 */
export type RecordValues = readonly InRecord[] | { data: Buffer; bounds: Int32Array };

export interface Evaluation {
  /** Records evaluated: all of them, or up to the one at which a rule threw (evaluate again from there). */
  next: number;
  matches: Array<{
    index: number;
    /** The rule's position in the set's `rules`. */
    rule: number;
    ruleId: string;
    fields: Array<{ field: string; value: string }>;
    /** The event's host id (the alert's key). */
    hostId: string;
  }>;
  /** The encoded Alert of each match, in order. */
  alerts: Buffer[];
  /** Records that did not decode, with the codec's error code and message. */
  undecodable: Array<{ index: number; code: string; message: string }>;
  /** Rules that threw on record `next`, with why: to disable before evaluating on. */
  culprits: Array<{ ruleId: string; message: string }>;
}

/** The rules that throw on `event` when evaluated alone, with their errors (to find what broke a whole set). */
export function rulesThatThrow(
  rules: readonly CompiledRule[],
  event: ExecveEvent,
): Array<{ rule: CompiledRule; err: unknown }> {
  const out: Array<{ rule: CompiledRule; err: unknown }> = [];
  for (const rule of rules) {
    try {
      evaluateExecve(createEngine([rule]), event);
    } catch (err) {
      out.push({ rule, err });
    }
  }
  return out;
}

// Position of each rule in its set, built once per set (a set lives until the next rule change).
const positions = new WeakMap<readonly CompiledRule[], Map<CompiledRule, number>>();

const EMPTY = Buffer.alloc(0);

/**
 * Decodes and evaluates the records of `values`, in order. Stops at the first record on which a rule throws,
 * naming each rule that throws on it alone. Lifecycle records (not an ExecveEvent) are skipped, and so are events
 * `accept` (given record i's event) refuses.
 */
export function evaluateRecords(
  set: EvalSet,
  values: RecordValues,
  accept?: (event: ExecveEvent, index: number) => boolean,
): Evaluation {
  const codec = projectCodec();
  const ctx = { ruleSetVersion: set.version, detectorId: set.detectorId, runId: set.runId ?? null };
  // Told apart once, not per record.
  const packed = 'bounds' in values ? values : undefined;
  const records = 'bounds' in values ? undefined : values;
  const n = packed !== undefined ? packed.bounds.length / 2 : records!.length;
  const result: Evaluation = { next: n, matches: [], alerts: [], undecodable: [], culprits: [] };
  let index = positions.get(set.rules);
  if (index === undefined) {
    index = new Map(set.rules.map((r, i) => [r, i]));
    positions.set(set.rules, index);
  }
  for (let i = 0; i < n; i++) {
    const record =
      packed !== undefined
        ? packed.data.subarray(packed.bounds[2 * i]!, packed.bounds[2 * i + 1]!)
        : (records![i]!.value ?? EMPTY);
    let decoded: ReturnType<typeof codec.view>;
    try {
      // A view: rules read a few fields, so only those are decoded (the body's structure is checked here).
      decoded = codec.view(record);
    } catch (err) {
      result.undecodable.push({
        index: i,
        code: (err as EdrError).code ?? 'EDR_SCHEMA_CORRUPT',
        message: errorMessage(err),
      });
      continue;
    }
    if (decoded.name !== 'dev.edr.v1.ExecveEvent') continue; // lifecycle records on the audit topic
    const e = decoded.value;
    if (accept !== undefined && !accept(e, i)) continue;
    let matches: ReturnType<typeof evaluateExecve>;
    try {
      matches = evaluateExecve(set.engine, e);
    } catch {
      const thrown = rulesThatThrow(set.rules, e);
      // An error no single rule reproduces: skip the event's matches rather than loop.
      if (thrown.length === 0) continue;
      result.culprits = thrown.map((t) => ({ ruleId: t.rule.id, message: errorMessage(t.err) }));
      result.next = i;
      break;
    }
    for (const m of matches) {
      result.matches.push({
        index: i,
        rule: index.get(m.rule)!,
        ruleId: m.rule.id,
        fields: m.fields,
        hostId: e.hostId,
      });
      result.alerts.push(encodeMatchAlert(codec, record, e, ruleInfo(m.rule), m.fields, ctx));
    }
  }
  return result;
}
