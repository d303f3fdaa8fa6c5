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
import { type CompiledRule, createEngine, type Engine, evaluateExecve, type Match } from './sigma/engine.js';

/** A compiled rule set and what its alerts carry. */
export interface EvalSet {
  engine: Engine;
  rules: readonly CompiledRule[];
  version: string;
  detectorId: string;
  /** The replay run the alerts belong to (live detection: absent). */
  runId?: string;
  /** Bound of an encoded alert (default DEFAULT_MAX_ALERT_BYTES); a larger one is cut short, marked truncated. */
  maxAlertBytes?: number;
}

/**
 * A batch's record values: the records, or their values packed into one buffer (record i's value is
 * data[bounds[2i]..bounds[2i+1]), a null value empty).
 */
export type RecordValues = readonly InRecord[] | { data: Buffer; bounds: Int32Array };

export interface Evaluation {
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
  /**
   * Records on which evaluation threw: to dead-letter with `reason`. The rules that did not throw on such a record
   * were evaluated alone and their matches are in `matches` (a crafted value must not hide an event from every
   * rule). `rules` names the rules that threw (empty when no single rule reproduces the error).
   */
  failed: Array<{
    index: number;
    hostId: string;
    rules: Array<{ ruleId: string; message: string }>;
    reason: string;
  }>;
}

/** Longest error text carried per rule and per dead letter: a message may quote the hostile value. */
const MAX_REASON = 1024;

function bounded(s: string, max = MAX_REASON): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

// One engine per rule, for the rare record on which the set throws (a set lives until the next rule change).
const alone = new WeakMap<CompiledRule, Engine>();

/**
 * Each rule evaluated alone on `event`: the matches of those that do not throw, and the errors of those that do
 * (to tell what broke a whole set).
 */
export function evaluateAlone(
  rules: readonly CompiledRule[],
  event: ExecveEvent,
): { matches: Match[]; thrown: Array<{ rule: CompiledRule; err: unknown }> } {
  const matches: Match[] = [];
  const thrown: Array<{ rule: CompiledRule; err: unknown }> = [];
  for (const rule of rules) {
    let engine = alone.get(rule);
    if (engine === undefined) {
      engine = createEngine([rule]);
      alone.set(rule, engine);
    }
    try {
      matches.push(...evaluateExecve(engine, event));
    } catch (err) {
      thrown.push({ rule, err });
    }
  }
  return { matches, thrown };
}

// Position of each rule in its set, built once per set (a set lives until the next rule change).
const positions = new WeakMap<readonly CompiledRule[], Map<CompiledRule, number>>();

const EMPTY = Buffer.alloc(0);

/**
 * Decodes and evaluates the records of `values`, in order. A record on which a rule throws is reported in
 * `failed` (naming each rule that throws on it alone) and evaluation goes on: one record never stops a batch.
 * Lifecycle records (not an ExecveEvent) are skipped, and so are events `accept` (given record i's event) refuses.
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
  const result: Evaluation = { matches: [], alerts: [], undecodable: [], failed: [] };
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
    let matches: Match[];
    try {
      matches = evaluateExecve(set.engine, e);
    } catch (err) {
      const res = evaluateAlone(set.rules, e);
      matches = res.matches;
      const rules = res.thrown.map((t) => ({ ruleId: t.rule.id, message: bounded(errorMessage(t.err)) }));
      const reason =
        rules.length === 0
          ? `evaluation threw (no single rule reproduces it): ${errorMessage(err)}`
          : rules.map((r) => `rule ${r.ruleId} threw: ${r.message}`).join('; ');
      result.failed.push({ index: i, hostId: e.hostId, rules, reason: bounded(reason) });
    }
    let alerts: Buffer[];
    try {
      alerts = matches.map((m) =>
        encodeMatchAlert(codec, record, e, ruleInfo(m.rule), m.fields, ctx, set.maxAlertBytes),
      );
    } catch (err) {
      // Not the rule's doing (an alert that fits nowhere): the record is reported, its matches dropped, no rule blamed.
      const last = result.failed[result.failed.length - 1];
      if (last?.index === i) last.reason = bounded(`${last.reason}; ${errorMessage(err)}`);
      else result.failed.push({ index: i, hostId: e.hostId, rules: [], reason: bounded(errorMessage(err)) });
      continue;
    }
    for (let k = 0; k < matches.length; k++) {
      const m = matches[k]!;
      result.matches.push({
        index: i,
        rule: index.get(m.rule)!,
        ruleId: m.rule.id,
        fields: m.fields,
        hostId: e.hostId,
      });
      result.alerts.push(alerts[k]!);
    }
  }
  return result;
}
