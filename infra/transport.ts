/**
 * What the services need from a message log, and no more. Two implementations keep one contract
 * (test/harness/transport-contract.ts): Kafka (infra/kafka/transport.ts, fleet mode) and an in-process twin
 * (infra/memory-transport.ts, the all-in-one mode and unit tests).
 *
 * Acknowledgement: a consumed record's offset is committed only after the work it covers is done:
 * the handler resolved, or the transaction holding its outputs committed.
 */
import { EdrError, errorMessage } from './errors.js';

export type HeaderValue = string | Buffer;

export interface OutRecord {
  topic: string;
  key: string | Buffer | null;
  value: Buffer | null;
  headers?: Record<string, HeaderValue>;
  /** Explicit partition; otherwise chosen from the key (murmur2, as Kafka's Java client does). */
  partition?: number;
  timestampMs?: number;
}

export interface InRecord {
  topic: string;
  partition: number;
  offset: number;
  key: Buffer | null;
  value: Buffer | null;
  headers: Record<string, Buffer>;
  timestampMs: number;
}

export interface TopicConfig {
  name: string;
  partitions: number;
  cleanupPolicy?: 'delete' | 'compact';
  /** -1 keeps forever. */
  retentionMs?: number;
  /** The topic's max.message.bytes (default: the broker's): a larger record is refused. */
  maxMessageBytes?: number;
  /** The topic's min.insync.replicas (default: the broker's): an acks=all write fails with fewer in sync. */
  minInsyncReplicas?: number;
}

export interface PartitionOffset {
  topic: string;
  partition: number;
  offset: number;
}

export interface PartitionLag extends PartitionOffset {
  /** The next offset to be written (high watermark, or last stable offset for read-committed). */
  end: number;
  /** The group's committed offset (-1: none yet). */
  committed: number;
  lag: number;
}

/** The records of one partition handed to a handler together, in offset order. */
export interface Batch {
  readonly topic: string;
  readonly partition: number;
  readonly records: readonly InRecord[];
  /**
   * Where the partition was read from for this batch: a read-committed reader sees no record in
   * [fetchedFrom, records[0].offset), the offsets between being transaction markers or aborted records.
   * records[0].offset when the transport cannot say.
   */
  readonly fetchedFrom: number;
  /**
   * Aborted when the work is no longer this member's (partition revoked, consumer stopping):
   * a handler may stop early; what it did not finish is redelivered.
   */
  readonly signal: AbortSignal;
  /** Marks this record and all before it in the batch done, so a failure later in the batch does not redo them. */
  ack(record: InRecord): void;
}

export type StartPosition = 'earliest' | 'latest' | { timestampMs: number };

export interface ConsumeOptions {
  groupId: string;
  topics: string[];
  /** Where a group with no committed offset for a partition starts. Default earliest. */
  start?: StartPosition;
  /** Upper bound of records per batch. */
  maxBatchRecords?: number;
  /**
   * Partitions whose batches are handled at the same time (default 1). Each partition stays in offset order;
   * more overlap the broker round trips of different partitions (transactions, commits).
   */
  partitionConcurrency?: number;
  /**
   * Where a record whose handling failed with a non-retryable error is parked (with headers saying why and from
   * where) before the consumer moves on. Without it, such an error stops the consumption and `done` rejects.
   */
  deadLetterTopic?: string;
  /** Pause between attempts of a batch that failed with a retryable error; doubles up to 30 s. */
  retryBackoffMs?: number;
}

export interface HandlerOptions extends ConsumeOptions {
  /** Resolve = done (offsets committed); throw retryable = try again; throw otherwise = dead-letter (see above). */
  handler(batch: Batch): Promise<void>;
}

export interface TransformOptions extends ConsumeOptions {
  /**
   * Maps a batch to the records to publish. Outputs and the batch's input offsets are committed in one
   * transaction: a read-committed reader sees either all of a batch's outputs, with its offsets committed, or none.
   */
  transform(batch: Batch): Promise<OutRecord[]>;
  /** Stable prefix of transactional ids; one id per input partition fences a zombie owner of that partition. */
  transactionalIdPrefix?: string;
  /**
   * Whether a fetched batch may be worked on while the client fetches other partitions (default true). False
   * keeps each fetch's batches in the fetch loop: slower, the simplest ordering (replay uses it).
   */
  overlapFetches?: boolean;
}

