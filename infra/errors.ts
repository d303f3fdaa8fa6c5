/**
 * The one error class of the project. Every error a caller may act on carries a stable `EDR_<AREA>_<WHAT>`
 * code, a message for humans, whether trying again can help (`retryable`), and the underlying `cause`.
 * Unknown errors (anything not an EdrError) are treated as not retryable.
 */
export class EdrError extends Error {
  readonly code: string;
  readonly retryable: boolean;
  /** Structured context for logs (file, line, topic, partition, offset, ...). Never secrets. */
  readonly details: Readonly<Record<string, unknown>>;

  constructor(
    code: string,
    message: string,
    opts: { retryable?: boolean; cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'EdrError';
    this.code = code;
    this.retryable = opts.retryable ?? false;
    this.details = opts.details ?? {};
  }
}

export function isRetryable(err: unknown): boolean {
  return err instanceof EdrError && err.retryable;
}

/** Message of any thrown value, for logs and dead-letter headers. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
