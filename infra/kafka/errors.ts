/** kafkajs's errors as EdrErrors, and the questions the transport asks of them. */
import { EdrError, errorMessage } from '../errors.js';

const FENCED = new Set(['PRODUCER_FENCED', 'INVALID_PRODUCER_EPOCH']);

/**
 * What a call asked of the broker, so a refusal can say what was refused and to whom: the broker's error names
 * neither the resource nor the principal.
 */
export interface Access {
  /** `User:NAME` of the client's SASL user, or a description of the client without one. */
  principal: string;
  /** What is asked of the topics (and of the group, READ, or the transactional id, WRITE). */
  operation: 'READ' | 'WRITE' | 'DESCRIBE' | 'CREATE';
  topics?: readonly string[];
  groupId?: string;
  transactionalId?: string;
  /** What is asked of the cluster, when it is not `operation` (an idempotent producer: IDEMPOTENT_WRITE). */
  clusterOperation?: string;
}

/**
 * Authorization failures: the broker refused an operation to this principal. Not retryable: only a change of the
 * ACLs makes it succeed, and retrying would hide the cause.
 */
const DENIED: Record<string, { code: string; says: (a: Access) => string }> = {
  TOPIC_AUTHORIZATION_FAILED: {
    code: 'EDR_KAFKA_TOPIC_AUTHORIZATION',
    says: (a) => `${a.operation} topic ${a.topics?.length ? a.topics.join(', ') : '(unknown)'}`,
  },
  GROUP_AUTHORIZATION_FAILED: {
    code: 'EDR_KAFKA_GROUP_AUTHORIZATION',
    says: (a) => `READ group ${a.groupId ?? '(unknown)'}`,
  },
  TRANSACTIONAL_ID_AUTHORIZATION_FAILED: {
    code: 'EDR_KAFKA_TRANSACTIONAL_ID_AUTHORIZATION',
    says: (a) => `WRITE transactional id ${a.transactionalId ?? '(unknown)'}`,
  },
  CLUSTER_AUTHORIZATION_FAILED: {
    code: 'EDR_KAFKA_CLUSTER_AUTHORIZATION',
    says: (a) => `${a.clusterOperation ?? a.operation} cluster`,
  },
};

/**
 * `err` and the errors it wraps: kafkajs keeps the broker's error in `originalError`, others in `cause`, and an
 * aggregate (one error per topic of a createTopics) in `errors`.
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

/**
 * kafkajs errors as EdrErrors: fenced producers, refused operations and failed authentication get their own codes;
 * otherwise `retriable` carries over. `access` says what the call asked, for the message of a refusal.
 */
export function toEdrError(err: unknown, what: string, access?: Access): EdrError {
  if (err instanceof EdrError) return err;
  // Ours, thrown from inside the client (the OAUTHBEARER token provider) and wrapped by its retries.
  const ours = [...wrapped(err)].find((e): e is EdrError => e instanceof EdrError);
  if (ours !== undefined) {
    return new EdrError(ours.code, `${what}: ${ours.message}`, {
      retryable: ours.retryable,
      cause: ours,
      details: ours.details,
    });
  }
  const deniedType = errorType(err, (t) => t in DENIED);
  if (deniedType !== undefined) {
    const d = DENIED[deniedType]!;
    const asked = access === undefined ? ` (${deniedType})` : ` to ${d.says(access)} as ${access.principal}`;
    return new EdrError(d.code, `${what}: not authorized${asked}`, {
      cause: err,
      details: { kafkaError: deniedType },
    });
  }
  const names = [...wrapped(err)].map((e) => e.name);
  const asked = access?.groupId ?? access?.transactionalId;
  if (names.includes('KafkaJSGroupCoordinatorNotFound') && access !== undefined && asked !== undefined) {
    // kafkajs drops the broker's answer to FindCoordinator (for a group or a transactional id); a refusal is what
    // ends it at once (an unavailable coordinator is retried first), so the message says so, hedged.
    const what2 = access.groupId !== undefined ? `READ group ${asked}` : `WRITE transactional id ${asked}`;
    return new EdrError(
      'EDR_KAFKA_COORDINATOR_NOT_FOUND',
      `${what}: no coordinator for ${asked}: most likely not authorized to ${what2} as ${access.principal}, or none is available`,
      { cause: err },
    );
  }
  if (names.includes('KafkaJSSASLAuthenticationError')) {
    // kafkajs's message names the mechanism and the outcome, never the password.
    return new EdrError(
      'EDR_KAFKA_AUTHENTICATION',
      `${what}: SASL authentication failed${access ? ` as ${access.principal}` : ''} (wrong user name or password, or no such user): ${errorMessage(err)}`,
      { cause: err },
    );
  }
  const fenced = errorType(err, (t) => FENCED.has(t));
  if (fenced !== undefined) {
    return new EdrError('EDR_TRANSPORT_FENCED', `${what}: fenced by a newer producer (${fenced})`, {
      cause: err,
    });
  }
  const retryable = (err as { retriable?: boolean }).retriable === true;
  return new EdrError('EDR_KAFKA', `${what}: ${errorMessage(err)}`, { retryable, cause: err });
}

/** Runs a client call, its failure as an EdrError saying `what` failed (and, if refused, what was asked). */
export async function kafkaCall<T>(what: string, fn: () => Promise<T>, access?: Access): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw toEdrError(err, what, access);
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