export interface Consumption {
  /** Partitions this member currently owns. */
  assignments(): Array<{ topic: string; partition: number }>;
  /** Finishes the batch in hand (committing it), leaves the group, resolves when stopped. */
  stop(): Promise<void>;
  /** Settles when the consumption ends: resolves on stop(), rejects on a fatal error. */
  readonly done: Promise<void>;
}

export interface Producer {
  /** Resolves when every record is acknowledged by all in-sync replicas (idempotent, acks all). */
  publish(records: OutRecord[]): Promise<void>;
  close(): Promise<void>;
}

export interface Transaction {
  send(records: OutRecord[]): Promise<void>;
  /** Commits these consumer offsets (the next offset to read) for the group with the transaction. */
  commitOffsets(groupId: string, offsets: PartitionOffset[]): Promise<void>;
}

export interface TransactionalProducer {
  /** Runs `work` in a transaction: committed when it resolves, aborted when it throws (the error is rethrown). */
  transaction<T>(work: (tx: Transaction) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

export interface Transport {
  /** Creates the topics that do not exist yet; existing ones are left as they are. */
  createTopics(topics: TopicConfig[]): Promise<void>;
  /** Which of `names` do not exist (or this client may not see). */
  missingTopics(names: string[]): Promise<string[]>;
  producer(): Promise<Producer>;
  transactionalProducer(transactionalId: string): Promise<TransactionalProducer>;
  consume(opts: HandlerOptions): Promise<Consumption>;
  consumeTransform(opts: TransformOptions): Promise<Consumption>;
  /** Per partition, the first offset whose timestamp is at or after `timestampMs` (the end offset if none). */
  offsetsForTime(topic: string, timestampMs: number): Promise<PartitionOffset[]>;
  /** Per partition, the next offset to be written. */
  endOffsets(topic: string): Promise<PartitionOffset[]>;
  /** The group's committed offsets against the end of each partition. */
  lag(groupId: string, topic: string): Promise<PartitionLag[]>;
  close(): Promise<void>;
}

/** Headers a dead-lettered record carries, beside its original key, value and headers. */
export const deadLetterHeaders = {
  error: 'edr-error',
  errorCode: 'edr-error-code',
  topic: 'edr-source-topic',
  partition: 'edr-source-partition',
  offset: 'edr-source-offset',
} as const;

/** The dead-letter record for `record`: original key, value and headers, plus why and from where. */
export function deadLetterRecord(topic: string, record: InRecord, err: unknown): OutRecord {
  return {
    topic,
    key: record.key,
    value: record.value,
    headers: {
      ...record.headers,
      [deadLetterHeaders.error]: errorMessage(err),
      [deadLetterHeaders.errorCode]: err instanceof EdrError ? err.code : 'EDR_UNKNOWN',
      [deadLetterHeaders.topic]: record.topic,
      [deadLetterHeaders.partition]: String(record.partition),
      [deadLetterHeaders.offset]: String(record.offset),
    },
  };
}

/**
 * Services do not create topics (their principals may not): one that starts before `edr topics create` ran says
 * so at once, instead of a client retrying "does not host this topic-partition" for half a minute. Retryable: a
 * collector keeps spooling and tries again, the operator may be creating them now.
 */
export async function requireTopics(transport: Transport, names: string[], who: string): Promise<void> {
  const missing = await transport.missingTopics([...new Set(names)]);
  if (missing.length === 0) return;
  throw new EdrError(
    'EDR_TOPICS_MISSING',
    `${who}: topic${missing.length > 1 ? 's' : ''} ${missing.join(', ')} missing: create ` +
      'them with `edr topics create` (as the operator principal), or set the service to create its topics',
    { retryable: true },
  );
}
