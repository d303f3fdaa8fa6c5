/**
 * The Sink contract: `send(message, signal)` resolves only when the peer has the message; it throws a retryable
 * EdrError ("try later", optionally with `details.retryAfterMs`) or a non-retryable one ("never"). Sinks do not
 * retry, de-duplicate, fold, redact or rate-limit: deliver.ts does that once for all of them.
 */
import { EdrError } from '../infra/errors.js';
import type { Logger } from '../infra/log.js';
import type { Alert } from '../schemas/types.js';

/** Identical alerts (same rule, same host, close in time) delivered as one. `alerts` is never empty. */
export interface Fold {
  /** `ruleId host` */
  key: string;
  alerts: Alert[];
  /** Event times of the earliest and latest alert of the fold (ns since the epoch). */
  firstSeenNs: bigint;
  lastSeenNs: bigint;
}

/** One outgoing message: one fold (Slack, email), several (email digest), or a batch (file). */
export interface Message {
  folds: Fold[];
}

export interface Sink {
  send(message: Message, signal: AbortSignal): Promise<void>;
  /**
   * Alert ids the sink's own output proves were delivered (the file sink reads its files back), so a crash
   * between delivering and recording the delivery does not deliver twice.
   */
  delivered?(): Promise<Iterable<string>>;
  close(): Promise<void>;
}

export interface SinkContext {
  name: string;
  log: Logger;
  /** Per-attempt time limit, for clients that take timeouts rather than signals. */
  timeoutMs: number;
}

/** What a sink type contributes to the shared delivery policy when its instance config does not say. */
export interface SinkDefaults {
  /** Fold identical alerts into one message. */
  fold: boolean;
  /** Redact secrets in command lines before sending (the file sink keeps the full event). */
  redact: boolean;
  /** All alerts of a consumed batch in one message (file writes, email digests). */
  oneMessagePerBatch: boolean;
  /** Messages per second; Slack allows about one per second per webhook. */
  messagesPerSecond: number;
  /**
   * Where a new instance (no committed offsets yet) starts: a new notification sink must not page people with
   * the topic's whole retention; a new archive wants it.
   */
  startFrom: 'earliest' | 'latest';
}

/** Every alert of a message, in order. */
export function alertsOf(message: Message): Alert[] {
  return message.folds.flatMap((f) => f.alerts);
}

/** JSON for alerts: 64-bit fields are bigint, written as decimal strings. */
export function jsonReplacer(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? value.toString() : value;
}

// ---- error classification shared by the sinks ----

/** A `Retry-After` header (seconds or an HTTP date) in milliseconds from `nowMs`; undefined when absent or bad. */
export function parseRetryAfter(value: string | null | undefined, nowMs = Date.now()): number | undefined {
  if (value === null || value === undefined || value.trim() === '') return undefined;
  const v = value.trim();
  if (/^\d+(\.\d+)?$/.test(v)) return Math.round(Number(v) * 1000);
  const at = Date.parse(v);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - nowMs);
}

/**
 * An HTTP answer that is not a success: 408, 425, 429 and 5xx may succeed later; 400, 401, 403, 404, 410 and the
 * other 4xx will not (a deleted webhook stays deleted).
 */
export function httpStatusError(
  status: number,
  what: string,
  body: string,
  retryAfter?: string | null,
): EdrError {
  const snippet = body.length > 200 ? `${body.slice(0, 200)}…` : body;
  const msg = `${what}: HTTP ${status}${snippet ? ` ${snippet}` : ''}`;
  if (status === 429) {
    const retryAfterMs = parseRetryAfter(retryAfter);
    return new EdrError('EDR_SINK_RATE_LIMITED', msg, {
      retryable: true,
      details: { status, ...(retryAfterMs === undefined ? {} : { retryAfterMs }) },
    });
  }
  if (status >= 500 || status === 408 || status === 425) {
    const retryAfterMs = parseRetryAfter(retryAfter);
    return new EdrError('EDR_SINK_UNAVAILABLE', msg, {
      retryable: true,
      details: { status, ...(retryAfterMs === undefined ? {} : { retryAfterMs }) },
    });
  }
  return new EdrError('EDR_SINK_REJECTED', msg, { details: { status } });
}

const RETRYABLE_NET = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'ENOTFOUND',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
]);

/**
 * A failure to reach the peer (refused, reset, timed out, name not resolving yet): retryable. fetch wraps the
 * system error in `cause`; the chain is searched. Anything else is a bug or a misconfiguration: not retried.
 */
export function networkError(err: unknown, what: string): EdrError {
  if (err instanceof EdrError) return err;
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    const code = (e as { code?: string }).code;
    if (e.name === 'TimeoutError' || e.name === 'AbortError') {
      return new EdrError('EDR_SINK_TIMEOUT', `${what}: timed out`, { retryable: true, cause: err });
    }
    if (code !== undefined && RETRYABLE_NET.has(code)) {
      return new EdrError('EDR_SINK_UNREACHABLE', `${what}: ${code}`, { retryable: true, cause: err });
    }
  }
  // fetch reports every network failure as "TypeError: fetch failed" with the reason in cause.
  if (err instanceof TypeError && err.message === 'fetch failed') {
    return new EdrError('EDR_SINK_UNREACHABLE', `${what}: ${String(err.cause ?? err.message)}`, {
      retryable: true,
      cause: err,
    });
  }
  return new EdrError('EDR_SINK_FAILED', `${what}: ${err instanceof Error ? err.message : String(err)}`, {
    cause: err,
  });
}
