/**
 * The detector's batch loop: a member of the detector group on the input topic, consume → decode → evaluate →
 * publish alerts, with the batch's alerts, dead letters, correlation state and input offsets in one Kafka
 * transaction (consume-transform-produce). A worker killed at any point leaves either all of a batch's outputs
 * with its offsets, or none; the next owner of the partition redoes what was not committed.
 */

import { availableParallelism } from 'node:os';

import { EdrError, errorMessage } from '../infra/errors.js';
import type { Logger } from '../infra/log.js';
import {
  type Batch,
  type Consumption,
  deadLetterRecord,
  type InRecord,
  type OutRecord,
  type Producer,
  type Transport,
} from '../infra/transport.js';
import { type Codec, projectCodec } from '../schemas/codec.js';
import { belowLevel } from '../schemas/levels.js';
import type { Alert, ExecveEvent } from '../schemas/types.js';
import {
  alertRecord,
  buildAlert,
  DEFAULT_MAX_ALERT_BYTES,
  encodedAlertRecord,
  encodeFitted,
  eventField,
  type RuleInfo,
  ruleInfo,
} from './alerts.js';
import { CorrelationStore, eventTimeMs, groupKey, isHostScoped } from './correlations.js';
import { EvalPool } from './eval-pool.js';
import { type Evaluation, evaluateRecords } from './evaluate.js';
import { autoThreads, HostPeers } from './host-peers.js';
import { detectorReport, healthTransform, SilentHosts } from './pipeline-health.js';
import type { RuleSnapshot, RuleStore } from './rule-store.js';
import { type CompiledCorrelation, type CorrelationMatch, ruleRef } from './sigma/correlations.js';
import type { CompiledRule, Match } from './sigma/engine.js';
import type { DetectorMetrics } from './telemetry.js';

export interface WorkerTopics {
  input: string;
  alerts: string;
  audit: string;
  deadLetter: string;
  correlation: string;
  changelog: string;
}

export interface WorkerOptions {
  transport: Transport;
  store: RuleStore;
  groupId: string;
  detectorId: string;
  topics: WorkerTopics;
  /** Partitions of the changelog topic (the input's count). */
  changelogPartitions: number;
  maxBatchRecords: number;
  /** Input partitions handled at once per member, each in offset order. */
  partitionConcurrency: number;
  /** Group members in this process on the input topic (one's transaction round trips overlap another's work). */
  members: number;
  /**
   * Threads decoding and evaluating beside the one running the Kafka client; 0 evaluates on it. `auto`: one while
   * this host has more cores than detector processes (`HostPeers`), else none.
   */
  evaluationThreads?: number | 'auto';
  /**
   * A rule that throws at evaluation is disabled once it has thrown on events of this many distinct hosts (default
   * 3). Below that the records it threw on are dead-lettered and it stays: one host is what an attacker controls,
   * and a single crafted record must not switch a rule off fleet-wide.
   */
  disableRuleAfterHosts?: number;
  /** Bound of an encoded alert (default DEFAULT_MAX_ALERT_BYTES): larger ones are cut short, marked truncated. */
  maxAlertBytes?: number;
  /**
   * Rule alerts one batch's transaction carries at most (DEFAULT_MAX_ALERTS_PER_BATCH). Beyond it an alert is
   * kept only when its rule and host have none in the batch yet (each distinct detection still surfaces; the
   * sinks fold the rest anyway); the others are dropped and counted (edr_detector_alerts_dropped). Their events
   * stay on the audit topic for `edr replay`.
   */
  maxAlertsPerBatch?: number;
  /**
   * Whether this worker also runs the health stage on the audit topic (pipeline-health.ts): collectors' LOSS and
   * STOPPED records, rule-disabled, rules-accepted and rule-refused reports become alerts.
   */
  health?: boolean;
  /** Health stage: a host whose heartbeats stop for this long raises edr-pipeline-host-silent (default 120 s). */
  silentAfterMs?: number;
  /** Health stage: hosts tracked at most (default 100 000); beyond it the one heard from longest ago is forgotten. */
  maxTrackedHosts?: number;
  /** Tests only: see EvalPool's testHook. */
  evalThreadHook?: URL;
  maxGroups: number;
  /** See CorrelationStoreOptions. */
  maxEventsPerGroup?: number;
  maxClockSkewMs?: number;
  maxChangelogRecordBytes?: number;
  restoreTimeoutMs: number;
  metrics: DetectorMetrics;
  log: Logger;
}

