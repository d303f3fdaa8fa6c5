/**
 * Stateful Sigma correlations, driven by the engine's pure `stepCorrelation`, on event time.
 *
 * State is kept per input partition (a partition is owned by one worker at a time). Each batch's transaction
 * carries, with the alerts and the input offsets, the groups the batch changed and a checkpoint record
 * (`next` = the input offset after the batch) on a compacted changelog topic. A worker that takes a partition
 * over (rebalance, restart, or after an aborted transaction) rebuilds the state from the changelog up to the
 * checkpoint whose `next` equals the offset it resumes from: exactly the state the committed alerts came from,
 * so a correlation spanning the hand-over fires once, neither missed nor repeated.
 *
 * Correlations grouped by host (a host field among their group-by) run where the host's events are (the input is
 * keyed by host). Others are repartitioned: each match of one of their rules is forwarded, in the same
 * transaction, to the correlation topic keyed by its group-by values, whose consumers (`stage` 'x') hold those
 * groups' state the same way.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from '../infra/log.js';
import { settled } from '../infra/retry.js';
import type { OutRecord, Transport } from '../infra/transport.js';
import type { ExecveEvent } from '../schemas/types.js';
import { docHash } from './rule-store.js';
import {
  type CompiledCorrelation,
  type CorrelationMatch,
  type CorrelationState,
  emptyCorrelationState,
  stepCorrelation,
} from './sigma/correlations.js';
import type { DetectorMetrics } from './telemetry.js';

/** Group-by fields that name the host: such correlations are evaluated where the host's events are. */
const HOST_FIELDS = new Set(['Computer', 'hostname', 'Hostname', 'host', 'hostId', 'HostId']);

export function isHostScoped(c: CompiledCorrelation): boolean {
  return c.groupBy.some((g) => HOST_FIELDS.has(g));
}

/** The group-by values of a match (aliases resolved), as the correlation topic's key. */
export function groupKey(c: CompiledCorrelation, ref: string, get: (f: string) => unknown): string {
  return JSON.stringify(c.groupBy.map((g) => get(c.aliases[g]?.[ref] ?? g) ?? null));
}

type Stage = 'h' | 'x';

interface PartitionState {
  /** correlation key (id@content hash) → state */
  states: Map<string, CorrelationState>;
  /** The input offset the next batch must start at for this state to be current. */
  next: number;
}

interface ChangelogEntry {
  next?: number;
  entries?: unknown;
}

export interface CorrelationStoreOptions {
  stage: Stage;
  /** The group and topic whose committed offsets the state follows. */
  groupId: string;
  inputTopic: string;
  transport: Transport;
  changelogTopic: string;
  changelogPartitions: number;
  maxGroups: number;
  /** Entries kept per group (default DEFAULT_MAX_EVENTS_PER_GROUP): beyond it the oldest go, counted. */
  maxEventsPerGroup?: number;
  /** How far event time may stray from the record's timestamp before it is clamped (DEFAULT_MAX_CLOCK_SKEW_MS). */
  maxClockSkewMs?: number;
  /** Bound of one changelog record's value (DEFAULT_MAX_CHANGELOG_RECORD_BYTES), under the broker's limit. */
  maxChangelogRecordBytes?: number;
  restoreTimeoutMs: number;
  metrics: DetectorMetrics;
  log: Logger;
}

export const DEFAULT_MAX_EVENTS_PER_GROUP = 1000;
export const DEFAULT_MAX_CLOCK_SKEW_MS = 5 * 60_000;
export const DEFAULT_MAX_CHANGELOG_RECORD_BYTES = 256 * 1024;

/**
 * The time an event is windowed at: its own time while within `maxSkewMs` of the Kafka record's timestamp (the
 * broker's or the producer's clock, not the host's), else the record's. A host's clock, or a crafted event, dated
 * a year ahead would otherwise move a partition's windows past every other host's entries and wipe them.
 */
