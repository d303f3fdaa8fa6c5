/**
 * The pipeline watches itself: records about the pipeline on the audit topic (a collector's LOSS and STOPPED
 * records, a worker's rule-disabled and rules-accepted reports, RuleRefused reports) become alerts with stable
 * rule ids (`HEALTH_RULES`), published to the alerts topic like any detection, so the normal sinks and routes
 * carry them. The health stage is one more consume-transform-produce member per worker on the audit topic (group
 * `<groupId>-health`): its alerts commit with its offsets, once.
 *
 * Every byte here may come from a host (the audit topic is writable by collectors): a record that does not decode
 * is skipped, and each alert is about the record's own host or detector, its fields cut short like any alert's.
 */
import { errorMessage } from '../infra/errors.js';
import type { InRecord, OutRecord } from '../infra/transport.js';
import type { Codec } from '../schemas/codec.js';
import type {
  Alert,
  CollectorHeartbeat,
  CollectorRecord,
  ExecveEvent,
  MatchedField,
  RuleRefused,
} from '../schemas/types.js';
import { alertRecord, buildAlert, type RuleInfo } from './alerts.js';

const rule = (id: string, title: string, level: string, tags: string[]): RuleInfo => ({
  id,
  title,
  level,
  status: 'stable',
  tags,
  author: 'EDR project',
  references: [],
});

/** The project's self-monitoring rules: their ids are stable, for routes (`ruleIds`) and for dedup. */
export const HEALTH_RULES = {
  loss: rule('edr-pipeline-events-lost', 'EDR collector lost events', 'high', ['attack.t1562.001']),
  stopped: rule('edr-pipeline-collector-stopped', 'EDR collector stopped', 'high', ['attack.t1562.001']),
  ruleDisabled: rule('edr-pipeline-rule-disabled', 'EDR detection rule disabled', 'high', ['attack.t1562']),
  ruleRefused: rule('edr-pipeline-rule-refused', 'EDR rules-topic record refused', 'medium', [
    'attack.t1562',
  ]),
  silent: rule('edr-pipeline-host-silent', 'EDR collector host fell silent', 'high', ['attack.t1562.001']),
  rulesChanged: rule('edr-pipeline-rules-changed', 'EDR rule set changed from the rules topic', 'medium', []),
} as const;

/** Rules accepted in one batch listed in one report at most (the rest are counted in it). */
export const MAX_ACCEPTED_LISTED = 1000;

/** What a worker reports on the audit topic when it accepts rules-topic records (event 'rules-accepted'). */
export interface AcceptedEntry {
  ruleId: string;
  version: string;
  keyId: string;
  offset: number;
  deleted: boolean;
}

/**
 * A worker's report on the audit topic (a CollectorRecord of kind CONFIG, so every audit reader decodes it), its
 * `event` in the config JSON ('rule-disabled', 'rules-accepted') and the header `edr-record` naming it.
 */
export function detectorReport(
  codec: Codec,
  o: { detectorId: string; auditTopic: string },
  report: { event: string } & Record<string, unknown>,
  message: string,
): OutRecord {
  return {
    topic: o.auditTopic,
    key: o.detectorId,
    value: codec.encode('dev.edr.v1.CollectorRecord', {
      hostId: o.detectorId,
      hostname: o.detectorId,
      bootId: '',
      timeNs: BigInt(Date.now()) * 1_000_000n,
      collectorVersion: 'edr-detector',
      kind: 'CONFIG',
      config: JSON.stringify(report),
      losses: null,
      lastSeq: 0n,
      message,
    }),
    headers: { 'edr-record': report.event },
  };
}

/**
 * An alert needs an event: a pipeline alert carries a stand-in one naming the host (or detector), with the
 * record's time and sequence number, so its id is the same however often the record is read.
 */
function standIn(o: {
  hostId: string;
  hostname: string;
  bootId: string;
  timeNs: bigint;
  seq: bigint;
}): ExecveEvent {
  return {
    hostId: o.hostId,
    hostname: o.hostname,
    bootId: o.bootId,
    seq: o.seq,
    timeNs: o.timeNs,
    processStartNs: 0n,
    pid: 0,
    tid: 0,
    ppid: 0,
    uid: 0n,
    euid: 0n,
    gid: 0n,
    loginUid: 0n,
    sessionId: 0n,
    comm: 'edr',
    image: 'edr',
    argv: [],
    argvTruncated: false,
    argvBytes: 0,
    cwd: '',
    cgroupId: 0n,
    containerId: null,
    userName: null,
    parentImage: null,
    parentCommandLine: null,
    ancestors: [],
    sha256: null,
    collectorVersion: 'edr-pipeline',
  };
}

