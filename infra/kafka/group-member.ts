/**
 * One consumer group member. `work` handles a slice of a fetched batch, calls `resolve` with the last offset it
 * finished, and returns whether it finished the slice.
 *
 * - `commit` mode (handlers): kafkajs commits resolved offsets; an unfinished batch is left unresolved, so
 *   kafkajs fetches its rest again. `transactional` mode is the same with offsets committed by `work`.
 * - `detached` mode (consume-transform-produce, whose offsets commit in `work`'s transactions): a fetched batch
 *   is handed to a job of its own, so kafkajs goes on fetching (and decoding) meanwhile instead of waiting for
 *   the slowest batch of each fetch. The job works through its partition's batches in order; kafkajs may fetch
 *   `PREFETCH` more of them while it does (so the next is at hand when one ends, even while kafkajs sleeps
 *   out a fetch with every partition paused), then the partition is paused until the job catches up. A job
 *   that stops early, or outlives a rebalance (which resets positions to the committed offsets), drops what
 *   it had queued and seeks its partition to the first offset it did not finish before resuming it.
 */
import type { Consumer, EachBatchPayload, Kafka } from 'kafkajs';
import type { Logger } from '../log.js';
import type { ConsumeOptions, InRecord } from '../transport.js';
import { type Access, kafkaCall, toEdrError } from './errors.js';
import { toInRecord } from './records.js';

export type MemberMode = 'commit' | 'transactional' | 'detached';

/** A slice of a fetched batch of one partition, as `work` gets it. */
export interface Slice {
  records: InRecord[];
  /** See Batch.fetchedFrom. */
  fetchedFrom: number;
  topic: string;
  partition: number;
  /** Aborts when the member stops or the partition is revoked: finish or give up the slice in hand. */
  signal: AbortSignal;
  payload: EachBatchPayload;
  /** The group generation (assignment) this member is in now. */
  generation: number;
  /** The last offset finished. */
  resolve: (offset: number) => void;
  /** Ends the consumption with `err` (`done` rejects). */
  fail: (err: unknown) => void;
}

export interface MemberOptions {
  mode: MemberMode;
  /** Handles a slice; returns whether it finished it. */
  work: (slice: Slice) => Promise<boolean>;
  /** Runs once the member has left the group, before `done` settles. */
  onStop?: () => Promise<void>;
  sessionTimeoutMs: number;
  /** What the member asks (READ on its topics and group), for the message of a refusal. */
  access: Access;
  log: Logger;
}

/**
 * Batches of a partition a detached job may have waiting besides the one in hand: one keeps the next at hand when
 * a batch ends without holding much more of a partition in memory.
 */
const PREFETCH = 1;

/** kafkajs error types of a heartbeat refused because the group is rebalancing (or moved on without us). */
const REBALANCE_ERRORS = new Set(['REBALANCE_IN_PROGRESS', 'ILLEGAL_GENERATION', 'UNKNOWN_MEMBER_ID']);

/** A fetched batch of one partition: its records, and the offset the fetch asked for (Batch.fetchedFrom). */
interface Fetched {
  records: InRecord[];
  from: number;
}

/** A detached job: works through one partition's fetched batches in order. */
interface Job {
  promise: Promise<void>;
  abort: AbortController;
  queue: Fetched[];
  startedIn: number;
}

function jobKey(topic: string, partition: number): string {
  return `${topic}|${partition}`;
}

/** Bytes to fetch per partition for batches of `records` records. */
function fetchBytes(records: number): number {
  return Math.min(16 << 20, Math.max(1 << 20, records * 200));
}

export class GroupMember {
  /** Settles when the member ends: resolves on stop(), rejects on a fatal error. */
  readonly done: Promise<void>;
  private readonly consumer: Consumer;
  private readonly max: number;
  private assigned: Array<{ topic: string; partition: number }> = [];
  private generation = 0;
  private fatal: unknown;
  private settle!: { resolve: () => void; reject: (err: unknown) => void };
  /** Detached jobs by `topic|partition`. */
  private readonly jobs = new Map<string, Job>();
  private stopping: Promise<void> | undefined;