export function trustedTimeMs(eventMs: number, recordMs: number, maxSkewMs: number): number {
  if (!Number.isFinite(eventMs)) return recordMs;
  return Math.abs(eventMs - recordMs) > maxSkewMs ? recordMs : eventMs;
}

const corrKey = (c: CompiledCorrelation): string => `${c.id}@${docHash(c.doc).slice(0, 12)}`;

export class CorrelationStore {
  private readonly parts = new Map<number, PartitionState>();
  /** Changed group keys per partition since the last checkpoint: `${corrKey}\u0000${group}`. */
  private readonly dirty = new Map<number, Set<string>>();

  constructor(private readonly o: CorrelationStoreOptions) {}

  /**
   * Makes the state of `partition` the one committed with the input offsets, before a batch starting at `first`
   * and read from `fetchedFrom` (Batch.fetchedFrom). A continuation of this worker's previous batch keeps the
   * state in memory; anything else (the partition was elsewhere meanwhile, or a transaction aborted) rebuilds it
   * from the changelog.
   *
   * Offsets of a transactional input have gaps (commit markers, aborted records), so a state is current for the
   * batch when its `next` lies in [fetchedFrom, first]: nothing between it and the batch is visible. Failing
   * that, when its `next` is the group's committed offset.
   */
  async prepare(partition: number, first: number, fetchedFrom = first): Promise<void> {
    const p = this.parts.get(partition);
    if (p !== undefined && current(p, first, fetchedFrom)) return;
    const committed = await this.committed(partition);
    if (p !== undefined && committed >= 0 && p.next === committed && first >= committed) return;
    this.dirty.delete(partition);
    if (committed <= 0) {
      this.parts.set(partition, { states: new Map(), next: first });
      return;
    }
    this.parts.set(partition, await this.restore(partition, committed, first, fetchedFrom));
  }

  private async committed(partition: number): Promise<number> {
    const lag = await settled(() => this.o.transport.lag(this.o.groupId, this.o.inputTopic));
    return lag.find((l) => l.partition === partition)?.committed ?? -1;
  }

  /**
   * Feeds a rule match of an event dated `eventMs`, read from a record with timestamp `recordMs`; returns the
   * correlation matches it completes.
   */
  step(
    partition: number,
    c: CompiledCorrelation,
    ref: string,
    time: { eventMs: number; recordMs: number },
    get: (f: string) => unknown,
  ): CorrelationMatch[] {
    const p = this.parts.get(partition);
    if (p === undefined) return [];
    const k = corrKey(c);
    const before = p.states.get(k) ?? emptyCorrelationState();
    const timeMs = trustedTimeMs(
      time.eventMs,
      time.recordMs,
      this.o.maxClockSkewMs ?? DEFAULT_MAX_CLOCK_SKEW_MS,
    );
    if (timeMs !== time.eventMs) this.o.metrics.eventTimeClamped(time.eventMs - time.recordMs);
    const r = stepCorrelation(c, before, { timeMs, rule: ref, get });
    let groups = r.state.groups;
    const perGroup = this.o.maxEventsPerGroup ?? DEFAULT_MAX_EVENTS_PER_GROUP;
    for (const [g, es] of groups) {
      if (es.length <= perGroup) continue;
      // One busy group (a flood from one host) keeps its newest entries only.
      const m = new Map(groups);
      m.set(g, es.slice(es.length - perGroup));
      groups = m;
      this.o.metrics.correlationTrimmed(es.length - perGroup, c.id);
    }
    if (groups.size > this.o.maxGroups) {
      // Evict the groups seen longest ago (event time) until back at the bound.
      const order = [...groups].sort(
        (a, b) => (a[1][a[1].length - 1]?.timeMs ?? 0) - (b[1][b[1].length - 1]?.timeMs ?? 0),
      );
      const m = new Map(groups);
      const over = groups.size - this.o.maxGroups;
      for (let i = 0; i < over; i++) m.delete(order[i]![0]);
      groups = m;
      this.o.metrics.correlationEvictions(over, c.id);
    }
    p.states.set(k, { groups });
    const d = this.dirty.get(partition) ?? new Set<string>();
    for (const g of new Set([...before.groups.keys(), ...groups.keys()])) {
      if (before.groups.get(g) !== groups.get(g)) d.add(`${k}\u0000${g}`);
    }
    this.dirty.set(partition, d);
    return r.matches;
  }