const fields = (o: Record<string, unknown>): MatchedField[] =>
  Object.entries(o)
    .filter(([, v]) => v !== undefined && v !== null)
    .map(([field, v]) => ({ field, value: String(v) }));

function collectorAlerts(c: CollectorRecord, detectorId: string): Alert[] {
  const ctx = { ruleSetVersion: 'pipeline-health', detectorId, runId: null };
  const ev = (seq: bigint, extra: Partial<ExecveEvent> = {}) => ({
    ...standIn({ hostId: c.hostId, hostname: c.hostname, bootId: c.bootId, timeNs: c.timeNs, seq }),
    collectorVersion: c.collectorVersion,
    ...extra,
  });
  if (c.kind === 'LOSS' && c.losses !== null) {
    const l = c.losses;
    const lost = l.kernelRingFull + l.kernelTruncated + l.kernelReadErrors + l.queueDropped + l.spoolDropped;
    if (lost <= 0n) return [];
    return [buildAlert(HEALTH_RULES.loss, ev(c.lastSeq), fields({ ...l, message: c.message }), ctx)];
  }
  if (c.kind === 'STOPPED')
    return [
      buildAlert(
        HEALTH_RULES.stopped,
        ev(c.lastSeq),
        fields({ lastSeq: c.lastSeq, message: c.message }),
        ctx,
      ),
    ];
  if (c.kind !== 'CONFIG' || c.config === null) return [];
  let report: { event?: unknown; ruleId?: unknown; reason?: unknown; rules?: unknown; count?: unknown };
  try {
    report = JSON.parse(c.config) as typeof report;
  } catch {
    return [];
  }
  if (report === null || typeof report !== 'object') return [];
  if (report.event === 'rule-disabled') {
    const f = fields({ disabledRuleId: report.ruleId, reason: report.reason, detector: c.hostId });
    return [buildAlert(HEALTH_RULES.ruleDisabled, ev(0n, { timeNs: c.timeNs }), f, ctx)];
  }
  if (report.event === 'rules-accepted' && Array.isArray(report.rules)) {
    // One alert per accepted record, its id from the rules topic's offset: every worker reports the same push,
    // and the sinks' dedup keeps one.
    return (report.rules as AcceptedEntry[]).slice(0, MAX_ACCEPTED_LISTED).flatMap((r) => {
      if (r === null || typeof r !== 'object' || !Number.isSafeInteger(r.offset)) return [];
      const e = standIn({
        hostId: 'rules-topic',
        hostname: 'rules-topic',
        bootId: '',
        timeNs: 0n,
        seq: BigInt(r.offset),
      });
      const f = fields({ changedRuleId: r.ruleId, version: r.version, keyId: r.keyId, deleted: r.deleted });
      return [buildAlert(HEALTH_RULES.rulesChanged, e, f, ctx)];
    });
  }
  return [];
}

function refusedAlert(r: RuleRefused, detectorId: string): Alert {
  const e = standIn({
    hostId: r.detectorId,
    hostname: r.detectorId,
    bootId: '',
    timeNs: r.timeNs,
    seq: r.offset,
  });
  const f = fields({
    refusedRuleId: r.ruleId,
    reason: r.reason,
    detail: r.detail,
    keyId: r.keyId,
    offset: r.offset,
  });
  return buildAlert(HEALTH_RULES.ruleRefused, e, f, {
    ruleSetVersion: 'pipeline-health',
    detectorId,
    runId: null,
  });
}

/** The alerts an audit record raises (none for events and for records that do not decode). */
export function healthAlerts(codec: Codec, value: Buffer | null, detectorId: string): Alert[] {
  return alertsFor(decoded(codec, value), detectorId);
}

function decoded(codec: Codec, value: Buffer | null): ReturnType<Codec['view']> | undefined {
  if (value === null) return undefined;
  try {
    return codec.view(value);
  } catch {
    return undefined; // not the pipeline's to judge: the audit topic's own readers report it
  }
}

function alertsFor(d: ReturnType<Codec['view']> | undefined, detectorId: string): Alert[] {
  if (d?.name === 'dev.edr.v1.CollectorRecord') return collectorAlerts(d.value, detectorId);
  if (d?.name === 'dev.edr.v1.RuleRefused') return [refusedAlert(d.value, detectorId)];
  return [];
}