  constructor(
    kafka: Kafka,
    private readonly subscription: ConsumeOptions,
    private readonly opts: MemberOptions,
  ) {
    this.max = subscription.maxBatchRecords ?? 500;
    const { sessionTimeoutMs } = opts;
    this.consumer = kafka.consumer({
      groupId: subscription.groupId,
      readUncommitted: false,
      allowAutoTopicCreation: false,
      sessionTimeout: sessionTimeoutMs,
      rebalanceTimeout: Math.max(30000, sessionTimeoutMs),
      heartbeatInterval: Math.max(500, Math.floor(sessionTimeoutMs / 10)),
      maxWaitTimeInMs: 100,
      // Room for about a batch of typical records (~200 bytes each) per partition, and two partitions per fetch:
      // kafkajs decodes a whole fetch response at once on this thread, and smaller responses interleave that with
      // handing batches on.
      maxBytesPerPartition: fetchBytes(this.max),
      maxBytes: Math.min(32 << 20, Math.max(8 << 20, 2 * fetchBytes(this.max))),
      retry: { retries: 8, restartOnFailure: async () => true },
    });
    this.consumer.on(this.consumer.events.GROUP_JOIN, (e) => {
      this.generation++;
      this.assigned = Object.entries(e.payload.memberAssignment).flatMap(([topic, ps]) =>
        ps.map((partition) => ({ topic, partition })),
      );
    });
    this.done = new Promise<void>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    this.done.catch(() => {});
    this.consumer.on(this.consumer.events.CRASH, (e) => {
      if (!e.payload.restart) {
        this.fatal ??= toEdrError(e.payload.error, 'consumer crashed', this.opts.access);
        void this.stop();
      }
    });
  }

  /** Connects, subscribes and starts fetching; the group assigns partitions from here on. */
  async join(): Promise<void> {
    await kafkaCall('connecting consumer', () => this.consumer.connect(), this.opts.access);
    await kafkaCall(
      'subscribing',
      () =>
        this.consumer.subscribe({
          topics: this.subscription.topics,
          fromBeginning: this.subscription.start !== 'latest',
        }),
      this.opts.access,
    );
    await this.consumer.run({
      autoCommit: this.opts.mode === 'commit',
      // Commit as soon as anything is resolved: a resolved offset is one whose work is done.
      autoCommitThreshold: 1,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: this.subscription.partitionConcurrency ?? 1,
      eachBatch: (payload) => this.eachBatch(payload),
    });
  }

  /** Partitions this member owns now. */
  assignments(): Array<{ topic: string; partition: number }> {
    return [...this.assigned];
  }