  /** The changelog records of the batch ending before `next`: changed groups, then the checkpoint. */
  checkpoint(partition: number, next: number): OutRecord[] {
    const p = this.parts.get(partition);
    if (p === undefined) return [];
    p.next = next;
    const out: OutRecord[] = [];
    const target = partition % this.o.changelogPartitions;
    for (const dk of this.dirty.get(partition) ?? []) {
      const [k, g] = dk.split('\u0000') as [string, string];
      out.push({
        topic: this.o.changelogTopic,
        partition: target,
        key: `${this.o.stage}|${partition}|${k}|${g}`,
        value: this.fittedEntries(p, k, g),
      });
    }
    this.dirty.delete(partition);
    out.push({
      topic: this.o.changelogTopic,
      partition: target,
      key: `${this.o.stage}|${partition}|#`,
      value: Buffer.from(JSON.stringify({ next })),
    });
    return out;
  }

  /**
   * A group's changelog value, under maxChangelogRecordBytes: the oldest entries are dropped until it fits (from
   * the memory state too, so a restored state equals the one kept), and a group that cannot fit even with one
   * entry (a huge aggregated value) is dropped whole (a tombstone). Both are counted.
   */
  private fittedEntries(p: PartitionState, k: string, g: string): Buffer | null {
    const state = p.states.get(k);
    let entries = state?.groups.get(g);
    if (state === undefined || entries === undefined) return null;
    const max = this.o.maxChangelogRecordBytes ?? DEFAULT_MAX_CHANGELOG_RECORD_BYTES;
    let value = Buffer.from(JSON.stringify({ entries }));
    if (value.length <= max) return value;
    const all = entries.length;
    while (entries.length > 0 && value.length > max) {
      // Cut in proportion to the excess (at least one entry), not one at a time.
      const drop = Math.max(1, Math.ceil((entries.length * (value.length - max)) / value.length));
      entries = entries.slice(drop);
      value = Buffer.from(JSON.stringify({ entries }));
    }
    const groups = new Map(state.groups);
    if (entries.length === 0) groups.delete(g);
    else groups.set(g, entries);
    p.states.set(k, { groups });
    this.o.metrics.correlationTrimmed(all - entries.length, k);
    return entries.length === 0 ? null : value;
  }

  /** Forgets partitions (not needed for correctness: a stale state is never used, see prepare). */
  clear(): void {
    this.parts.clear();
    this.dirty.clear();
  }

  /** State read from the changelog, per partition: valid for a batch starting at its `next`. */
  private readonly restored = new Map<number, PartitionState>();

  /**
   * The state whose checkpoint is current for the batch (see `prepare`), or is `next`, the committed offset:
   * every transaction writes its checkpoint. The committed offset can read behind a checkpoint whose transaction
   * has just committed; the batch's bounds cannot.
   */
  private async restore(
    partition: number,
    next: number,
    first: number,
    fetchedFrom: number,
  ): Promise<PartitionState> {
    const fits = (c: PartitionState | undefined): c is PartitionState =>
      c !== undefined && (c.next === next || current(c, first, fetchedFrom));
    let cached = this.restored.get(partition);
    if (!fits(cached)) {
      await this.readChangelogOnce();
      cached = this.restored.get(partition);
    }
    this.restored.delete(partition);
    if (!fits(cached)) {
      this.o.log.warn('correlation state: no checkpoint for the resumed offset; starting it empty', {
        partition,
        offset: next,
        // The last checkpoint the changelog had for it (null: none), to tell a lagging read from a missing write.
        lastCheckpoint: (cached as PartitionState | undefined)?.next ?? null,
        batchStart: first,
        fetchedFrom,
        stage: this.o.stage,
      });
      return { states: new Map(), next };
    }
    return cached;
  }

