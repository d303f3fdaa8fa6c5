/**
 * Reading the compacted rules topic. Every worker follows it from the beginning in a group of its own (so each
 * sees every rule), and `edr rules list|push` read it once to the end. The topic is written without transactions
 * (`edr rules push` publishes plain records), so its end offset is the offset after its last record.
 *
 * Every record passes the `RuleGate` before it reaches a rule store: a valid signature from a trusted key
 * (rule-signing.ts) and a version above the one the gate accepted for that rule id. What it refuses leaves the
 * rule set as it was and is reported (`refusalReport`, the audit topic's `RuleRefused`).
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Logger } from '../infra/log.js';
import { retry, settled } from '../infra/retry.js';
import type { Consumption, InRecord, OutRecord, Transport } from '../infra/transport.js';
import { type Codec, projectCodec } from '../schemas/codec.js';
import { type AcceptedEntry, detectorReport, MAX_ACCEPTED_LISTED } from './pipeline-health.js';
import { type RefusalReason, type TrustedKeys, verifyRecord } from './rule-signing.js';
import type { RuleStore } from './rule-store.js';
import type { DetectorMetrics } from './telemetry.js';

/** A record the gate accepted: what the rule store applies (a null value deletes), with its envelope. */
export interface AcceptedRule {
  key: string;
  value: string | null;
  version: bigint;
  keyId: string;
  offset: number;
}

export interface Refusal {
  record: InRecord;
  reason: RefusalReason;
  detail: string;
  keyId?: string;
  version?: bigint;
  /** The version of the rule in effect when the refused one is stale. */
  acceptedVersion?: bigint;
}

/**
 * Admits records of one rules topic in offset order: each must verify with a trusted key and carry a version
 * above the last accepted one for its rule id, so a replayed older record (a weaker rule, or one deleted since)
 * is refused. A record handled once (a batch delivered again) is skipped, not judged twice.
 */
export class RuleGate {
  /** The last accepted record per rule id, deletions included (their version still bars older records). */
  readonly state = new Map<string, AcceptedRule>();
  private readonly handled = new Map<number, number>();

  constructor(
    private readonly topic: string,
    private readonly trusted: TrustedKeys,
  ) {}

  admit(records: readonly InRecord[]): { accepted: AcceptedRule[]; refused: Refusal[] } {
    const accepted: AcceptedRule[] = [];
    const refused: Refusal[] = [];
    for (const r of records) {
      const last = this.handled.get(r.partition);
      if (last !== undefined && r.offset <= last) continue;
      this.handled.set(r.partition, r.offset);
      const v = verifyRecord(r, this.topic, this.trusted);
      if (!v.ok) {
        refused.push({ record: r, ...v });
        continue;
      }
      const have = this.state.get(v.key);
      if (have !== undefined && v.version <= have.version) {
        refused.push({
          record: r,
          reason: 'stale-version',
          detail: `version ${v.version} is not above version ${have.version} accepted at offset ${have.offset}`,
          keyId: v.keyId,
          version: v.version,
          acceptedVersion: have.version,
        });
        continue;
      }
      const a: AcceptedRule = {
        key: v.key,
        value: v.op === 'delete' ? null : r.value!.toString('utf8'),
        version: v.version,
        keyId: v.keyId,
        offset: r.offset,
      };
      this.state.set(v.key, a);
      accepted.push(a);
    }
    return { accepted, refused };
  }
}

/** A record's key as a rule id for reports and logs, cut to 256 characters (a hostile key may be megabytes). */
export function reportedId(r: InRecord): string | null {
  return r.key === null ? null : r.key.toString('utf8').slice(0, 256);
}

/**
 * The audit record of accepted rules-topic records (a CollectorRecord, kind CONFIG, as a rule-disabled report
 * is): which rules, versions and signing keys, listed up to MAX_ACCEPTED_LISTED, the count beside.
 */
export function acceptedReport(
  codec: Codec,
  o: { detectorId: string; auditTopic: string },
  accepted: readonly AcceptedRule[],
): OutRecord {
  const rules: AcceptedEntry[] = accepted.slice(0, MAX_ACCEPTED_LISTED).map((a) => ({
    ruleId: a.key.slice(0, 256),
    version: a.version.toString(),
    keyId: a.keyId.slice(0, 256),
    offset: a.offset,
    deleted: a.value === null,
  }));
  return detectorReport(
    codec,
    o,
    { event: 'rules-accepted', count: accepted.length, rules },
    `detector ${o.detectorId} accepted ${accepted.length} rules-topic record(s)`,
  );
}

/** The audit record of a refusal: what and why, and a hash of the refused value (never the bytes). */
export function refusalReport(
  codec: Codec,
  o: { detectorId: string; auditTopic: string },
  f: Refusal,
): OutRecord {
  const r = f.record;
  return {
    topic: o.auditTopic,
    key: o.detectorId,
    value: codec.encode('dev.edr.v1.RuleRefused', {
      detectorId: o.detectorId,
      timeNs: BigInt(Date.now()) * 1_000_000n,
      topic: r.topic,
      partition: r.partition,
      offset: BigInt(r.offset),
      ruleId: reportedId(r),
      reason: f.reason,
      detail: f.detail,
      keyId: f.keyId ?? null,
      version: f.version ?? null,
      acceptedVersion: f.acceptedVersion ?? null,
      valueSha256: r.value === null ? null : createHash('sha256').update(r.value).digest('hex'),
      valueBytes: BigInt(r.value?.length ?? 0),
    }),
    headers: { 'edr-record': 'rule-refused' },
  };
}

