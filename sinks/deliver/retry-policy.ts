/** How a failed delivery is judged and how long the loop waits before the next attempt (pure). */
import { EdrError, errorMessage } from '../../infra/errors.js';

export interface RetryPolicy {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  maxRetryAfterMs: number;
}

/**
 * Pause after failed attempt `attempt` (1-based): what Retry-After said (capped), else capped exponential
 * backoff with "equal jitter" (half fixed, half random), so retrying sinks do not hammer a peer in step.
 */
export function retryDelayMs(
  attempt: number,
  retryAfterMs: number | undefined,
  p: RetryPolicy,
  random: () => number = Math.random,
): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, p.maxRetryAfterMs);
  const exp = Math.min(p.maxBackoffMs, p.initialBackoffMs * 2 ** Math.min(attempt - 1, 30));
  return Math.round(exp / 2 + (random() * exp) / 2);
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