  private reading: Promise<void> | undefined;

  /** Partitions taken over together (partitionConcurrency > 1) share one read of the changelog. */
  private readChangelogOnce(): Promise<void> {
    this.reading ??= this.readChangelog().finally(() => {
      this.reading = undefined;
    });
    return this.reading;
  }

  /**
   * Reads the whole changelog (compacted: one record per live group) and keeps, per partition of this stage, the
   * state as of its last checkpoint. Every transaction ends with its checkpoint, so what was read of a partition
   * when the read ends is the state at that partition's last committed checkpoint.
   */
  private async readChangelog(): Promise<void> {
    const t0 = Date.now();
    const ends = await settled(() => this.o.transport.endOffsets(this.o.changelogTopic));
    const pending = new Map(ends.filter((e) => e.offset > 0).map((e) => [e.partition, e.offset]));
    const acc = new Map<number, { next: number; groups: Map<string, Map<string, unknown>> }>();
    if (pending.size > 0) {
      let settle!: () => void;
      const done = new Promise<void>((r) => {
        settle = r;
      });
      const timer = setTimeout(settle, this.o.restoreTimeoutMs);
      // The visible end may lie before the end offset (a transaction aborted last): stop also when idle.
      let idle = setTimeout(settle, 3000);
      const consumption = await this.o.transport.consume({
        groupId: `edr-detector-restore-${randomBytes(6).toString('hex')}`,
        topics: [this.o.changelogTopic],
        start: 'earliest',
        maxBatchRecords: 5000,
        handler: async (batch) => {
          clearTimeout(idle);
          idle = setTimeout(settle, 1500);
          for (const r of batch.records) {
            const key = r.key?.toString('utf8') ?? '';
            const [stage, part, ...rest] = key.split('|');
            if (stage !== this.o.stage) continue;
            const q = Number(part);
            let a = acc.get(q);
            if (a === undefined) {
              a = { next: -1, groups: new Map() };
              acc.set(q, a);
            }
            if (rest.length === 1 && rest[0] === '#') {
              a.next = (JSON.parse(r.value?.toString('utf8') ?? '{}') as ChangelogEntry).next ?? -1;
              continue;
            }
            const ck = rest[0]!;
            const g = rest.slice(1).join('|');
            let m = a.groups.get(ck);
            if (m === undefined) {
              m = new Map();
              a.groups.set(ck, m);
            }
            if (r.value === null) m.delete(g);
            else m.set(g, (JSON.parse(r.value.toString('utf8')) as ChangelogEntry).entries);
          }
          const last = batch.records[batch.records.length - 1];
          const end = pending.get(batch.partition);
          // end - 2: the last transaction's commit marker takes the last offset.
          if (last !== undefined && end !== undefined && last.offset >= end - 2) {
            pending.delete(batch.partition);
            if (pending.size === 0) settle();
          }
        },
      });
      await done;
      clearTimeout(timer);
      clearTimeout(idle);
      await consumption.stop();
    }
    this.restored.clear();
    for (const [q, a] of acc) {
      const states = new Map<string, CorrelationState>();
      for (const [ck, m] of a.groups)
        if (m.size > 0) states.set(ck, { groups: m as CorrelationState['groups'] });
      this.restored.set(q, { next: a.next, states });
    }
    this.o.log.info('correlation state read from the changelog', {
      stage: this.o.stage,
      partitions: acc.size,
      ms: Date.now() - t0,
    });
  }
}

/** Whether a state is the one before a batch starting at `first`, read from `fetchedFrom`. */
function current(p: PartitionState, first: number, fetchedFrom: number): boolean {
  return p.next >= Math.min(fetchedFrom, first) && p.next <= first;
}

/** Time of an event in milliseconds (event time, not arrival). */
export function eventTimeMs(e: ExecveEvent): number {
  return Number(e.timeNs / 1_000_000n);
}
