/** kafkajs's errors as EdrErrors, and the questions the transport asks of them. */
import { EdrError, errorMessage } from '../errors.js';

const FENCED = new Set([
  'PRODUCER_FENCED',
  'INVALID_PRODUCER_EPOCH',
  'TRANSACTIONAL_ID_AUTHORIZATION_FAILED',
]);

/**
 * `err` and the errors it wraps: kafkajs keeps the broker's error in `originalError` (several in `errors`, when a
 * request to several brokers failed), others in `cause`.
 */
function* wrapped(err: unknown, depth = 0): Generator<Error> {
  for (
    let e: unknown = err;
    e instanceof Error;
    e = (e as { cause?: unknown; originalError?: unknown }).originalError ?? e.cause
  ) {
    yield e;
    const inner = (e as { errors?: unknown }).errors;
    if (Array.isArray(inner) && depth < 4) for (const x of inner) yield* wrapped(x, depth + 1);
  }
}

/** The Kafka protocol error type of `err` or of an error it wraps, first found. */
function errorType(err: unknown, matches: (type: string) => boolean): string | undefined {
  for (const e of wrapped(err)) {
    const type = (e as { type?: string }).type;
    if (type !== undefined && matches(type)) return type;
  }
  return undefined;
}

/** kafkajs errors as EdrErrors: fenced producers get their own code; `retriable` carries over. */
export function toEdrError(err: unknown, what: string): EdrError {
  if (err instanceof EdrError) return err;
  const fenced = errorType(err, (t) => FENCED.has(t));
  if (fenced !== undefined) {
    return new EdrError('EDR_TRANSPORT_FENCED', `${what}: fenced by a newer producer (${fenced})`, {
      cause: err,
    });
  }
  const retryable = (err as { retriable?: boolean }).retriable === true;
  return new EdrError('EDR_KAFKA', `${what}: ${errorMessage(err)}`, { retryable, cause: err });
}

/** Runs a client call, its failure as an EdrError saying `what` failed. */
export async function kafkaCall<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw toEdrError(err, what);
  }
}

/** The broker's errors for a record (or request) too large for the topic or the broker. */
const TOO_LARGE = new Set(['MESSAGE_TOO_LARGE', 'RECORD_LIST_TOO_LARGE', 'INVALID_RECORD']);

/** The protocol error type when the broker refused records as too large (or invalid), else undefined. */
export function refusedAsTooLarge(err: unknown): string | undefined {
  return errorType(err, (t) => TOO_LARGE.has(t));
}

/** Whether a transaction failed only because the previous one of this id was still completing. */
export function concurrentTransactions(err: unknown): boolean {
  return errorType(err, (t) => t === 'CONCURRENT_TRANSACTIONS') !== undefined;
}