export const DEFAULT_MAX_ALERTS_PER_BATCH = 50_000;

/** Admits a batch's alerts up to `max`, then only the first of each rule and host. */
function alertBound(max: number): { admit(ruleId: string, hostId: string): boolean; dropped: number } {
  const pairs = new Set<string>();
  let admitted = 0;
  const b = {
    dropped: 0,
    admit(ruleId: string, hostId: string): boolean {
      const k = `${ruleId}\u0000${hostId}`;
      if (admitted >= max && pairs.has(k)) {
        b.dropped++;
        return false;
      }
      pairs.add(k);
      admitted++;
      return true;
    },
  };
  return b;
}

function correlationInfo(c: CompiledCorrelation): RuleInfo {
  const raw = c.doc.raw;
  const strs = (v: unknown): string[] =>
    Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
  return {
    id: c.id,
    title: c.title,
    level: c.level,
    status: typeof raw['status'] === 'string' ? raw['status'] : null,
    tags: strs(raw['tags']),
    author: typeof raw['author'] === 'string' ? raw['author'] : null,
    references: strs(raw['references']),
  };
}

/**
 * Rules a correlation names (`correlated`), and those whose matches are only correlation input (`silent`: every
 * correlation naming them has generate: false, or they are below the alert level).
 */
function correlatedRules(snap: RuleSnapshot): { correlated: Set<string>; silent: Set<string> } {
  const named = new Map<string, boolean>();
  for (const c of snap.correlations) {
    for (const r of snap.rules) {
      if (ruleRef(c, r) !== undefined) named.set(r.id, (named.get(r.id) ?? false) || c.generate);
    }
  }
  return {
    correlated: new Set(named.keys()),
    silent: new Set([...[...named].filter(([, gen]) => !gen).map(([id]) => id), ...snap.belowLevel]),
  };
}

interface SnapDerived {
  correlated: Set<string>;
  silent: Set<string>;
  local: CompiledCorrelation[];
  remote: CompiledCorrelation[];
}

const derivedCache = new WeakMap<RuleSnapshot, SnapDerived>();
function derived(snap: RuleSnapshot): SnapDerived {
  let d = derivedCache.get(snap);
  if (d === undefined) {
    d = {
      ...correlatedRules(snap),
      local: snap.correlations.filter(isHostScoped),
      remote: snap.correlations.filter((c) => !isHostScoped(c)),
    };
    derivedCache.set(snap, d);
  }
  return d;
}

/** The audit record reporting a disabled rule (the health stage alerts on it). */
function disabledReport(codec: Codec, o: WorkerOptions, rule: CompiledRule, err: unknown): OutRecord {
  return detectorReport(
    codec,
    { detectorId: o.detectorId, auditTopic: o.topics.audit },
    { event: 'rule-disabled', ruleId: rule.id, reason: errorMessage(err) },
    `detector ${o.detectorId} disabled rule ${rule.id} (${rule.title}): it threw at evaluation: ${errorMessage(err)}`,
  );
}

function correlationAlert(
  m: CorrelationMatch,
  event: ExecveEvent,
  version: string,
  detectorId: string,
): Alert {
  const fields = [
    ...Object.entries(m.group).map(([field, v]) => ({ field, value: String(v) })),
    { field: `${m.correlation.type}`, value: String(m.value) },
  ];
  return buildAlert(correlationInfo(m.correlation), event, fields, {
    ruleSetVersion: version,
    detectorId,
    runId: null,
  });
}

/**
 * Failures that are not about a record (reading correlation state) must not send records to the dead-letter
 * topic: as retryable errors they make the transport retry the batch instead.
 */
async function retryable(f: () => Promise<void>): Promise<void> {
  try {
    await f();
  } catch (err) {
    throw new EdrError('EDR_DETECTOR_STATE', `restoring correlation state: ${errorMessage(err)}`, {
      retryable: true,
      cause: err,
    });
  }
}

/** `f`'s value, computed at the first call. */
function once<T>(f: () => T): () => T {
  let v: { value: T } | undefined;
  return () => {
    v ??= { value: f() };
    return v.value;
  };
}

/**
 * A record of a batch that matched (with the snapshot that matched it, each match's encoded alert, and the event
 * for correlations, decoded only if one asks) or did not decode.
 */
