/**
 * The Kafka transport. It and the modules beside it (errors, records, transactional, group-member; not config) are
 * the only ones that import the Kafka client (kafkajs), so the client can be swapped after measurement without
 * touching a service.
 *
 * Delivery: idempotent producers with acks=all; consumers commit an offset only after the handler covering it
 * resolved; consume-transform-produce runs each input partition's batch in a transaction whose transactional id
 * is derived from that partition, so a new owner of the partition fences a zombie of the old one.
 */
import { readFileSync } from 'node:fs';
import kafkajs, { type Admin, Kafka, type KafkaConfig, logLevel } from 'kafkajs';
import { handleBatch, transformBatch } from '../batch-runner.js';
import { EdrError, errorMessage, isRetryable } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { retry, settled } from '../retry.js';
import type {
  Consumption,
  HandlerOptions,
  PartitionLag,
  PartitionOffset,
  Producer,
  TopicConfig,
  TransactionalProducer,
  TransformOptions,
  Transport,
} from '../transport.js';
import type { KafkaTransportConfig } from './config.js';
import { type Access, kafkaCall, toEdrError } from './errors.js';
import { GroupMember, type MemberMode, type Slice } from './group-member.js';
import { bearerTokens, jwtSubject } from './oauth.js';
import { byTopic, keyPartitioner, sizedChunks } from './records.js';
import { transactional, transactOutputs } from './transactional.js';

/** kafkajs's log lines into ours. */
function kafkaLog(log: Logger) {
  return () =>
    ({ level, log: entry }: { level: number; log: { message: string } & Record<string, unknown> }) => {
      const { message, timestamp: _t, logger: _l, ...fields } = entry;
      // kafkajs logs retried protocol errors as ERROR; they are warnings until they surface as a thrown error.
      if (level <= logLevel.WARN) log.warn(message, { component: 'kafkajs', ...fields });
      else log.debug(message, { component: 'kafkajs', ...fields });
    };
}

/** A topic as the cluster has it (`edr topics create` compares it with the topics table). */
export interface TopicDescription {
  name: string;
  partitions: number;
  replicationFactor: number;
  cleanupPolicy: string;
  retentionMs: number;
  minInsyncReplicas: number;
}

