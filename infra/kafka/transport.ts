/**
 * The Kafka transport: the only module that imports the Kafka client (kafkajs), so the client can be swapped
 * after measurement without touching a service.
 *
 * Delivery: idempotent producers with acks=all; consumers commit an offset only after the handler covering it
 * resolved; consume-transform-produce runs each input partition's batch in a transaction whose transactional id
 * is derived from that partition, so a new owner of the partition fences a zombie of the old one.
 */
import { readFileSync } from 'node:fs';
import {
  type Admin,
  type Consumer,
  type EachBatchPayload,
  type ICustomPartitioner,
  type IHeaders,
  Kafka,
  type KafkaConfig,
  type Producer as KProducer,
  logLevel,
  type Message,
} from 'kafkajs';
import { z } from 'zod';
import { handleBatch, transformBatch } from '../batch-runner.js';
import { secret } from '../config.js';
import { EdrError, errorMessage } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { partitionFor } from '../partitioner.js';
import type {
  Consumption,
  HandlerOptions,
  InRecord,
  OutRecord,
  PartitionLag,
  PartitionOffset,
  Producer,
  TopicConfig,
  Transaction,
  TransactionalProducer,
  TransformOptions,
  Transport,
} from '../transport.js';

/** Connection settings, as they appear under `kafka:` in every service's config. */
export const kafkaConfigSchema = z.strictObject({
  brokers: z.array(z.string().regex(/^[^\s:]+:\d+$/, 'expected host:port')).min(1, 'at least one broker'),
  clientId: z.string().min(1).default('edr'),
  tls: z
    .union([
      z.boolean(),
      z.strictObject({
        caFile: z.string().optional(),
        certFile: z.string().optional(),
        keyFile: z.string().optional(),
        rejectUnauthorized: z.boolean().default(true),
      }),
    ])
    .default(false),
  sasl: z
    .strictObject({
      mechanism: z.enum(['scram-sha-256', 'scram-sha-512', 'plain']),
      username: z.string().min(1),
      password: secret(),
    })
    .optional(),
  /** Replication factor for topics this transport creates (1 for a single development broker). */
  replicationFactor: z.number().int().min(1).default(1),
  connectionTimeoutMs: z.number().int().positive().default(5000),
  requestTimeoutMs: z.number().int().positive().default(30000),
  /** How long a silent group member keeps its partitions. */
  sessionTimeoutMs: z.number().int().positive().default(10000),
  /**
   * Most record bytes sent in one produce request. A partition's records in a request form one record batch,
   * which the broker refuses above its message.max.bytes (1 MiB by default): larger sends (a burst of alerts in
   * one transaction) go as several requests.
   */
  maxRequestBytes: z.number().int().min(1024).default(900_000),
});
export type KafkaConfigInput = z.input<typeof kafkaConfigSchema>;
export type KafkaTransportConfig = z.output<typeof kafkaConfigSchema>;

const FENCED = new Set([
  'PRODUCER_FENCED',
  'INVALID_PRODUCER_EPOCH',
  'TRANSACTIONAL_ID_AUTHORIZATION_FAILED',
]);

/** kafkajs errors as EdrErrors: fenced producers get their own code; `retriable` carries over. */
function toEdrError(err: unknown, what: string): EdrError {
  if (err instanceof EdrError) return err;
  for (
    let e: unknown = err;
    e instanceof Error;
    e = (e as { cause?: unknown; originalError?: unknown }).originalError ?? e.cause
  ) {
    const type = (e as { type?: string }).type;
    if (type !== undefined && FENCED.has(type)) {
      return new EdrError('EDR_TRANSPORT_FENCED', `${what}: fenced by a newer producer (${type})`, {
        cause: err,
      });
    }
  }
  const retryable = (err as { retriable?: boolean }).retriable === true;
  return new EdrError('EDR_KAFKA', `${what}: ${errorMessage(err)}`, { retryable, cause: err });
}

async function kafkaCall<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw toEdrError(err, what);
  }
}

function toMessage(r: OutRecord): Message {
  const m: Message = { key: r.key, value: r.value };
  if (r.headers) m.headers = r.headers as IHeaders;
  if (r.partition !== undefined) m.partition = r.partition;
  if (r.timestampMs !== undefined) m.timestamp = String(r.timestampMs);
  return m;
}