type Outcome =
  | { kind: 'undecodable' | 'failed'; index: number; error: unknown }
  | {
      kind: 'matched';
      index: number;
      snap: RuleSnapshot;
      matches: Match[];
      alerts: Buffer[];
      hostId: string;
      event: () => ExecveEvent;
    };

/** A match of a rule some correlation names, with where it came from and where its records go. */
interface MatchToCorrelate {
  /** The input partition (the host-scoped correlation state's). */
  partition: number;
  snap: RuleSnapshot;
  derived: SnapDerived;
  match: Match;
  event: ExecveEvent;
  /** The input record matched (its headers go on to the alerts). */
  source: InRecord;
  out: OutRecord[];
  /** Whether the partition's host-scoped correlation state is restored (else only cross-host ones are fed). */
  localReady: boolean;
}

export class DetectorWorker {
  private readonly codec = projectCodec();
  private pool: EvalPool | undefined;
  /** Evaluation threads to use now (`auto` revises it as detector processes on the host come and go). */
  private threads: number;
  private peers: { registry: HostPeers; timer: NodeJS.Timeout } | undefined;
  private readonly local: CorrelationStore;
  private readonly remote: CorrelationStore;
  private consumptions: Consumption[] = [];
  private stopSilence: (() => Promise<void>) | undefined;
  /** Per rule, the distinct hosts whose events it threw on (at most the disable threshold's count kept). */
  private readonly threwOn = new Map<string, Set<string>>();

  constructor(private readonly o: WorkerOptions) {
    const threads = o.evaluationThreads ?? 0;
    this.threads = threads === 'auto' ? 1 : threads;
    if (threads === 'auto') {
      const registry = new HostPeers();
      try {
        registry.register();
      } catch (err) {
        o.log.warn('cannot register in the detector process directory; counting this process only', {
          dir: registry.dir,
          err,
        });
      }
      let decided = false;
      const revise = () => {
        const cores = availableParallelism();
        const processes = registry.count();
        const n = autoThreads(cores, processes);
        if (n !== this.threads || !decided)
          o.log.info('evaluation threads (auto)', { threads: n, cores, detectorProcesses: processes });
        decided = true;
        this.threads = n;
      };
      revise();
      // Rechecked as processes come and go; either way a batch is evaluated the same (tested), only where differs.
      this.peers = { registry, timer: setInterval(revise, 1000).unref() };
    }
    const common = {
      transport: o.transport,
      changelogTopic: o.topics.changelog,
      changelogPartitions: o.changelogPartitions,
      maxGroups: o.maxGroups,
      ...(o.maxEventsPerGroup === undefined ? {} : { maxEventsPerGroup: o.maxEventsPerGroup }),
      ...(o.maxClockSkewMs === undefined ? {} : { maxClockSkewMs: o.maxClockSkewMs }),
      ...(o.maxChangelogRecordBytes === undefined
        ? {}
        : { maxChangelogRecordBytes: o.maxChangelogRecordBytes }),
      restoreTimeoutMs: o.restoreTimeoutMs,
      metrics: o.metrics,
      log: o.log,
    };
    this.local = new CorrelationStore({
      ...common,
      stage: 'h',
      groupId: o.groupId,
      inputTopic: o.topics.input,
    });
    this.remote = new CorrelationStore({
      ...common,
      stage: 'x',
      groupId: `${o.groupId}-correlate`,
      inputTopic: o.topics.correlation,
    });
  }

  async start(): Promise<void> {
    const o = this.o;
    for (let i = 0; i < Math.max(1, o.members); i++) {
      this.consumptions.push(
        await o.transport.consumeTransform({
          groupId: o.groupId,
          topics: [o.topics.input],
          start: 'earliest',
          maxBatchRecords: o.maxBatchRecords,
          partitionConcurrency: o.partitionConcurrency,
          deadLetterTopic: o.topics.deadLetter,
          transactionalIdPrefix: o.groupId,
          transform: (batch) => this.transform(batch),
        }),
      );
    }
    // One more member per stage, each in a group of its own: matches repartitioned by group-by values, and the
    // audit topic's records about the pipeline itself.
    const stage = async (suffix: string, topic: string, transform: (b: Batch) => Promise<OutRecord[]>) => {
      const c = await o.transport.consumeTransform({
        groupId: `${o.groupId}-${suffix}`,
        topics: [topic],
        start: 'earliest',
        maxBatchRecords: o.maxBatchRecords,
        deadLetterTopic: o.topics.deadLetter,
        transactionalIdPrefix: `${o.groupId}-${suffix}`,
        transform,
      });
      this.consumptions.push(c);
      return c;
    };
    await stage('correlate', o.topics.correlation, (batch) => this.transformRepartitioned(batch));
    if (o.health === true) {
      const silentAfterMs = o.silentAfterMs ?? 120_000;
      const silent = new SilentHosts({ silentAfterMs, maxHosts: o.maxTrackedHosts ?? 100_000 });
      const health = {
        alertsTopic: o.topics.alerts,
        detectorId: o.detectorId,
        maxAlertBytes: o.maxAlertBytes,
        silent,
      };
      const member = await stage('health', o.topics.audit, async (batch) =>
        healthTransform(this.codec, health, batch.records, (err, r) =>
          o.log.warn('pipeline alert not raised', { err, partition: r.partition, offset: r.offset }),
        ),
      );
      this.watchSilence(silent, member, Math.min(5000, Math.max(100, silentAfterMs / 4)));
    }
  }

