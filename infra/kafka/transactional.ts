/**
 * Transactions on a kafkajs transactional producer: one open at a time, retried while the previous one of the id
 * is still completing, and failures classified by what the caller must do next.
 */
import type { Producer as KProducer } from 'kafkajs';
import { EdrError } from '../errors.js';
import { retry } from '../retry.js';
import {
  deadLetterHeaders,
  type OutRecord,
  type PartitionOffset,
  type Transaction,
  type TransactionalProducer,
} from '../transport.js';
import { concurrentTransactions, kafkaCall, refusedAsTooLarge, toEdrError } from './errors.js';
import { byTopic, sizedChunks } from './records.js';

// The records of the request the broker refused as too large, by the error it refused them with.
const refused = new WeakMap<object, OutRecord[]>();

/**
 * The records sent in the request a transaction's failure `err` was the broker's refusal of as too large (or
 * invalid); the transaction is aborted. Undefined for any other failure.
 */
export function refusedRecords(err: unknown): OutRecord[] | undefined {
  return typeof err === 'object' && err !== null ? refused.get(err) : undefined;
}

/**
 * Transactions on `p`, a connected kafkajs producer whose transactional id `id` is initialised; sends are cut to
 * `maxRequestBytes` per request. `close` disconnects the producer.
 */
export function transactional(
  p: KProducer,
  id: string,
  maxRequestBytes: number,
  principal: string,
  close: () => Promise<void>,
): TransactionalProducer {
  const access = (operation: 'WRITE' | 'READ', more: { topics?: string[]; groupId?: string } = {}) => ({
    principal,
    operation,
    transactionalId: id,
    ...more,
  });
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
      const run = () =>
        retry(() => once(), {
          backoff: { initialMs: 10, maxMs: 90, jitter: 'none' },
          maxAttempts: 10,
          retryIf: (err) => {
            const unknown =
              err instanceof EdrError &&
              (err.code === 'EDR_TRANSPORT_TXN_OUTCOME_UNKNOWN' || err.code === 'EDR_TRANSPORT_TXN_STATE');
            return !unknown && concurrentTransactions(err);
          },
        });
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
                const topicMessages = byTopic(chunk);
                try {
                  await kafkaCall(
                    'sending in transaction',
                    () => tx.sendBatch({ acks: -1, topicMessages }),
                    access('WRITE', { topics: topicMessages.map((t) => t.topic) }),
                  );
                } catch (err) {
                  if (refusedAsTooLarge(err) !== undefined) refused.set(err as object, chunk);
                  throw err;
                }
              }
            },
            commitOffsets: async (groupId, offsets) => {
              const topics = new Map<string, Array<{ partition: number; offset: string }>>();
              for (const o of offsets) {
                const list = topics.get(o.topic) ?? [];
                list.push({ partition: o.partition, offset: String(o.offset) });
                topics.set(o.topic, list);
              }
              await kafkaCall(
                'committing offsets in transaction',
                () =>
                  tx.sendOffsets({
                    consumerGroupId: groupId,
                    topics: [...topics].map(([topic, partitions]) => ({ topic, partitions })),
                  }),
                access('READ', { topics: [...topics.keys()], groupId }),
              );
            },
          });
          committing = true;
          await kafkaCall(`committing transaction ${id}`, () => tx.commit(), access('WRITE'));
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

/**
 * A consume-transform batch's outputs and input offset in one transaction on `producer`. A record the broker
 * refuses as too large (MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE, INVALID_RECORD: the alerts topic's
 * max.message.bytes, say) aborts the transaction, and nothing of it is visible. It is run again with the records
 * of the refused request sent one per request, which tells the one refused, then with that record replaced by a
 * dead letter saying why (its value left out if the dead-letter topic refuses it too): the batch's other outputs,
 * the dead letter and the offset still commit together, and the worker goes on. Without a dead-letter topic the
 * refusal is the batch's error, as before.
 */
export async function transactOutputs(
  producer: TransactionalProducer,
  outputs: OutRecord[],
  commit: { groupId: string; offset: PartitionOffset },
  deadLetterTopic: string | undefined,
  onRefused: (record: OutRecord, reason: string) => void,
): Promise<void> {
  let records = outputs;
  const alone = new Set<OutRecord>();
  // Each refused record costs two runs (find it, replace it); a dead letter refused in turn, two more.
  for (let runs = 0; ; runs++) {
    try {
      await producer.transaction(async (tx) => {
        let run: OutRecord[] = [];
        for (const r of records) {
          if (!alone.has(r)) {
            run.push(r);
            continue;
          }
          if (run.length > 0) await tx.send(run);
          run = [];
          await tx.send([r]);
        }
        if (run.length > 0) await tx.send(run);
        await tx.commitOffsets(commit.groupId, [commit.offset]);
      });
      return;
    } catch (err) {
      const sent = refusedRecords(err);
      if (sent === undefined || deadLetterTopic === undefined || runs >= 4 + 4 * outputs.length) throw err;
      if (sent.length > 1) {
        for (const r of sent) alone.add(r);
        continue;
      }
      const r = sent[0]!;
      // A dead letter without its value refused as well: nothing smaller to send.
      if (r.topic === deadLetterTopic && r.value === null) throw err;
      const reason = `the broker refused a ${r.value?.length ?? 0}-byte record for ${r.topic} as too large (${refusedAsTooLarge(err)})`;
      const dead = refusedDeadLetter(deadLetterTopic, r, reason);
      onRefused(r, reason);
      alone.add(dead);
      records = records.map((x) => (x === r ? dead : x));
    }
  }
}

/** The dead letter of an output record the broker refused; a refused dead letter goes again without its value. */
function refusedDeadLetter(topic: string, r: OutRecord, reason: string): OutRecord {
  if (r.topic === topic) return { ...r, value: null, headers: { ...r.headers, 'edr-value-omitted': 'true' } };
  return {
    topic,
    key: r.key,
    value: r.value,
    headers: {
      ...r.headers,
      [deadLetterHeaders.error]: reason,
      [deadLetterHeaders.errorCode]: 'EDR_TRANSPORT_RECORD_TOO_LARGE',
      [deadLetterHeaders.topic]: r.topic,
    },
  };
}