/** A record's size in a record batch, near enough: its bytes plus per-record and per-header framing. */
function recordBytes(r: OutRecord): number {
  let n = 24 + (r.key?.length ?? 0) + (r.value?.length ?? 0);
  for (const k in r.headers) n += 8 + k.length + (r.headers[k]?.length ?? 0);
  return n;
}

/** `records` in order, cut into runs of at most `maxBytes` (a record larger than that goes alone). */
export function sizedChunks(records: OutRecord[], maxBytes: number): OutRecord[][] {
  const out: OutRecord[][] = [];
  let chunk: OutRecord[] = [];
  let bytes = 0;
  for (const r of records) {
    const n = recordBytes(r);
    if (chunk.length > 0 && bytes + n > maxBytes) {
      out.push(chunk);
      chunk = [];
      bytes = 0;
    }
    chunk.push(r);
    bytes += n;
  }
  if (chunk.length > 0) out.push(chunk);
  return out;
}

function byTopic(records: OutRecord[]): Array<{ topic: string; messages: Message[] }> {
  const map = new Map<string, Message[]>();
  for (const r of records) {
    let list = map.get(r.topic);
    if (list === undefined) {
      list = [];
      map.set(r.topic, list);
    }
    list.push(toMessage(r));
  }
  return [...map].map(([topic, messages]) => ({ topic, messages }));
}

/**
 * Kafka's default mapping, as the Java client and the memory transport compute it (`partitionFor`, which remembers
 * each string key's hash); without a key, round robin over the partitions that have a leader. kafkajs's own
 * partitioner hashed and filtered the partition list for every record.
 */
const keyPartitioner: ICustomPartitioner = () => {
  let counter = Math.floor(Math.random() * 0x7fffffff);
  return ({ partitionMetadata, message }) => {
    if (message.partition !== null && message.partition !== undefined) return message.partition;
    const key = message.key ?? null;
    if (key !== null) return partitionFor(key, partitionMetadata.length, () => 0);
    const available = partitionMetadata.filter((p) => p.leader >= 0);
    const from = available.length > 0 ? available : partitionMetadata;
    counter = (counter + 1) & 0x7fffffff;
    return from[counter % from.length]!.partitionId;
  };
};

const NO_HEADERS: Record<string, Buffer> = Object.freeze({}) as Record<string, Buffer>;

function toInRecord(
  topic: string,
  partition: number,
  m: EachBatchPayload['batch']['messages'][number],
): InRecord {
  // Most records carry no headers: they share one frozen empty object instead of each allocating its own.
  let headers: Record<string, Buffer> = NO_HEADERS;
  const hs = m.headers;
  for (const k in hs) {
    const v = hs[k];
    if (v === undefined) continue;
    const one = Array.isArray(v) ? v[v.length - 1] : v;
    if (one === undefined) continue;
    if (headers === NO_HEADERS) headers = {};
    headers[k] = typeof one === 'string' ? Buffer.from(one) : one;
  }
  return {
    topic,
    partition,
    offset: Number(m.offset),
    key: m.key ?? null,
    value: m.value ?? null,
    headers,
    timestampMs: Number(m.timestamp),
  };
}

function kafkaLog(log: Logger) {
  return () =>
    ({ level, log: entry }: { level: number; log: { message: string } & Record<string, unknown> }) => {
      const { message, timestamp: _t, logger: _l, ...fields } = entry;
      // kafkajs logs retried protocol errors as ERROR; they are warnings until they surface as a thrown error.
      if (level <= logLevel.WARN) log.warn(message, { component: 'kafkajs', ...fields });
      else log.debug(message, { component: 'kafkajs', ...fields });
    };
}

export class KafkaTransport implements Transport {
  private readonly kafka: Kafka;
  private readonly log: Logger;
  private adminClient: Promise<Admin> | undefined;
  private readonly closers = new Set<() => Promise<void>>();

  constructor(
    private readonly config: KafkaTransportConfig,
    log: Logger = createLogger({ component: 'kafka' }),
  ) {
    this.log = log;
    const kc: KafkaConfig = {
      clientId: config.clientId,
      brokers: config.brokers,
      connectionTimeout: config.connectionTimeoutMs,
      requestTimeout: config.requestTimeoutMs,
      logLevel: logLevel.WARN,
      logCreator: kafkaLog(log),
      retry: { initialRetryTime: 100, retries: 8, maxRetryTime: 5000 },
    };
    if (config.tls !== false) kc.ssl = config.tls === true ? true : tlsOptions(config.tls);
    if (config.sasl) {
      const { mechanism, username, password } = config.sasl;
      kc.sasl = { mechanism, username, password: password.reveal() } as KafkaConfig['sasl'];
    }
    this.kafka = new Kafka(kc);
  }