  /**
   * Checks for silent hosts every `everyMs`: their alerts are published outside any transaction (no input record
   * is behind them), with ids from the last heartbeat, so a repeat after a crash or a rebalance is de-duplicated.
   */
  private watchSilence(silent: SilentHosts, member: Consumption, everyMs: number): void {
    const o = this.o;
    let producer: Promise<Producer> | undefined;
    let evicted = 0;
    let running = false;
    const check = async () => {
      if (running) return;
      running = true;
      try {
        const owned = new Set(
          member
            .assignments()
            .filter((a) => a.topic === o.topics.audit)
            .map((a) => a.partition),
        );
        const alerts = silent.due((p) => owned.has(p), o.detectorId);
        if (silent.evicted !== evicted) {
          evicted = silent.evicted;
          o.log.warn('tracked hosts at their bound: the one heard from longest ago forgotten', { evicted });
        }
        if (alerts.length === 0) return;
        o.log.warn('hosts fell silent', {
          hosts: alerts.map((a) => a.event.hostId).slice(0, 20),
          count: alerts.length,
        });
        producer ??= o.transport.producer();
        const p = await producer;
        await p.publish(
          alerts.map((a) => alertRecord(this.codec, o.topics.alerts, a, undefined, o.maxAlertBytes)),
        );
        o.metrics.alertsEmitted(alerts.length);
      } catch (err) {
        o.log.error('silent-host alerts not published', { err });
      } finally {
        running = false;
      }
    };
    const timer = setInterval(() => void check(), everyMs);
    timer.unref();
    this.stopSilence = async () => {
      clearInterval(timer);
      await (await producer)?.close();
    };
  }

  /** Settles when a consumption ends (rejects on a fatal error). */
  get done(): Promise<void> {
    return Promise.all(this.consumptions.map((c) => c.done)).then(() => {});
  }

  assignments(): Array<{ topic: string; partition: number }> {
    return this.consumptions.flatMap((c) => c.assignments());
  }

  async stop(): Promise<void> {
    await this.stopSilence?.();
    await Promise.all(this.consumptions.map((c) => c.stop()));
    await this.pool?.close();
    if (this.peers !== undefined) {
      clearInterval(this.peers.timer);
      this.peers.registry.unregister();
    }
  }