export class KafkaTransport implements Transport {
  private readonly kafka: Kafka;
  private readonly log: Logger;
  private adminClient: Promise<Admin> | undefined;
  private readonly closers = new Set<() => Promise<void>>();
  /** With OAUTHBEARER: the `sub` of the last token, who the broker takes this client for. */
  private tokenSubject: string | undefined;

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
    if (config.sasl?.mechanism === 'oauthbearer') {
      const tokens = bearerTokens(config.sasl, log);
      kc.sasl = {
        mechanism: 'oauthbearer',
        oauthBearerProvider: async () => {
          try {
            const value = await tokens.token();
            this.tokenSubject = jwtSubject(value);
            return { value };
          } catch (err) {
            // kafkajs asks for the token after the SASL handshake, and a connection left there refuses any other
            // request (ILLEGAL_SASL_STATE): as a connection error, it is dropped and a new one opened. kafkajs
            // retries only what is `retriable` (a 503, a timeout), not a refused client. toEdrError finds the
            // EdrError under kafkajs's wrapping.
            throw Object.assign(new kafkajs.KafkaJSConnectionError(errorMessage(err)), {
              retriable: isRetryable(err),
              cause: err,
            });
          }
        },
      };
    } else if (config.sasl) {
      const { mechanism, username, password } = config.sasl;
      kc.sasl = { mechanism, username, password: password.reveal() } as KafkaConfig['sasl'];
    }
    this.kafka = new Kafka(kc);
  }

  /** Who this client is to the broker, for the message of a refusal. */
  private get principal(): string {
    const sasl = this.config.sasl;
    if (sasl === undefined) return 'this client (no SASL user)';
    if (sasl.mechanism !== 'oauthbearer') return `User:${sasl.username}`;
    return this.tokenSubject !== undefined ? `User:${this.tokenSubject}` : "the OAuth token's subject";
  }

  private access(operation: Access['operation'], more: Omit<Access, 'principal' | 'operation'> = {}): Access {
    return { principal: this.principal, operation, ...more };
  }

  private admin(): Promise<Admin> {
    this.adminClient ??= (async () => {
      const a = this.kafka.admin();
      await kafkaCall('connecting admin client', () => a.connect(), this.access('DESCRIBE'));
      this.closers.add(() => a.disconnect());
      return a;
    })().catch((err: unknown) => {
      // Not kept: the next call connects again (a token endpoint or a broker back from an outage).
      this.adminClient = undefined;
      throw err;
    });
    return this.adminClient;
  }

  async createTopics(topics: TopicConfig[]): Promise<void> {
    const admin = await this.admin();
    const existing = new Set(
      await kafkaCall('listing topics', () => admin.listTopics(), this.access('DESCRIBE')),
    );
    const missing = topics.filter((t) => !existing.has(t.name));
    if (missing.length === 0) return;
    try {
      await admin.createTopics({
        // Waited for below: kafkajs's own wait fails at once when the new topic's metadata has not reached the
        // broker it asks ("does not host this topic-partition"), which happens under load.
        waitForLeaders: false,
        topics: missing.map((t) => ({
          topic: t.name,
          numPartitions: t.partitions,
          replicationFactor: this.config.replicationFactor,
          configEntries: [
            ...(t.cleanupPolicy ? [{ name: 'cleanup.policy', value: t.cleanupPolicy }] : []),
            ...(t.retentionMs !== undefined ? [{ name: 'retention.ms', value: String(t.retentionMs) }] : []),
            ...(t.maxMessageBytes !== undefined
              ? [{ name: 'max.message.bytes', value: String(t.maxMessageBytes) }]
              : []),
            ...(t.minInsyncReplicas !== undefined
              ? [{ name: 'min.insync.replicas', value: String(t.minInsyncReplicas) }]
              : []),
          ],
        })),
      });
    } catch (err) {
      // Another process created it between our list and create: that is the idempotent outcome.
      const errors = (err as { errors?: Array<{ type?: string }> }).errors;
      if (!errors?.every((e) => e.type === 'TOPIC_ALREADY_EXISTS')) {
        throw toEdrError(
          err,
          'creating topics',
          this.access('CREATE', { topics: missing.map((t) => t.name) }),
        );
      }
    }
    const names = missing.map((t) => t.name);
    await settled(async () => {
      const meta = await kafkaCall('waiting for the new topics', () =>
        admin.fetchTopicMetadata({ topics: names }),
      );
      const leaderless = meta.topics.filter((t) => t.partitions.some((p) => p.leader < 0)).map((t) => t.name);
      if (leaderless.length > 0) {
        throw new EdrError('EDR_KAFKA', `no leader yet for ${leaderless.join(', ')}`, { retryable: true });
      }
      // A leader in the metadata may not serve yet ("not the leader for that topic-partition" to a list-offsets
      // request right after): the topic is ready when its offsets can be read.
      for (const name of names) {
        await kafkaCall(`reading the offsets of new topic ${name}`, () => admin.fetchTopicOffsets(name));
      }
    });
  }

  async missingTopics(names: string[]): Promise<string[]> {
    const admin = await this.admin();
    const existing = new Set(await kafkaCall('listing topics', () => admin.listTopics()));
    return names.filter((n) => !existing.has(n));
  }

  /** How the named topics exist on the cluster; a missing topic is absent from the map. */
  async describeTopics(names: string[]): Promise<Map<string, TopicDescription>> {
    const admin = await this.admin();
    const existing = new Set(await kafkaCall('listing topics', () => admin.listTopics()));
    const present = names.filter((n) => existing.has(n));
    const out = new Map<string, TopicDescription>();
    if (present.length === 0) return out;
    const meta = await kafkaCall('describing topics', () => admin.fetchTopicMetadata({ topics: present }));
    const configs = await kafkaCall('describing topic configs', () =>
      admin.describeConfigs({
        includeSynonyms: false,
        resources: present.map((name) => ({
          // kafkajs is CommonJS: this enum is only reachable through its default export.
          type: kafkajs.ConfigResourceTypes.TOPIC,
          name,
          configNames: ['cleanup.policy', 'retention.ms', 'min.insync.replicas'],
        })),
      }),
    );
    for (const t of meta.topics) {
      const entries = configs.resources.find((r) => r.resourceName === t.name)?.configEntries ?? [];
      const value = (n: string) => entries.find((e) => e.configName === n)?.configValue;
      out.set(t.name, {
        name: t.name,
        partitions: t.partitions.length,
        replicationFactor: Math.min(...t.partitions.map((p) => p.replicas.length)),
        cleanupPolicy: value('cleanup.policy') ?? 'delete',
        retentionMs: Number(value('retention.ms') ?? Number.NaN),
        minInsyncReplicas: Number(value('min.insync.replicas') ?? 1),
      });
    }
    return out;
  }

  /** Per partition of `topic`, the node id of its leader now (-1 while it has none), from fresh metadata. */
  async partitionLeaders(topic: string): Promise<Map<number, number>> {
    const admin = await this.admin();
    const meta = await kafkaCall('reading partition leaders', () =>
      admin.fetchTopicMetadata({ topics: [topic] }),
    );
    const out = new Map<number, number>();
    for (const p of meta.topics.find((t) => t.name === topic)?.partitions ?? [])
      out.set(p.partitionId, p.leader);
    return out;
  }

  async producer(): Promise<Producer> {
    const p = this.kafka.producer({
      idempotent: true,
      allowAutoTopicCreation: false,
      createPartitioner: keyPartitioner,
    });
    await kafkaCall('connecting producer', () => p.connect(), this.access('WRITE'));
    const close = () => p.disconnect();
    this.closers.add(close);
    return {
      publish: async (records) => {
        for (const chunk of sizedChunks(records, this.config.maxRequestBytes)) {
          const topicMessages = byTopic(chunk);
          await kafkaCall(
            'publishing',
            () => p.sendBatch({ acks: -1, topicMessages }),
            this.access('WRITE', {
              topics: topicMessages.map((t) => t.topic),
              clusterOperation: 'IDEMPOTENT_WRITE',
            }),
          );
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
    const access = this.access('WRITE', { transactionalId });
    await kafkaCall(`connecting transactional producer ${transactionalId}`, () => p.connect(), access);
    // kafkajs initialises the transactional id (InitProducerId, which fences any older producer with this id and
    // settles its open transaction) only at the first transaction: do it now, so fencing happens on creation.
    await kafkaCall(
      `initialising transactional id ${transactionalId}`,
      async () => (await p.transaction()).abort(),
      access,
    );
    const close = () => p.disconnect();
    this.closers.add(close);
    return transactional(p, transactionalId, this.config.maxRequestBytes, this.principal, async () => {
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
            // The group coordinator moves when its broker fails ("not available" for the seconds a new leader
            // takes): the commit is tried again, not the consumption ended with the work done.
            await retry(
              () =>
                kafkaCall(
                  'committing offsets',
                  () => payload.commitOffsetsIfNecessary(),
                  this.access('READ', { topics: [topic], groupId: opts.groupId }),
                ),
              { backoff: { initialMs: 250, maxMs: 5000 }, maxAttempts: 30, signal },
            );
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
          await transactOutputs(
            producer,
            outputs,
            { groupId: opts.groupId, offset: { topic, partition, offset: next } },
            opts.deadLetterTopic,
            (r, reason) =>
              this.log.warn('record refused by the broker; dead-lettered', { topic: r.topic, reason }),
          );
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
    const [t] = await kafkaCall(
      'fetching committed offsets',
      () => admin.fetchOffsets({ groupId, topics: [topic] }),
      this.access('DESCRIBE', { topics: [topic], groupId }),
    );
    const p = t?.partitions.find((x) => x.partition === partition);
    return p === undefined ? -1 : Number(p.offset);
  }

  async offsetsForTime(topic: string, timestampMs: number): Promise<PartitionOffset[]> {
    const admin = await this.admin();
    const [at, ends] = await Promise.all([
      kafkaCall(
        'fetching offsets by time',
        () => admin.fetchTopicOffsetsByTimestamp(topic, timestampMs),
        this.access('DESCRIBE', { topics: [topic] }),
      ),
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
    const offsets = await kafkaCall(
      'fetching end offsets',
      () => admin.fetchTopicOffsets(topic),
      this.access('DESCRIBE', { topics: [topic] }),
    );
    return offsets
      .map((p) => ({ topic, partition: p.partition, offset: Number(p.high) }))
      .sort((a, b) => a.partition - b.partition);
  }

  async lag(groupId: string, topic: string): Promise<PartitionLag[]> {
    const admin = await this.admin();
    const [committed, ends] = await Promise.all([
      kafkaCall(
        'fetching committed offsets',
        () => admin.fetchOffsets({ groupId, topics: [topic] }),
        this.access('DESCRIBE', { topics: [topic], groupId }),
      ),
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
      const committed = await kafkaCall(
        'fetching committed offsets',
        () => admin.fetchOffsets({ groupId: opts.groupId, topics: [topic] }),
        this.access('DESCRIBE', { topics: [topic], groupId: opts.groupId }),
      );
      const unset = new Set(
        (committed[0]?.partitions ?? []).filter((p) => Number(p.offset) < 0).map((p) => p.partition),
      );
      if (unset.size === 0) continue;
      const at = (await this.offsetsForTime(topic, start.timestampMs)).filter((p) => unset.has(p.partition));
      await kafkaCall(
        'setting start offsets',
        () =>
          admin.setOffsets({
            groupId: opts.groupId,
            topic,
            partitions: at.map((p) => ({ partition: p.partition, offset: String(p.offset) })),
          }),
        this.access('READ', { topics: [topic], groupId: opts.groupId }),
      );
    }
  }

  /** A group member for `opts` (its start applied first), stopped with the transport. */
  private async member(
    opts: HandlerOptions | TransformOptions,
    mode: MemberMode,
    work: (slice: Slice) => Promise<boolean>,
    onStop?: () => Promise<void>,
  ): Promise<Consumption> {
    await this.applyStart(opts);
    const member = new GroupMember(this.kafka, opts, {
      mode,
      work,
      sessionTimeoutMs: this.config.sessionTimeoutMs,
      access: this.access('READ', { topics: opts.topics, groupId: opts.groupId }),
      log: this.log,
      onStop: async () => {
        await onStop?.();
        this.closers.delete(stop);
      },
    });
    const stop = () => member.stop();
    try {
      await member.join();
    } catch (err) {
      // Refused (a topic it may not read, say) after connecting: its connection is not left open.
      await member.stop();
      throw err;
    }
    this.closers.add(stop);
    return { assignments: () => member.assignments(), stop, done: member.done };
  }
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