/**
 * Follows the topic: `apply` gets each batch of records in order (a batch it fails is delivered again). `ready`
 * resolves once everything that was in the topic at start has been applied (or after `readyTimeoutMs`, so a
 * broken topic does not block detection).
 */
export async function followRulesTopic(
  transport: Transport,
  topic: string,
  groupPrefix: string,
  apply: (records: readonly InRecord[], signal: AbortSignal) => void | Promise<void>,
  readyTimeoutMs = 30_000,
): Promise<{ ready: Promise<void>; consumption: Consumption }> {
  const ends = await settled(() => transport.endOffsets(topic));
  const pending = new Map(ends.filter((e) => e.offset > 0).map((e) => [e.partition, e.offset]));
  let markReady!: () => void;
  const ready = new Promise<void>((r) => {
    markReady = r;
  });
  if (pending.size === 0) markReady();
  const timer = setTimeout(markReady, readyTimeoutMs);
  timer.unref();
  const consumption = await transport.consume({
    // A fresh group per start: a worker must read the whole compacted topic each time it starts.
    groupId: `${groupPrefix}-${randomBytes(6).toString('hex')}`,
    topics: [topic],
    start: 'earliest',
    handler: async (batch) => {
      await apply(batch.records, batch.signal);
      const last = batch.records[batch.records.length - 1];
      const end = pending.get(batch.partition);
      if (last !== undefined && end !== undefined && last.offset >= end - 1) {
        pending.delete(batch.partition);
        if (pending.size === 0) {
          clearTimeout(timer);
          markReady();
        }
      }
    },
  });
  return { ready, consumption };
}

/** Every record of the topic now, in offset order. */
export async function readRulesTopic(transport: Transport, topic: string): Promise<InRecord[]> {
  const out: InRecord[] = [];
  const { ready, consumption } = await followRulesTopic(
    transport,
    topic,
    'edr-rules-cli',
    (records) => {
      out.push(...records);
    },
    60_000,
  );
  await ready;
  await consumption.stop();
  return out;
}

export interface TrustedFollowOptions {
  transport: Transport;
  topic: string;
  groupPrefix: string;
  trusted: TrustedKeys;
  store: RuleStore;
  detectorId: string;
  auditTopic: string;
  metrics: Pick<DetectorMetrics, 'ruleRefused'>;
  log: Logger;
  readyTimeoutMs?: number;
}

/**
 * A worker's rules from the topic: what the gate accepts goes to the store at once; each refusal is logged,
 * counted and reported on the audit topic. The reports are published before the batch counts as done (retried
 * while the broker is away), so a refusal is not lost to a failed publish.
 */
export async function followTrustedRules(
  o: TrustedFollowOptions,
): Promise<{ ready: Promise<void>; consumption: Consumption; gate: RuleGate }> {
  const gate = new RuleGate(o.topic, o.trusted);
  const codec = projectCodec();
  const reporter = await o.transport.producer();
  let unreported: OutRecord[] = [];
  // Pushes after the start-up read are reported (and alerted on): the start-up read itself changes nothing.
  let caughtUp = false;
  const { ready, consumption } = await followRulesTopic(
    o.transport,
    o.topic,
    o.groupPrefix,
    async (records, signal) => {
      const { accepted, refused } = gate.admit(records);
      if (accepted.length > 0) o.store.applyTopic(accepted);
      if (accepted.length > 0 && caughtUp) unreported.push(acceptedReport(codec, o, accepted));
      for (const f of refused) {
        o.log.warn('rule record refused', {
          topic: f.record.topic,
          partition: f.record.partition,
          offset: f.record.offset,
          ruleId: reportedId(f.record),
          reason: f.reason,
          detail: f.detail,
          ...(f.keyId !== undefined ? { keyId: f.keyId } : {}),
          ...(f.version !== undefined ? { version: f.version.toString() } : {}),
        });
        o.metrics.ruleRefused(f.reason);
        unreported.push(refusalReport(codec, o, f));
      }
      if (unreported.length === 0) return;
      const batch = unreported;
      await retry(() => reporter.publish(batch), {
        backoff: { initialMs: 200, maxMs: 10_000 },
        // Any failure to reach the audit topic is worth waiting out: the refusal must be on record.
        retryIf: () => true,
        signal,
        onRetry: (err, attempt) => o.log.warn('cannot report refused rule records yet', { err, attempt }),
      });
      unreported = [];
    },
    o.readyTimeoutMs,
  );
  void ready.then(
    () => {
      caughtUp = true;
    },
    () => {},
  );
  const stop = consumption.stop.bind(consumption);
  return {
    ready,
    gate,
    consumption: {
      assignments: () => consumption.assignments(),
      done: consumption.done,
      stop: async () => {
        await stop();
        await reporter.close();
      },
    },
  };
}