  /** One batch of the input partition → the records of its transaction. Never throws for a bad record. */
  async transform(batch: Batch): Promise<OutRecord[]> {
    const o = this.o;
    const out: OutRecord[] = [];
    const first = batch.records[0];
    if (first === undefined) return out;
    const startSnap = o.store.current;
    const hasLocal = derived(startSnap).local.length > 0;
    if (hasLocal) await retryable(() => this.local.prepare(batch.partition, first.offset, batch.fetchedFrom));
    const t0 = performance.now();
    if (this.threads > 0)
      this.pool ??= new EvalPool(this.threads, o.log, o.detectorId, {
        maxAlertBytes: o.maxAlertBytes,
        testHook: o.evalThreadHook,
      });
    const outcomes = await this.evaluate(this.threads === 0 ? undefined : this.pool, batch, out);
    let alerts = 0;
    let dead = 0;
    const bound = alertBound(o.maxAlertsPerBatch ?? DEFAULT_MAX_ALERTS_PER_BATCH);
    for (const x of outcomes) {
      const r = batch.records[x.index]!;
      if (x.kind !== 'matched') {
        out.push(deadLetterRecord(o.topics.deadLetter, r, x.error));
        dead++;
        continue;
      }
      const { snap } = x;
      const d = derived(snap);
      for (let j = 0; j < x.matches.length; j++) {
        const m = x.matches[j]!;
        o.metrics.ruleMatched(m.rule.id);
        if (!d.silent.has(m.rule.id) && bound.admit(m.rule.id, x.hostId)) {
          const ctx = { ruleSetVersion: snap.version, replayRunId: null };
          out.push(encodedAlertRecord(o.topics.alerts, x.hostId, x.alerts[j]!, r, ctx));
          alerts++;
        }
        // The event is decoded (from the record) only for a rule a correlation names.
        if (d.correlated.has(m.rule.id))
          alerts += this.correlate({
            partition: batch.partition,
            snap,
            derived: d,
            match: m,
            event: x.event(),
            source: r,
            out,
            localReady: hasLocal,
          });
      }
    }
    if (hasLocal)
      out.push(
        ...this.local.checkpoint(batch.partition, batch.records[batch.records.length - 1]!.offset + 1),
      );
    o.metrics.evaluationMs(performance.now() - t0);
    o.metrics.eventsConsumed(batch.records.length, { topic: batch.topic });
    if (alerts > 0) o.metrics.alertsEmitted(alerts);
    if (dead > 0) o.metrics.deadLetters(dead);
    if (bound.dropped > 0) {
      o.metrics.alertsDropped(bound.dropped);
      o.log.warn('alerts per batch at their bound: repeats of a rule and host dropped', {
        topic: batch.topic,
        partition: batch.partition,
        dropped: bound.dropped,
      });
    }
    return out;
  }

  private onDisabled(out: OutRecord[], rule: CompiledRule, err: unknown): void {
    this.o.log.error('rule disabled: it threw at evaluation', { ruleId: rule.id, err });
    out.push(disabledReport(this.codec, this.o, rule, err));
  }

  /**
   * The records of `batch` that matched, did not decode, or made a rule throw, in order: evaluated here, or on a
   * thread when there are any (`evaluateRecords` either way). A record a rule threw on is dead-lettered (its other
   * rules' matches kept); the rule is disabled in the store, and reported, only once it has thrown on events of
   * `disableRuleAfterHosts` distinct hosts.
   */
  private async evaluate(pool: EvalPool | undefined, batch: Batch, out: OutRecord[]): Promise<Outcome[]> {
    const outcomes: Outcome[] = [];
    const snap = this.o.store.current;
    const records = batch.records;
    const res =
      pool === undefined
        ? evaluateRecords(
            {
              engine: snap.engine,
              rules: snap.rules,
              version: snap.version,
              detectorId: this.o.detectorId,
              ...(this.o.maxAlertBytes === undefined ? {} : { maxAlertBytes: this.o.maxAlertBytes }),
            },
            records,
          )
        : await pool.evaluate(snap, records);
    for (const u of res.undecodable) {
      outcomes.push({ kind: 'undecodable', index: u.index, error: new EdrError(u.code, u.message) });
    }
    for (const f of res.failed) {
      outcomes.push({
        kind: 'failed',
        index: f.index,
        error: new EdrError('EDR_DETECTOR_RULE_THREW', f.reason),
      });
    }
    let last: (Outcome & { kind: 'matched' }) | undefined;
    for (let k = 0; k < res.matches.length; k++) {
      const m = res.matches[k]!;
      const rule = snap.rules[m.rule];
      if (rule?.id !== m.ruleId)
        throw new EdrError('EDR_DETECTOR_EVAL', `evaluated rule ${m.ruleId} is not ${rule?.id}`);
      const match = { rule, logsource: rule.logsource, fields: m.fields };
      // A record's matches come together, in order.
      if (last?.index !== m.index) {
        const value = records[m.index]!.value!;
        last = {
          kind: 'matched',
          index: m.index,
          snap,
          matches: [],
          alerts: [],
          hostId: m.hostId,
          event: once(() => this.codec.decodeAs('dev.edr.v1.ExecveEvent', value)),
        };
        outcomes.push(last);
      }
      last.matches.push(match);
      last.alerts.push(res.alerts[k]!);
    }
    this.blame(snap, res.failed, out);
    return outcomes.sort((a, b) => a.index - b.index);
  }

