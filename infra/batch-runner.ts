/**
 * The one place where a consumed batch meets its handler, shared by both transports: retries with backoff on
 * retryable errors (redelivering only what was not acknowledged), isolates a failing record by re-running the rest
 * one at a time, and parks a record that fails for good on the dead-letter topic.
 */
import { EdrError, errorMessage, isRetryable } from './errors.js';
import { abortableDelay, backoffMs } from './retry.js';
import {
  type Batch,
  deadLetterRecord,
  type HandlerOptions,
  type InRecord,
  type OutRecord,
  type TransformOptions,
} from './transport.js';

export interface RunBatchOptions {
  topic: string;
  partition: number;
  records: readonly InRecord[];
  /** See Batch.fetchedFrom (default: the first record's offset). */
  fetchedFrom?: number | undefined;
  handler(batch: Batch): Promise<void>;
  signal: AbortSignal;
  /** Whether handlers may acknowledge part of a batch (not in transform mode, where outputs go with offsets). */
  partialAck: boolean;
  retryBackoffMs: number;
  /** Parks a record for good. Absent: a non-retryable failure is fatal. */
  deadLetter?: (record: InRecord, err: unknown) => Promise<void>;
  /** Called while waiting, so group membership stays alive during long retries. */
  keepAlive?: () => Promise<void>;
}

/** How many leading records of the batch are done (handled or dead-lettered). Throws only a fatal error. */
export async function runBatch(opts: RunBatchOptions): Promise<number> {
  const { records, signal } = opts;
  let done = 0;
  const backoff = { initialMs: opts.retryBackoffMs, maxMs: 30_000 };
  let failures = 0;
  let isolate = false;
  while (done < records.length && !signal.aborted) {
    const slice = isolate ? records.slice(done, done + 1) : records.slice(done);
    let acked = 0;
    const batch: Batch = {
      topic: opts.topic,
      partition: opts.partition,
      records: slice,
      // Past the first slice, the records before it were visible ones, handled.
      fetchedFrom: done === 0 ? (opts.fetchedFrom ?? slice[0]!.offset) : slice[0]!.offset,
      signal,
      ack(record) {
        if (!opts.partialAck) return;
        const i = slice.indexOf(record);
        if (i + 1 > acked) acked = i + 1;
      },
    };
    try {
      await opts.handler(batch);
      done += slice.length;
      failures = 0;
    } catch (err) {
      done += acked;
      if (signal.aborted) break;
      if (isRetryable(err)) {
        await pause(backoffMs(++failures, backoff), signal, opts.keepAlive);
        continue;
      }
      const bad = records[done];
      if (bad === undefined) continue;
      if (opts.deadLetter !== undefined && slice.length - acked > 1) {
        // Which record is bad? Go on one at a time from the first unacknowledged one.
        isolate = true;
        continue;
      }
      if (opts.deadLetter === undefined) {
        throw new EdrError(
          'EDR_TRANSPORT_HANDLER_FAILED',
          `handler failed for ${bad.topic}/${bad.partition}@${bad.offset}: ${errorMessage(err)}`,
          { cause: err, details: { topic: bad.topic, partition: bad.partition, offset: bad.offset } },
        );
      }
      await opts.deadLetter(bad, err);
      done += 1;
    }
  }
  return done;
}

/** Waits `ms` in pauses of at most a second, keeping group membership alive between them. */
async function pause(ms: number, signal: AbortSignal, keepAlive?: () => Promise<void>): Promise<void> {
  const until = Date.now() + ms;
  while (!signal.aborted && Date.now() < until) {
    await abortableDelay(Math.min(1000, until - Date.now()), signal);
    if (keepAlive) await keepAlive().catch(() => {});
  }
}

/** Where a batch came from, and what a transport gives its runs. */
export interface BatchSource {
  topic: string;
  partition: number;
  records: readonly InRecord[];
  fetchedFrom?: number | undefined;
  signal: AbortSignal;
  keepAlive?: () => Promise<void>;
}

/**
 * A `consume` batch: the handler acknowledges as it goes; a record that fails for good is handed to `park`
 * (which publishes it to the dead-letter topic) when the consumer has one. Returns how many leading records are done.
 */
export function handleBatch(
  opts: HandlerOptions,
  src: BatchSource,
  park: (record: OutRecord) => Promise<void>,
): Promise<number> {
  const dlq = opts.deadLetterTopic;
  return runBatch({
    ...src,
    handler: opts.handler,
    partialAck: true,
    retryBackoffMs: opts.retryBackoffMs ?? 100,
    ...(dlq === undefined ? {} : { deadLetter: (r, err) => park(deadLetterRecord(dlq, r, err)) }),
  });
}

/**
 * A `consumeTransform` batch: the transform's outputs and the dead letters of records that failed for good,
 * to be committed together with the input offsets of the `done` leading records.
 */
export async function transformBatch(
  opts: TransformOptions,
  src: BatchSource,
): Promise<{ done: number; outputs: OutRecord[] }> {
  const outputs: OutRecord[] = [];
  const dlq = opts.deadLetterTopic;
  const done = await runBatch({
    ...src,
    handler: async (batch) => {
      outputs.push(...(await opts.transform(batch)));
    },
    partialAck: false,
    retryBackoffMs: opts.retryBackoffMs ?? 100,
    ...(dlq === undefined
      ? {}
      : {
          deadLetter: async (r, err) => {
            outputs.push(deadLetterRecord(dlq, r, err));
          },
        }),
  });
  return { done, outputs };
}
