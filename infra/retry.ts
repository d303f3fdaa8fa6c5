/**
 * The one retry helper: capped exponential backoff with jitter, abortable. Every loop in the project that tries
 * again after a failure (a batch handler, a sink delivery, a transactional commit, a metadata call, the broker's
 * start) takes its pauses from here, so the policy is read and tested in one place.
 */
import { isRetryable } from './errors.js';

export interface Backoff {
  /** Pause after the first failure. */
  initialMs: number;
  /** No pause is longer. */
  maxMs: number;
  /**
   * 'equal' (default): half the exponential pause fixed, half random, so peers retrying the same failure do not
   * retry in step. 'none': the exponential pause itself, for deterministic short loops.
   */
  jitter?: 'equal' | 'none';
}

/** The pause after failed attempt `attempt` (1-based). */
export function backoffMs(attempt: number, b: Backoff, random: () => number = Math.random): number {
  const exp = Math.min(b.maxMs, b.initialMs * 2 ** Math.min(Math.max(attempt, 1) - 1, 30));
  if (b.jitter === 'none') return exp;
  return Math.round(exp / 2 + (random() * exp) / 2);
}

/** Resolves after `ms`, or at once when `signal` aborts. Never rejects. */
export function abortableDelay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const onAbort = () => {
      clearTimeout(t);
      resolve();
    };
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export interface RetryOptions {
  backoff: Backoff;
  /** Tries at most this many times in all (default: no limit). */
  maxAttempts?: number;
  /** Whether a failure is worth another attempt (default: `isRetryable`, i.e. an EdrError marked retryable). */
  retryIf?: (err: unknown, attempt: number) => boolean;
  /** Stops waiting and rethrows the last failure when it aborts. */
  signal?: AbortSignal;
  /** Told of each failure that will be retried, with the pause before the next attempt. */
  onRetry?: (err: unknown, attempt: number, delayMs: number) => void;
  /** The pause for a failure, when the failure itself says (e.g. Retry-After); else the backoff's. */
  delayFor?: (err: unknown, attempt: number) => number | undefined;
  random?: () => number;
}

/**
 * Runs `fn` until it resolves, pausing between attempts. Rethrows the failure that is not retried: one
 * `retryIf` refuses, the last allowed attempt's, or any once `signal` has aborted.
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, opts: RetryOptions): Promise<T> {
  const retryIf = opts.retryIf ?? isRetryable;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      if (opts.signal?.aborted) throw err;
      if (opts.maxAttempts !== undefined && attempt >= opts.maxAttempts) throw err;
      if (!retryIf(err, attempt)) throw err;
      const delay = opts.delayFor?.(err, attempt) ?? backoffMs(attempt, opts.backoff, opts.random);
      opts.onRetry?.(err, attempt, delay);
      await abortableDelay(delay, opts.signal);
      if (opts.signal?.aborted) throw err;
    }
  }
}

/**
 * A one-off metadata call right after a broker start or a topic creation can fail for a moment (coordinator
 * loading, no leader yet): those failures are retryable, and the call is tried again for about ten seconds
 * instead of failing a command.
 */
export function settled<T>(what: () => Promise<T>): Promise<T> {
  return retry(what, { backoff: { initialMs: 100, maxMs: 500 }, maxAttempts: 25 });
}