  private admin(): Promise<Admin> {
    this.adminClient ??= (async () => {
      const a = this.kafka.admin();
      await kafkaCall('connecting admin client', () => a.connect());
      this.closers.add(() => a.disconnect());
      return a;
    })();
    return this.adminClient;
  }

  async createTopics(topics: TopicConfig[]): Promise<void> {
    const admin = await this.admin();
    const existing = new Set(await kafkaCall('listing topics', () => admin.listTopics()));
    const missing = topics.filter((t) => !existing.has(t.name));
    if (missing.length === 0) return;
    try {
      await admin.createTopics({
        waitForLeaders: true,
        topics: missing.map((t) => ({
          topic: t.name,
          numPartitions: t.partitions,
          replicationFactor: this.config.replicationFactor,
          configEntries: [
            ...(t.cleanupPolicy ? [{ name: 'cleanup.policy', value: t.cleanupPolicy }] : []),
            ...(t.retentionMs !== undefined ? [{ name: 'retention.ms', value: String(t.retentionMs) }] : []),
          ],
        })),
      });
    } catch (err) {
      // Another process created it between our list and create: that is the idempotent outcome.
      const errors = (err as { errors?: Array<{ type?: string }> }).errors;
      if (!errors?.every((e) => e.type === 'TOPIC_ALREADY_EXISTS')) throw toEdrError(err, 'creating topics');
    }
  }

  async producer(): Promise<Producer> {
    const p = this.kafka.producer({
      idempotent: true,
      allowAutoTopicCreation: false,
      createPartitioner: keyPartitioner,
    });
    await kafkaCall('connecting producer', () => p.connect());
    const close = () => p.disconnect();
    this.closers.add(close);
    return {
      publish: async (records) => {
        for (const chunk of sizedChunks(records, this.config.maxRequestBytes)) {
          await kafkaCall('publishing', () => p.sendBatch({ acks: -1, topicMessages: byTopic(chunk) }));
        }
      },
      close: async () => {
        this.closers.delete(close);
        await close();
      },
    };
  }

  async transactionalProducer(transactionalId: string): Promise<TransactionalProducer> {
    const p = this.kafka.producer({
      transactionalId,
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
      createPartitioner: keyPartitioner,
    });
    await kafkaCall(`connecting transactional producer ${transactionalId}`, () => p.connect());
    // kafkajs initialises the transactional id (InitProducerId, which fences any older producer with this id and
    // settles its open transaction) only at the first transaction: do it now, so fencing happens on creation.
    await kafkaCall(`initialising transactional id ${transactionalId}`, async () =>
      (await p.transaction()).abort(),
    );
    const close = () => p.disconnect();
    this.closers.add(close);
    return transactional(p, transactionalId, this.config.maxRequestBytes, async () => {
      this.closers.delete(close);
      await close();
    });
  }

  async consume(opts: HandlerOptions): Promise<Consumption> {
    return this.member(
      opts,
      'commit',
      async ({ records, fetchedFrom, topic, partition, signal, payload, resolve, fail }) => {
        let dlqProducer: Producer | undefined;
        try {
          const keepAlive = () => payload.heartbeat();
          const done = await handleBatch(
            opts,
            { topic, partition, records, fetchedFrom, signal, keepAlive },
            async (r) => {
              dlqProducer ??= await this.producer();
              await dlqProducer.publish([r]);
            },
          );
          if (done > 0) {
            resolve(records[done - 1]!.offset);
            await kafkaCall('committing offsets', () => payload.commitOffsetsIfNecessary());
          }
          return done === records.length;
        } catch (err) {
          fail(err);
          return false;
        } finally {
          await dlqProducer?.close();
        }
      },
    );
  }