interface Known {
  partition: number;
  beat: CollectorHeartbeat;
  /** When it was last heard of (record time, never later than the detector's clock). */
  lastMs: number;
  alerted: boolean;
}

/**
 * Hosts known from their heartbeats, per audit partition (a host's records share one: the topic is keyed by
 * host id), and the alert for each that falls silent past `silentAfterMs`: once per silence, again only after it
 * was heard from again. At most `maxHosts` are kept; beyond it the one heard from longest ago is forgotten, counted.
 */
export class SilentHosts {
  readonly #hosts = new Map<string, Known>();
  /** Hosts forgotten because of maxHosts. */
  evicted = 0;

  constructor(private readonly o: { silentAfterMs: number; maxHosts: number; now?: () => number }) {}

  get size(): number {
    return this.#hosts.size;
  }

  /**
   * A heartbeat read from `partition` in a record stamped `recordMs` (the collector's clock: a time ahead of the
   * detector's is taken as now, so a host cannot postpone its own silence alert by dating its heartbeats ahead).
   */
  heartbeat(partition: number, beat: CollectorHeartbeat, recordMs: number): void {
    const now = this.o.now?.() ?? Date.now();
    this.#hosts.delete(beat.hostId); // re-inserted last: the map's order is the order last heard from
    this.#hosts.set(beat.hostId, { partition, beat, lastMs: Math.min(recordMs, now), alerted: false });
    if (this.#hosts.size > this.o.maxHosts) {
      const oldest = this.#hosts.keys().next().value as string;
      this.#hosts.delete(oldest);
      this.evicted++;
    }
  }

  /** A host that stopped (its STOPPED record is alerted on by itself): no silence alert for it. */
  stopped(hostId: string): void {
    this.#hosts.delete(hostId);
  }

  /** The alerts of hosts silent past the bound, on partitions this worker owns (`owned`). */
  due(owned: (partition: number) => boolean, detectorId: string): Alert[] {
    const now = this.o.now?.() ?? Date.now();
    const out: Alert[] = [];
    for (const k of this.#hosts.values()) {
      if (now - k.lastMs <= this.o.silentAfterMs) break; // in order of last heard from: the rest are younger
      if (k.alerted) continue;
      if (!owned(k.partition)) continue; // moved to another worker, which alerts on it
      k.alerted = true;
      const b = k.beat;
      // The id comes from the last heartbeat: every reader of it raises the same alert for this silence.
      const e = standIn({
        hostId: b.hostId,
        hostname: b.hostname,
        bootId: b.bootId,
        timeNs: b.timeNs,
        seq: b.lastSeq,
      });
      const f = fields({
        lastHeardAt: new Date(k.lastMs).toISOString(),
        silentForMs: now - k.lastMs,
        heartbeatIntervalMs: b.intervalMs,
        lastSeq: b.lastSeq,
        kernelRingFull: b.kernelRingFull,
        queueDropped: b.queueDropped,
        spoolDropped: b.spoolDropped,
      });
      out.push(
        buildAlert(HEALTH_RULES.silent, { ...e, collectorVersion: b.collectorVersion }, f, {
          ruleSetVersion: 'pipeline-health',
          detectorId,
          runId: null,
        }),
      );
    }
    return out;
  }
}

/** One batch of the audit topic → its pipeline alerts, for the health stage's transaction. */
export function healthTransform(
  codec: Codec,
  o: { alertsTopic: string; detectorId: string; maxAlertBytes?: number | undefined; silent?: SilentHosts },
  records: readonly InRecord[],
  onError: (err: unknown, r: InRecord) => void,
): OutRecord[] {
  const out: OutRecord[] = [];
  for (const r of records) {
    try {
      const d = decoded(codec, r.value);
      if (d?.name === 'dev.edr.v1.CollectorHeartbeat')
        o.silent?.heartbeat(r.partition, d.value, r.timestampMs);
      if (d?.name === 'dev.edr.v1.CollectorRecord' && d.value.kind === 'STOPPED')
        o.silent?.stopped(d.value.hostId);
      for (const a of alertsFor(d, o.detectorId))
        out.push(alertRecord(codec, o.alertsTopic, a, r, o.maxAlertBytes));
    } catch (err) {
      onError(new Error(`pipeline alert for audit record: ${errorMessage(err)}`), r);
    }
  }
  return out;
}
