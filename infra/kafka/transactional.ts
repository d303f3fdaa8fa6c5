/**
 * Transactions on a kafkajs transactional producer: one open at a time, retried while the previous one of the id
 * is still completing, and failures classified by what the caller must do next.
 */
import type { Producer as KProducer } from 'kafkajs';
import { EdrError } from '../errors.js';
import { retry } from '../retry.js';
import type { Transaction, TransactionalProducer } from '../transport.js';
import { concurrentTransactions, kafkaCall, toEdrError } from './errors.js';
import { byTopic, sizedChunks } from './records.js';

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
                await kafkaCall(
                  'sending in transaction',
                  () => tx.sendBatch({ acks: -1, topicMessages }),
                  access('WRITE', { topics: topicMessages.map((t) => t.topic) }),
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