  async consumeTransform(opts: TransformOptions): Promise<Consumption> {
    /**
     * Per partition, its transactional producer and the generation it was initialised in. A partition worked on
     * in a later generation gets a new one: it may have been elsewhere meanwhile, and only initialising the id
     * again waits for (or fences) what the other owner has in flight, after which its committed offset is final.
     * Reusing the old producer read a committed offset that a transaction still completing was about to move.
     */
    const producers = new Map<number, Promise<TransactionalProducer>>();
    const producedIn = new Map<number, number>();
    /**
     * Per partition, the offset after the last transaction this process committed (or found committed). After a
     * rebalance kafkajs restarts a partition it kept from the group's committed offset as it reads it then, which
     * can lag a transaction committed a moment before (the offset markers are written after EndTxn returns):
     * records below this are known done and skipped, or they would be transformed and committed twice.
     */
    const ends = new Map<number, number>();
    const prefix = opts.transactionalIdPrefix ?? opts.groupId;
    if (typeof opts.start === 'object') await this.settleTransactions(opts.topics, prefix);
    return this.member(
      opts,
      opts.overlapFetches === false ? 'transactional' : 'detached',
      async ({
        records: fetched,
        fetchedFrom,
        topic,
        partition,
        signal,
        payload,
        generation,
        resolve,
        fail,
      }) => {
        let txp = producers.get(partition);
        if (txp !== undefined && producedIn.get(partition) !== generation) {
          producers.delete(partition);
          await (await txp.catch(() => undefined))?.close().catch(() => {});
          txp = undefined;
        }
        if (txp === undefined) {
          txp = this.transactionalProducer(`${prefix}-${topic}-${partition}`);
          producers.set(partition, txp);
          producedIn.set(partition, generation);
          try {
            // Initialising the id settles any transaction a previous owner left open: only then is the committed
            // offset final. It may be past what this consumer fetched from (read before that owner committed).
            await txp;
          } catch (err) {
            producers.delete(partition);
            throw err;
          }
          // What this process committed itself still counts: the group's committed offset can read behind it.
          const committed = await this.committedOffset(opts.groupId, topic, partition);
          ends.set(partition, Math.max(ends.get(partition) ?? -1, committed));
        }
        const floor = ends.get(partition) ?? -1;
        const records = fetched[0]!.offset >= floor ? fetched : fetched.filter((r) => r.offset >= floor);
        if (records.length === 0) {
          resolve(fetched[fetched.length - 1]!.offset);
          return true;
        }
        const producer = await txp;
        let transacting = false;
        try {
          const keepAlive = () => payload.heartbeat();
          const { done, outputs } = await transformBatch(opts, {
            topic,
            partition,
            records,
            // Records skipped below the floor were visible: the batch is read from its first record then.
            fetchedFrom: records === fetched ? fetchedFrom : records[0]!.offset,
            signal,
            keepAlive,
          });
          if (done === 0) return false;
          const next = records[done - 1]!.offset + 1;
          transacting = true;
          await producer.transaction(async (tx) => {
            await tx.send(outputs);
            await tx.commitOffsets(opts.groupId, [{ topic, partition, offset: next }]);
          });
          ends.set(partition, next);
          resolve(next - 1);
          return done === records.length;
        } catch (err) {
          const fenced = err instanceof EdrError && err.code === 'EDR_TRANSPORT_FENCED';
          const retryable = err instanceof EdrError && err.retryable;
          if (fenced || (retryable && transacting)) {
            // Fenced: another member owns this partition now (or owned it since), and nothing of this batch became
            // visible. A failed transaction: the client does not always know how it ended (a commit whose answer
            // was lost may have been applied). Either way a new producer, created when the partition is next
            // worked on, settles the transactional id and re-reads the committed offset; otherwise the batch
            // could commit twice.
            producers.delete(partition);
            ends.delete(partition);
            await producer.close().catch(() => {});
          }
          if (fenced || retryable) {
            this.log.warn(
              fenced ? 'transactional producer fenced; partition moved' : 'batch failed, will retry',
              {
                topic,
                partition,
                transacting,
                err,
              },
            );
            return false;
          }
          fail(err);
          return false;
        }
      },
      async () => {
        await Promise.all([...producers.values()].map(async (p) => (await p).close().catch(() => {})));
      },
    );
  }

  /**
   * Initialises the transactional id of every partition of `topics` once, which completes or aborts whatever a
   * previous run (killed, say) left in flight under them. Done before a start by timestamp looks for partitions
   * without a committed offset: a commit still completing would look absent, and setting the start offset
   * over it would have that run's work done twice.
   */
  private async settleTransactions(topics: string[], prefix: string): Promise<void> {
    for (const topic of topics) {
      const partitions = await this.endOffsets(topic);
      await Promise.all(
        partitions.map(async ({ partition }) => {
          const p = await this.transactionalProducer(`${prefix}-${topic}-${partition}`);
          await p.close();
        }),
      );
    }
  }

