/**
 * A sink's outage as the operator sees it. With no attempt limit a peer that is down for an hour is retried for
 * an hour, so the log says it once when deliveries start failing with retryable errors, then every
 * `reportEveryMs` while they go on, and once when a delivery succeeds again (per attempt it would be noise).
 * `waiting` counts the alerts of the messages being retried: what the outage holds back.
 */
import type { Logger } from '../../infra/log.js';

export interface OutageOptions {
  log: Logger;
  /** Between "still unavailable" lines. */
  reportEveryMs?: number;
  now?: () => number;
}

export class Outage {
  #since: number | undefined;
  #lastReport = 0;
  #failures = 0;
  #waiting = 0;
  readonly #every: number;
  readonly #now: () => number;

  constructor(private readonly o: OutageOptions) {
    this.#every = o.reportEveryMs ?? 60_000;
    this.#now = o.now ?? Date.now;
  }

  /** Alerts in messages being retried now. */
  get waiting(): number {
    return this.#waiting;
  }

  /** Whether deliveries are failing now. */
  get ongoing(): boolean {
    return this.#since !== undefined;
  }

  /** An attempt failed with a retryable error; `newlyWaiting` alerts start waiting (those of a first failure). */
  failed(err: unknown, newlyWaiting: number): void {
    this.#waiting += newlyWaiting;
    this.#failures++;
    const now = this.#now();
    if (this.#since === undefined) {
      this.#since = now;
      this.#lastReport = now;
      this.o.log.warn('sink unavailable: keeping its offsets and retrying until it is back', {
        err,
        alertsWaiting: this.#waiting,
      });
    } else if (now - this.#lastReport >= this.#every) {
      this.#lastReport = now;
      this.o.log.warn('sink still unavailable', {
        err,
        outageMs: now - this.#since,
        failedAttempts: this.#failures,
        alertsWaiting: this.#waiting,
      });
    }
  }

  /** Alerts that waited are settled: delivered, parked, or left to Kafka by a stop. */
  settled(alerts: number): void {
    this.#waiting = Math.max(0, this.#waiting - alerts);
  }

  /** A delivery succeeded: an outage in progress is over. */
  delivered(): void {
    if (this.#since === undefined) return;
    this.o.log.info('sink available again', {
      outageMs: this.#now() - this.#since,
      failedAttempts: this.#failures,
    });
    this.#since = undefined;
    this.#failures = 0;
  }
}
