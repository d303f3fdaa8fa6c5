/**
 * Delivery of one message: sent under the instance's rate limit and timeout, retried while the failure is
 * retryable (for as long as it lasts, unless `retry.maxAttempts` sets a budget), else parked on the undeliverable
 * topic. Either way its alerts are journalled as handled before the caller lets their offsets commit.
 */
import { EdrError, errorMessage } from '../../infra/errors.js';
import type { Logger } from '../../infra/log.js';
import { abortableDelay, retry } from '../../infra/retry.js';
import { deadLetterRecord, type InRecord, type OutRecord, type Producer } from '../../infra/transport.js';
import type { DeliveredStore } from '../delivered-store.js';
import { alertsOf, type Message, type Sink } from '../sink.js';
import type { Outage } from './outage.js';
import type { TokenBucket } from './rate-limit.js';
import {
  backoffOf,
  classify,
  type RetryPolicy,
  retryAfterOf,
  retryDelayMs,
  stopping,
} from './retry-policy.js';

export interface SenderOptions {
  /** The sink instance's name (the `edr-sink` header of what it parks). */
  name: string;
  sink: Sink;
  /** The journal of alerts handled. */
  store: DeliveredStore;
  /** For the undeliverable and dead-letter topics. */
  producer: Producer;
  undeliverableTopic: string;
  bucket: TokenBucket;
  retry: RetryPolicy;
  timeoutMs: number;
  log: Logger;
  /** The instance's outage: logged once and periodically, not per attempt. */
  outage: Outage;
}

export class Sender {
  constructor(private readonly o: SenderOptions) {}

  /**
   * Sends one message with retries; true when delivered, false when parked. `records` holds the record each
   * alert came in (what is parked). Throws (retryable) only when stopping, or when the journal or Kafka cannot
   * record the outcome: then the batch is tried again.
   */
  async deliver(
    message: Message,
    signal: AbortSignal,
    records: ReadonlyMap<string, InRecord>,
  ): Promise<boolean> {
    const policy = this.o.retry;
    const { outage } = this.o;
    let attempts = 0;
    let waiting = 0;
    try {
      await retry(
        async (n) => {
          attempts = n;
          const wait = this.o.bucket.reserve();
          if (wait > 0) await abortableDelay(wait, signal);
          if (signal.aborted) throw stopping();
          await sendWithin(this.o.sink, message, signal, this.o.timeoutMs);
          outage.delivered();
          await this.o.store.add(alertsOf(message).map((a) => a.alertId));
        },
        {
          backoff: backoffOf(policy),
          // Absent: no limit. The batch's offsets stay uncommitted meanwhile, so a stop leaves it to Kafka.
          maxAttempts: policy.maxAttempts,
          signal,
          // A journal that cannot record the outcome fails the batch (tried again), not the message.
          retryIf: (err) => {
            const e = classify(err, false);
            return e.retryable && e.code !== 'EDR_SINK_STATE_WRITE';
          },
          // Retry-After when the peer said, else the backoff.
          delayFor: (err, n) => retryDelayMs(n, retryAfterOf(err), policy),
          onRetry: (err, n, delayMs) => {
            const fresh = waiting === 0 ? alertsOf(message).length : 0;
            waiting += fresh;
            outage.failed(err, fresh);
            this.o.log.debug('delivery failed, retrying', { err, attempt: n, delayMs });
          },
        },
      );
      return true;
    } catch (raw) {
      if (signal.aborted) throw stopping();
      const err = classify(raw, false);
      if (err.code === 'EDR_SINK_STATE_WRITE') throw err;
      await this.#park(message, err, attempts, records);
      return false;
    } finally {
      outage.settled(waiting);
    }
  }

  /** Publishes to Kafka. Kafka being unavailable is never a reason to lose an alert: the batch is tried again. */
  async publish(records: OutRecord[], topic: string): Promise<void> {
    try {
      await this.o.producer.publish(records);
    } catch (err) {
      throw new EdrError('EDR_SINK_PARK_FAILED', `cannot publish to ${topic}: ${errorMessage(err)}`, {
        retryable: true,
        cause: err,
      });
    }
  }

  async #park(
    message: Message,
    err: EdrError,
    attempts: number,
    records: ReadonlyMap<string, InRecord>,
  ): Promise<void> {
    const topic = this.o.undeliverableTopic;
    const out: OutRecord[] = [];
    for (const a of alertsOf(message)) {
      const r = records.get(a.alertId);
      if (r === undefined) continue;
      const rec = deadLetterRecord(topic, r, err);
      // The undeliverable topic is keyed by alert id; the original bytes (full, unredacted event) are kept.
      rec.key = a.alertId;
      rec.headers = { ...rec.headers, 'edr-sink': this.o.name, 'edr-attempts': String(attempts) };
      out.push(rec);
    }
    await this.publish(out, topic);
    await this.o.store.add(alertsOf(message).map((a) => a.alertId));
    this.o.log.error('alerts parked as undeliverable', { err, alerts: out.length, attempts, topic });
  }
}

/** One send of `message` by `sink`, within `timeoutMs`; failures classified (a stop is `stopping()`). */
export async function sendWithin(
  sink: Sink,
  message: Message,
  signal: AbortSignal,
  timeoutMs: number,
): Promise<void> {
  const timeout = AbortSignal.timeout(timeoutMs);
  const both = AbortSignal.any([signal, timeout]);
  const sent = sink.send(message, both);
  // A client that ignores the signal (nodemailer) still cannot hold the loop past the timeout.
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(both.reason);
    both.addEventListener('abort', onAbort, { once: true });
  });
  sent.catch(() => {});
  aborted.catch(() => {});
  try {
    await Promise.race([sent, aborted]);
  } catch (err) {
    if (signal.aborted) throw stopping();
    throw classify(err, timeout.aborted);
  } finally {
    both.removeEventListener('abort', onAbort!);
  }
}