  private async committedOffset(groupId: string, topic: string, partition: number): Promise<number> {
    const admin = await this.admin();
    const [t] = await kafkaCall('fetching committed offsets', () =>
      admin.fetchOffsets({ groupId, topics: [topic] }),
    );
    const p = t?.partitions.find((x) => x.partition === partition);
    return p === undefined ? -1 : Number(p.offset);
  }

  async offsetsForTime(topic: string, timestampMs: number): Promise<PartitionOffset[]> {
    const admin = await this.admin();
    const [at, ends] = await Promise.all([
      kafkaCall('fetching offsets by time', () => admin.fetchTopicOffsetsByTimestamp(topic, timestampMs)),
      this.endOffsets(topic),
    ]);
    return at
      .map((p) => {
        const offset = Number(p.offset);
        const end = ends.find((e) => e.partition === p.partition)?.offset ?? 0;
        return { topic, partition: p.partition, offset: offset < 0 ? end : offset };
      })
      .sort((a, b) => a.partition - b.partition);
  }

  async endOffsets(topic: string): Promise<PartitionOffset[]> {
    const admin = await this.admin();
    const offsets = await kafkaCall('fetching end offsets', () => admin.fetchTopicOffsets(topic));
    return offsets
      .map((p) => ({ topic, partition: p.partition, offset: Number(p.high) }))
      .sort((a, b) => a.partition - b.partition);
  }

  async lag(groupId: string, topic: string): Promise<PartitionLag[]> {
    const admin = await this.admin();
    const [committed, ends] = await Promise.all([
      kafkaCall('fetching committed offsets', () => admin.fetchOffsets({ groupId, topics: [topic] })),
      this.endOffsets(topic),
    ]);
    const mine = committed.find((t) => t.topic === topic)?.partitions ?? [];
    return ends.map(({ partition, offset: end }) => {
      const c = Number(mine.find((p) => p.partition === partition)?.offset ?? -1);
      return { topic, partition, offset: c, committed: c, end, lag: end - Math.max(c, 0) };
    });
  }

  async close(): Promise<void> {
    const all = [...this.closers];
    this.closers.clear();
    await Promise.all(all.map((c) => c().catch(() => {})));
    this.adminClient = undefined;
  }