  /** Counts the hosts each rule threw on; disables (and reports) a rule once they reach the threshold. */
  private blame(snap: RuleSnapshot, failed: Evaluation['failed'], out: OutRecord[]): void {
    const threshold = this.o.disableRuleAfterHosts ?? 3;
    for (const f of failed) {
      for (const c of f.rules) {
        const hosts = this.threwOn.get(c.ruleId) ?? new Set<string>();
        this.threwOn.set(c.ruleId, hosts);
        if (hosts.has(f.hostId)) continue; // logged already (a flood of one host's records is not a log flood)
        hosts.add(f.hostId);
        this.o.log.warn('rule threw at evaluation; record dead-lettered', {
          ruleId: c.ruleId,
          hosts: hosts.size,
          err: c.message,
        });
        if (hosts.size < threshold || this.o.store.current.disabled.has(c.ruleId)) continue;
        this.threwOn.delete(c.ruleId);
        const rule = snap.rules.find((r) => r.id === c.ruleId);
        const why = `${c.message} (on events of ${hosts.size} hosts)`;
        this.o.store.disable(c.ruleId, why);
        if (rule !== undefined) this.onDisabled(out, rule, new Error(why));
      }
    }
  }

  /** Feeds a match to the correlations naming its rule; returns the number of alerts added to `out`. */
  private correlate(c: MatchToCorrelate): number {
    const { partition, snap, derived: d, match: m, event: ev, source, out, localReady } = c;
    let n = 0;
    const get = (f: string) => eventField(ev, f);
    const time = { eventMs: eventTimeMs(ev), recordMs: source.timestampMs };
    if (localReady) {
      for (const c of d.local) {
        const ref = ruleRef(c, m.rule);
        if (ref === undefined) continue;
        for (const cm of this.local.step(partition, c, ref, time, get)) {
          if (belowLevel(c.level, snap.minLevel)) continue;
          out.push(
            alertRecord(
              this.codec,
              this.o.topics.alerts,
              correlationAlert(cm, ev, snap.version, this.o.detectorId),
              source,
              this.o.maxAlertBytes,
            ),
          );
          n++;
        }
      }
    }
    for (const c of d.remote) {
      const ref = ruleRef(c, m.rule);
      if (ref === undefined) continue;
      // The base match travels as an Alert, keyed by the correlation's group-by values.
      const base = buildAlert(ruleInfo(m.rule), ev, m.fields, {
        ruleSetVersion: snap.version,
        detectorId: this.o.detectorId,
        runId: null,
      });
      out.push({
        topic: this.o.topics.correlation,
        key: `${c.id}|${groupKey(c, ref, get)}`,
        value: encodeFitted(this.codec, base, this.o.maxAlertBytes ?? DEFAULT_MAX_ALERT_BYTES),
        headers: { 'edr-correlation-id': c.id, 'edr-rule-ref': ref },
      });
    }
    return n;
  }

  /** Stage two: matches repartitioned by group-by values → correlation alerts. */
  async transformRepartitioned(batch: Batch): Promise<OutRecord[]> {
    const o = this.o;
    const out: OutRecord[] = [];
    const first = batch.records[0];
    if (first === undefined) return out;
    await retryable(() => this.remote.prepare(batch.partition, first.offset, batch.fetchedFrom));
    const snap = o.store.current;
    const byId = new Map(derived(snap).remote.map((c) => [c.id, c]));
    for (const r of batch.records) {
      let base: Alert;
      try {
        base = this.codec.decodeAs('dev.edr.v1.Alert', r.value ?? Buffer.alloc(0));
      } catch (err) {
        out.push(deadLetterRecord(o.topics.deadLetter, r, err));
        continue;
      }
      const c = byId.get(r.headers['edr-correlation-id']?.toString('utf8') ?? '');
      const ref = r.headers['edr-rule-ref']?.toString('utf8');
      if (c === undefined || ref === undefined) continue; // correlation removed since
      const ev = base.event;
      const time = { eventMs: eventTimeMs(ev), recordMs: r.timestampMs };
      for (const cm of this.remote.step(batch.partition, c, ref, time, (f) => eventField(ev, f))) {
        if (belowLevel(c.level, snap.minLevel)) continue;
        out.push(
          alertRecord(
            this.codec,
            o.topics.alerts,
            correlationAlert(cm, ev, snap.version, o.detectorId),
            r,
            o.maxAlertBytes,
          ),
        );
      }
    }
    out.push(...this.remote.checkpoint(batch.partition, batch.records[batch.records.length - 1]!.offset + 1));
    return out;
  }
}