  /** Lets the slices in hand finish, leaves the group, runs `onStop`; the same promise for every call. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      // Jobs finish the slice in hand (its transaction commits or aborts) before the consumer leaves.
      while (this.jobs.size > 0) {
        for (const j of this.jobs.values()) j.abort.abort();
        await Promise.all([...this.jobs.values()].map((j) => j.promise));
      }
      await this.consumer
        .disconnect()
        .catch((err) => this.opts.log.warn('consumer disconnect failed', { err }));
      await this.opts.onStop?.();
      this.assigned = [];
      if (this.fatal === undefined) this.settle.resolve();
      else this.settle.reject(this.fatal);
    })();
    return this.stopping;
  }

  private fail(err: unknown): void {
    this.fatal ??= err;
    setImmediate(() => void this.stop());
  }

  private resumeQuietly(topic: string, partition: number): void {
    try {
      this.consumer.resume([{ topic, partitions: [partition] }]);
    } catch (err) {
      this.opts.log.debug('resume after a detached batch failed', { err });
    }
  }

  private async eachBatch(payload: EachBatchPayload): Promise<void> {
    const { batch } = payload;
    if (this.fatal !== undefined || this.stopping !== undefined || batch.messages.length === 0) return;
    const { topic, partition } = batch;
    const records = batch.messages.map((m) => toInRecord(topic, partition, m));
    // kafkajs's Batch keeps the offset the fetch asked for (untyped), and drops what precedes it.
    const fetched: Fetched = {
      records,
      from: Number((batch as { fetchedOffset?: string }).fetchedOffset ?? records[0]!.offset),
    };
    if (this.opts.mode !== 'detached') {
      // Stopped or revoked (isStale: a seek moved the position): the rest is fetched again.
      await this.runSlices(
        fetched,
        topic,
        partition,
        payload,
        (o) => payload.resolveOffset(String(o)),
        () => !payload.isRunning() || payload.isStale(),
      );
      return;
    }
    const key = jobKey(topic, partition);
    const running = this.jobs.get(key);
    if (running !== undefined) {
      if (running.startedIn !== this.generation) {
        // After a rebalance: the job's end decides where to read from, so this batch is dropped and fetched
        // again from there.
        await running.promise;
        return;
      }
      running.queue.push(fetched);
      payload.resolveOffset(batch.lastOffset());
      if (running.queue.length >= PREFETCH) this.consumer.pause([{ topic, partitions: [partition] }]);
      return;
    }
    // kafkajs moves on past this batch; the job seeks back if it does not finish it.
    payload.resolveOffset(batch.lastOffset());
    const job: Job = {
      queue: [],
      startedIn: this.generation,
      abort: new AbortController(),
      promise: Promise.resolve(),
    };
    job.promise = this.runJob(job, fetched, topic, partition, payload);
    this.jobs.set(key, job);
  }

  /** A detached job: works through `first` and then the batches queued to it, until one is left unfinished. */
  private async runJob(
    job: Job,
    first: Fetched,
    topic: string,
    partition: number,
    payload: EachBatchPayload,
  ): Promise<void> {
    let current = first;
    let next = first.records[0]!.offset;
    let finished = false;
    try {
      for (;;) {
        const r = await this.runSlices(
          current,
          topic,
          partition,
          payload,
          () => {},
          () => job.abort.signal.aborted,
        );
        next = r.next;
        if (next <= current.records[current.records.length - 1]!.offset || r.rebalancing) break;
        if (job.abort.signal.aborted || this.fatal !== undefined || this.generation !== job.startedIn) break;
        const queued = job.queue.shift();
        if (queued === undefined) {
          finished = true;
          break;
        }
        current = queued;
        if (job.queue.length === PREFETCH - 1) this.resumeQuietly(topic, partition);
      }
    } catch (err) {
      this.fail(err);
    } finally {
      // Synchronous from here on: no batch can be queued to this job once it is gone from `jobs`.
      this.jobs.delete(jobKey(topic, partition));
      if (this.fatal === undefined && (!finished || this.generation !== job.startedIn)) {
        try {
          this.consumer.seek({ topic, partition, offset: String(next) });
        } catch (err) {
          this.opts.log.debug('seek after a detached batch failed (partition no longer assigned)', { err });
        }
      }
      this.resumeQuietly(topic, partition);
    }
  }

  /**
   * Works through a fetched batch slice by slice. Returns the offset after the last record finished (the first
   * one of the batch when none was).
   */
  private async runSlices(
    { records, from }: Fetched,
    topic: string,
    partition: number,
    payload: EachBatchPayload,
    resolve: (offset: number) => void,
    halted: () => boolean,
  ): Promise<{ next: number; rebalancing: boolean }> {
    const max = this.max;
    let next = records[0]!.offset;
    let rebalancing = false;
    const ac = new AbortController();
    const signal = ac.signal;
    const watch = setInterval(() => {
      if (halted()) ac.abort();
      // kafkajs heartbeats only between batches: keep the membership alive while a slow slice runs, and learn
      // of a rebalance so the loop below yields after the slice in hand.
      payload.heartbeat().catch((err: unknown) => {
        rebalancing = true;
        // A slice that may run for minutes (a sink retrying through an outage) is given up at once, its rest
        // redelivered: the member must rejoin within the rebalance timeout or the group drops it.
        if (REBALANCE_ERRORS.has((err as { type?: string }).type ?? '')) ac.abort();
      });
    }, 500);
    try {
      for (let i = 0; i < records.length; i += max) {
        // Stopping, revoked or rebalancing: the slice in hand was the last; the rest is fetched again.
        if (signal.aborted || rebalancing || this.fatal !== undefined || halted()) break;
        const finished = await this.opts.work({
          records: i === 0 && records.length <= max ? records : records.slice(i, i + max),
          // Past the first slice, the records before it were visible ones.
          fetchedFrom: i === 0 ? from : records[i]!.offset,
          topic,
          partition,
          signal,
          payload,
          generation: this.generation,
          resolve: (offset) => {
            next = offset + 1;
            resolve(offset);
          },
          fail: (err) => this.fail(err),
        });
        if (!finished) break;
        await payload.heartbeat().catch(() => {
          rebalancing = true;
        });
      }
    } finally {
      clearInterval(watch);
    }
    return { next, rebalancing };
  }
}