  /** Sets a fresh group's starting offsets for `start` = timestamp; kafkajs handles earliest and latest. */
  private async applyStart(opts: HandlerOptions | TransformOptions): Promise<void> {
    const start = opts.start;
    if (typeof start !== 'object') return;
    const admin = await this.admin();
    for (const topic of opts.topics) {
      const committed = await kafkaCall('fetching committed offsets', () =>
        admin.fetchOffsets({ groupId: opts.groupId, topics: [topic] }),
      );
      const unset = new Set(
        (committed[0]?.partitions ?? []).filter((p) => Number(p.offset) < 0).map((p) => p.partition),
      );
      if (unset.size === 0) continue;
      const at = (await this.offsetsForTime(topic, start.timestampMs)).filter((p) => unset.has(p.partition));
      await kafkaCall('setting start offsets', () =>
        admin.setOffsets({
          groupId: opts.groupId,
          topic,
          partitions: at.map((p) => ({ partition: p.partition, offset: String(p.offset) })),
        }),
      );
    }
  }

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
  private async member(
    opts: HandlerOptions | TransformOptions,
    mode: 'commit' | 'transactional' | 'detached',
    work: (w: {
      records: InRecord[];
      /** See Batch.fetchedFrom. */
      fetchedFrom: number;
      topic: string;
      partition: number;
      signal: AbortSignal;
      payload: EachBatchPayload;
      /** The group generation (assignment) this member is in now. */
      generation: number;
      resolve: (offset: number) => void;
      fail: (err: unknown) => void;
    }) => Promise<boolean>,
    onStop?: () => Promise<void>,
  ): Promise<Consumption> {
    await this.applyStart(opts);
    const consumer: Consumer = this.kafka.consumer({
      groupId: opts.groupId,
      readUncommitted: false,
      allowAutoTopicCreation: false,
      sessionTimeout: this.config.sessionTimeoutMs,
      rebalanceTimeout: Math.max(30000, this.config.sessionTimeoutMs),
      heartbeatInterval: Math.max(500, Math.floor(this.config.sessionTimeoutMs / 10)),
      maxWaitTimeInMs: 100,
      // Room for about a batch of typical records (~200 bytes each) per partition, and two partitions per fetch:
      // kafkajs decodes a whole fetch response at once on this thread, and smaller responses interleave that with
      // handing batches on (bench, one worker: 4 and 8 MB gave 191,949 and 209,898 events/s, where 10 and 40 MB
      // gave 183,346 and 155,976 in alternating runs).
      maxBytesPerPartition: fetchBytes(opts.maxBatchRecords ?? 500),
      maxBytes: Math.min(32 << 20, Math.max(8 << 20, 2 * fetchBytes(opts.maxBatchRecords ?? 500))),
      retry: { retries: 8, restartOnFailure: async () => true },
    });
    let assigned: Array<{ topic: string; partition: number }> = [];
    let generation = 0;
    consumer.on(consumer.events.GROUP_JOIN, (e) => {
      generation++;
      assigned = Object.entries(e.payload.memberAssignment).flatMap(([topic, ps]) =>
        ps.map((partition) => ({ topic, partition })),
      );
    });
    let fatal: unknown;
    let settle!: { resolve: () => void; reject: (err: unknown) => void };
    const done = new Promise<void>((resolve, reject) => {
      settle = { resolve, reject };
    });
    done.catch(() => {});
    /** Detached jobs by `topic|partition`. */
    const jobs = new Map<
      string,
      { promise: Promise<void>; abort: AbortController; queue: Fetched[]; startedIn: number }
    >();
    const resumeQuietly = (tp: Array<{ topic: string; partitions: number[] }>) => {
      try {
        consumer.resume(tp);
      } catch (err) {
        this.log.debug('resume after a detached batch failed', { err });
      }
    };
    let stopping: Promise<void> | undefined;
    const stop = () => {
      stopping ??= (async () => {
        // Jobs finish the slice in hand (its transaction commits or aborts) before the consumer leaves.
        while (jobs.size > 0) {
          for (const j of jobs.values()) j.abort.abort();
          await Promise.all([...jobs.values()].map((j) => j.promise));
        }
        await consumer.disconnect().catch((err) => this.log.warn('consumer disconnect failed', { err }));
        await onStop?.();
        assigned = [];
        this.closers.delete(stop);
        if (fatal === undefined) settle.resolve();
        else settle.reject(fatal);
      })();
      return stopping;
    };
    const fail = (err: unknown) => {
      fatal ??= err;
      setImmediate(() => void stop());
    };
    consumer.on(consumer.events.CRASH, (e) => {
      if (!e.payload.restart) {
        fatal ??= toEdrError(e.payload.error, 'consumer crashed');
        void stop();
      }
    });
    await kafkaCall('connecting consumer', () => consumer.connect());
    await kafkaCall('subscribing', () =>
      consumer.subscribe({ topics: opts.topics, fromBeginning: opts.start !== 'latest' }),
    );
    const max = opts.maxBatchRecords ?? 500;

    /**
     * Works through a fetched batch slice by slice. Returns the offset after the last record finished (the first
     * one of the batch when none was).
     */
    const runSlices = async (
      { records, from }: Fetched,
      topic: string,
      partition: number,
      payload: EachBatchPayload,
      resolve: (offset: number) => void,
      halted: () => boolean,
    ): Promise<{ next: number; rebalancing: boolean }> => {
      let next = records[0]!.offset;
      let rebalancing = false;
      const ac = new AbortController();
      const signal = ac.signal;
      const watch = setInterval(() => {
        if (halted()) ac.abort();
        // kafkajs heartbeats only between batches: keep the membership alive while a slow slice runs, and learn
        // of a rebalance so the loop below yields after the slice in hand.
        payload.heartbeat().catch(() => {
          rebalancing = true;
        });
      }, 500);
      try {
        for (let i = 0; i < records.length; i += max) {
          // Stopping, revoked or rebalancing: the slice in hand was the last; the rest is fetched again.
          if (signal.aborted || rebalancing || fatal !== undefined || halted()) break;
          const finished = await work({
            records: i === 0 && records.length <= max ? records : records.slice(i, i + max),
            // Past the first slice, the records before it were visible ones.
            fetchedFrom: i === 0 ? from : records[i]!.offset,
            topic,
            partition,
            signal,
            payload,
            generation,
            resolve: (offset) => {
              next = offset + 1;
              resolve(offset);
            },
            fail,
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
    };

    await consumer.run({
      autoCommit: mode === 'commit',
      // Commit as soon as anything is resolved: a resolved offset is one whose work is done.
      autoCommitThreshold: 1,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: opts.partitionConcurrency ?? 1,
      eachBatch: async (payload) => {
        const { batch } = payload;
        if (fatal !== undefined || stopping !== undefined || batch.messages.length === 0) return;
        const { topic, partition } = batch;
        const records = batch.messages.map((m) => toInRecord(topic, partition, m));
        // kafkajs's Batch keeps the offset the fetch asked for (untyped), and drops what precedes it.
        const fetched: Fetched = {
          records,
          from: Number((batch as { fetchedOffset?: string }).fetchedOffset ?? records[0]!.offset),
        };
        if (mode !== 'detached') {
          // Stopped or revoked (isStale: a seek moved the position): the rest is fetched again.
          await runSlices(
            fetched,
            topic,
            partition,
            payload,
            (o) => payload.resolveOffset(String(o)),
            () => !payload.isRunning() || payload.isStale(),
          );
          return;
        }
        const key = `${topic}|${partition}`;
        const tp = [{ topic, partitions: [partition] }];
        const running = jobs.get(key);
        if (running !== undefined) {
          if (running.startedIn !== generation) {
            // After a rebalance: the job's end decides where to read from, so this batch is dropped and fetched
            // again from there.
            await running.promise;
            return;
          }
          running.queue.push(fetched);
          payload.resolveOffset(batch.lastOffset());
          if (running.queue.length >= PREFETCH) consumer.pause(tp);
          return;
        }
        // kafkajs moves on past this batch; the job seeks back if it does not finish it.
        payload.resolveOffset(batch.lastOffset());
        const job = {
          queue: [] as Fetched[],
          startedIn: generation,
          abort: new AbortController(),
          promise: Promise.resolve(),
        };
        job.promise = (async () => {
          let current = fetched;
          let next = records[0]!.offset;
          let finished = false;
          try {
            for (;;) {
              const r = await runSlices(
                current,
                topic,
                partition,
                payload,
                () => {},
                () => job.abort.signal.aborted,
              );
              next = r.next;
              if (next <= current.records[current.records.length - 1]!.offset || r.rebalancing) break;
              if (job.abort.signal.aborted || fatal !== undefined || generation !== job.startedIn) break;
              const queued = job.queue.shift();
              if (queued === undefined) {
                finished = true;
                break;
              }
              current = queued;
              if (job.queue.length === PREFETCH - 1) resumeQuietly(tp);
            }
          } catch (err) {
            fail(err);
          } finally {
            // Synchronous from here on: no batch can be queued to this job once it is gone from `jobs`.
            jobs.delete(key);
            if (fatal === undefined && (!finished || generation !== job.startedIn)) {
              try {
                consumer.seek({ topic, partition, offset: String(next) });
              } catch (err) {
                this.log.debug('seek after a detached batch failed (partition no longer assigned)', { err });
              }
            }
            resumeQuietly(tp);
          }
        })();
        jobs.set(key, job);
      },
    });
    this.closers.add(stop);
    return { assignments: () => [...assigned], stop, done };
  }
}

/**
 * Batches of a partition a detached job may have waiting besides the one in hand: one keeps the next at hand when
 * a batch ends without holding much more of a partition in memory.
 */
const PREFETCH = 1;

/** A fetched batch of one partition: its records, and the offset the fetch asked for (Batch.fetchedFrom). */
interface Fetched {
  records: InRecord[];
  from: number;
}

/** Bytes to fetch per partition for batches of `records` records. */
function fetchBytes(records: number): number {
  return Math.min(16 << 20, Math.max(1 << 20, records * 200));
}

/** Whether a transaction failed only because the previous one of this id was still completing. */
function concurrentTransactions(err: unknown): boolean {
  for (
    let e: unknown = err;
    e instanceof Error;
    e = (e as { originalError?: unknown }).originalError ?? e.cause
  ) {
    if ((e as { type?: string }).type === 'CONCURRENT_TRANSACTIONS') return true;
  }
  return false;
}

function transactional(
  p: KProducer,
  id: string,
  maxRequestBytes: number,
  close: () => Promise<void>,
): TransactionalProducer {
  // kafkajs allows one open transaction per producer: queue them.
  let queue: Promise<unknown> = Promise.resolve();
  return {
    transaction<T>(work: (tx: Transaction) => Promise<T>): Promise<T> {
      // The broker refuses a new transaction while the previous one's markers are still being written
      // (CONCURRENT_TRANSACTIONS): that one is aborted, nothing of it is visible, and it is run again shortly.
      // Not when the commit itself failed (the broker answers a commit still completing the same way, so the
      // outcome is unknown and running it again could commit it twice), nor when the abort failed (the producer
      // is stuck): that error goes to the caller, marked EDR_TRANSPORT_TXN_OUTCOME_UNKNOWN (retryable: start over
      // with a new producer, whose initialisation settles the transaction, and read the committed offset).
      const run = async () => {
        for (let attempt = 1; ; attempt++) {
          try {
            return await once();
          } catch (err) {
            const unknown =
              err instanceof EdrError &&
              (err.code === 'EDR_TRANSPORT_TXN_OUTCOME_UNKNOWN' || err.code === 'EDR_TRANSPORT_TXN_STATE');
            if (attempt >= 10 || unknown || !concurrentTransactions(err)) throw err;
            await new Promise((r) => setTimeout(r, 10 * attempt));
          }
        }
      };
      const once = async () => {
        let tx: Awaited<ReturnType<KProducer['transaction']>>;
        try {
          tx = await p.transaction();
        } catch (err) {
          // A producer whose last abort did not complete is stuck (kafkajs: "in state ABORTING"): nothing of a
          // transaction that did not begin is visible, and a new producer is the way on.
          const e = toEdrError(err, `beginning transaction ${id}`);
          if (e.code === 'EDR_TRANSPORT_FENCED') throw e;
          throw new EdrError('EDR_TRANSPORT_TXN_STATE', e.message, { retryable: true, cause: err });
        }
        let committing = false;
        try {
          const result = await work({
            send: async (records) => {
              for (const chunk of sizedChunks(records, maxRequestBytes)) {
                await kafkaCall('sending in transaction', () =>
                  tx.sendBatch({ acks: -1, topicMessages: byTopic(chunk) }),
                );
              }
            },
            commitOffsets: async (groupId, offsets) => {
              const topics = new Map<string, Array<{ partition: number; offset: string }>>();
              for (const o of offsets) {
                const list = topics.get(o.topic) ?? [];
                list.push({ partition: o.partition, offset: String(o.offset) });
                topics.set(o.topic, list);
              }
              await kafkaCall('committing offsets in transaction', () =>
                tx.sendOffsets({
                  consumerGroupId: groupId,
                  topics: [...topics].map(([topic, partitions]) => ({ topic, partitions })),
                }),
              );
            },
          });
          committing = true;
          await kafkaCall(`committing transaction ${id}`, () => tx.commit());
          return result;
        } catch (err) {
          const aborted =
            !tx.isActive() ||
            (await tx.abort().then(
              () => true,
              () => false,
            ));
          const e = toEdrError(err, `transaction ${id}`);
          if ((committing || !aborted) && e.code !== 'EDR_TRANSPORT_FENCED') {
            throw new EdrError(
              'EDR_TRANSPORT_TXN_OUTCOME_UNKNOWN',
              `transaction ${id} ended in an unknown state: ${e.message}`,
              {
                retryable: true,
                cause: err,
              },
            );
          }
          throw e;
        }
      };
      const r = queue.then(run, run);
      queue = r.catch(() => {});
      return r;
    },
    close,
  };
}

function tlsOptions(tls: {
  caFile?: string | undefined;
  certFile?: string | undefined;
  keyFile?: string | undefined;
  rejectUnauthorized: boolean;
}) {
  // Read once, when the transport is made: a missing file is a clear startup error.
  const read = (f: string | undefined) => (f === undefined ? undefined : readFileSyncChecked(f));
  return {
    ca: read(tls.caFile),
    cert: read(tls.certFile),
    key: read(tls.keyFile),
    rejectUnauthorized: tls.rejectUnauthorized,
  };
}

function readFileSyncChecked(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new EdrError('EDR_CONFIG_TLS_FILE', `cannot read TLS file ${file}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}
