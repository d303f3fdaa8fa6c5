/** How a failed delivery is judged and how long the loop waits before the next attempt (pure). */
import { EdrError, errorMessage } from '../../infra/errors.js';
import { type Backoff, backoffMs } from '../../infra/retry.js';

export interface RetryPolicy {
  /** Absent: retryable failures are retried for as long as they last. */
  maxAttempts?: number | undefined;
  initialBackoffMs: number;
  maxBackoffMs: number;
  maxRetryAfterMs: number;
}

/** The policy's backoff as infra/retry.ts takes it: equal jitter, so retrying sinks do not hammer a peer in step. */
export function backoffOf(p: RetryPolicy): Backoff {
  return { initialMs: p.initialBackoffMs, maxMs: p.maxBackoffMs };
}

/** Pause after failed attempt `attempt` (1-based): what Retry-After said (capped), else the policy's backoff. */
export function retryDelayMs(
  attempt: number,
  retryAfterMs: number | undefined,
  p: RetryPolicy,
  random: () => number = Math.random,
): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, p.maxRetryAfterMs);
  return backoffMs(attempt, backoffOf(p), random);
}

/** The pause a failure's Retry-After asked for, if it said. */
export function retryAfterOf(err: unknown): number | undefined {
  const v = err instanceof EdrError ? err.details['retryAfterMs'] : undefined;
  return typeof v === 'number' ? v : undefined;
}

/** Anything a sink threw, as an EdrError: unknown errors are bugs or bad input, not retried. */
export function classify(err: unknown, timedOut: boolean): EdrError {
  if (err instanceof EdrError) return err;
  if (timedOut)
    return new EdrError('EDR_SINK_TIMEOUT', 'delivery timed out', { retryable: true, cause: err });
  return new EdrError('EDR_SINK_FAILED', errorMessage(err), { cause: err });
}

/** Why work was cut short by a stop: retryable, so its offsets stay uncommitted. */
export function stopping(): EdrError {
  return new EdrError('EDR_SINK_STOPPING', 'stopping: the rest is redelivered', { retryable: true });
}
