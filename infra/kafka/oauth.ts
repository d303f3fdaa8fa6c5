/**
 * Bearer tokens for SASL OAUTHBEARER: from an OAuth 2.0 token endpoint with the client-credentials grant
 * (RFC 6749 §4.4), cached and refreshed before they expire, or from a file a sidecar keeps fresh. kafkajs asks for
 * a token on every authentication (each new connection, and each re-authentication when the broker gives the
 * session a lifetime), so both are cheap to ask again.
 *
 * Everything the endpoint or the file returns is treated as hostile: the size is capped, the JSON checked, and the
 * token must be an RFC 6750 b64token, since kafkajs splices it into the SASL message between \x01 separators.
 */
import { open } from 'node:fs/promises';
import { z } from 'zod';
import type { Secret } from '../config.js';
import { EdrError, errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import type { KafkaTransportConfig } from './config.js';

/** Where a transport gets its bearer token from. */
export interface BearerTokens {
  token(): Promise<string>;
}

/** RFC 6750 §2.1; a JWT (three base64url parts, the last empty when unsigned) is one. */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;
const MAX_TOKEN_CHARS = 16 * 1024;
const MAX_RESPONSE_BYTES = 64 * 1024;
/**
 * The least lifetime a token is given out with. The broker ends a session when its token expires (with
 * connections.max.reauth.ms set); kafkajs authenticates a connection again once its session has less than 10 s
 * left, and the broker refuses a second re-authentication within a second (ILLEGAL_SASL_STATE): a token nearer
 * its end would have every request re-authenticate, and fail.
 */
const MIN_LEFT_MS = 15_000;
/** Nothing longer than a year is a token lifetime; a larger number is a broken endpoint. */
const MAX_LIFETIME_S = 365 * 24 * 3600;

const tokenResponseSchema = z.object({
  access_token: z
    .string()
    .min(1)
    .max(MAX_TOKEN_CHARS)
    .regex(B64TOKEN, 'not a bearer token (RFC 6750 b64token)'),
  token_type: z.string().refine((t) => t.toLowerCase() === 'bearer', 'expected token_type bearer'),
  // Some endpoints send the number as a string.
  expires_in: z
    .union([z.number(), z.string().regex(/^\d+$/).transform(Number)])
    .pipe(z.number().positive().max(MAX_LIFETIME_S)),
});

const errorResponseSchema = z.object({
  error: z.string(),
  error_description: z.string().optional(),
});

/** Text from the endpoint, fit for a message: printable, short, and without the secret. */
function quote(text: string, secret: string): string {
  const clean = text
    .split(secret)
    .join('***')
    .replace(/[^\x20-\x7e]/g, '?');
  return clean.length > 200 ? `${clean.slice(0, 200)}...` : clean;
}

/** The body, at most `max` bytes: a hostile endpoint does not fill the memory. */
async function readCapped(res: Response, max: number): Promise<string | undefined> {
  if (res.body === null) return '';
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of res.body) {
    size += chunk.byteLength;
    // Leaving the loop cancels the rest of the stream.
    if (size > max) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** application/x-www-form-urlencoded, as RFC 6749 §2.3.1 wants client_id and client_secret encoded. */
const formEncode = (s: string) => new URLSearchParams([['', s]]).toString().slice(1);

export interface ClientCredentialsOptions {
  tokenEndpoint: string;
  clientId: string;
  clientSecret: Secret;
  scope?: string | undefined;
  timeoutMs: number;
  log: Logger;
  /** The clock, for tests. */
  now?: () => number;
}

/** The client-credentials grant; one request at a time, the token kept until shortly before it expires. */
export class ClientCredentialsTokens implements BearerTokens {
  readonly #o: ClientCredentialsOptions;
  readonly #now: () => number;
  /** Origin and path only: a query string is nobody's business in a log line. */
  readonly #where: string;
  #current: { value: string; refreshAt: number; expiresAt: number } | undefined;
  #inflight: Promise<string> | undefined;

  constructor(o: ClientCredentialsOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
    const u = new URL(o.tokenEndpoint);
    this.#where = `${u.origin}${u.pathname}`;
  }

  async token(): Promise<string> {
    const now = this.#now();
    const current = this.#current;
    if (current !== undefined && now < current.refreshAt) return current.value;
    this.#inflight ??= this.#fetch().finally(() => {
      this.#inflight = undefined;
    });
    try {
      return await this.#inflight;
    } catch (err) {
      // The endpoint failing during the margin before expiry: the token still works, so a blip at the identity
      // provider does not cut the pipeline off.
      if (current !== undefined && current.expiresAt - this.#now() > MIN_LEFT_MS) {
        this.#o.log.warn('refreshing the OAuth token failed; using the current one until it expires', {
          error: errorMessage(err),
          expiresInMs: current.expiresAt - this.#now(),
        });
        return current.value;
      }
      throw err;
    }
  }

  async #fetch(): Promise<string> {
    const secret = this.#o.clientSecret.reveal();
    const fail = (message: string, retryable: boolean, details: Record<string, unknown> = {}) =>
      new EdrError('EDR_KAFKA_OAUTH', `getting an OAuth token from ${this.#where}: ${message}`, {
        retryable,
        details: { tokenEndpoint: this.#where, clientId: this.#o.clientId, ...details },
      });
    const body = new URLSearchParams({ grant_type: 'client_credentials' });
    if (this.#o.scope !== undefined) body.set('scope', this.#o.scope);
    const started = this.#now();
    let res: Response;
    try {
      res = await fetch(this.#o.tokenEndpoint, {
        method: 'POST',
        headers: {
          authorization: `Basic ${Buffer.from(`${formEncode(this.#o.clientId)}:${formEncode(secret)}`).toString('base64')}`,
          'content-type': 'application/x-www-form-urlencoded',
          accept: 'application/json',
        },
        body: body.toString(),
        // Credentials are for this endpoint only, never for where a redirect points (handled below).
        redirect: 'manual',
        signal: AbortSignal.timeout(this.#o.timeoutMs),
      });
    } catch (err) {
      // No cause attached: fetch's errors may carry the request, whose header holds the secret.
      const e = err as Error & { cause?: unknown };
      const why =
        e.name === 'TimeoutError'
          ? `no answer within ${this.#o.timeoutMs} ms`
          : `${e.message}${e.cause instanceof Error ? ` (${e.cause.message})` : ''}`;
      throw fail(quote(why, secret), true);
    }
    if (res.status >= 300 && res.status < 400) {
      await res.body?.cancel().catch(() => {});
      throw fail(`HTTP ${res.status}, a redirect, not followed: configure the URL it points to`, false, {
        status: res.status,
      });
    }
    const text = await readCapped(res, MAX_RESPONSE_BYTES).catch((err: unknown) => {
      throw fail(`reading the answer: ${quote(errorMessage(err), secret)}`, true);
    });
    if (text === undefined) throw fail(`an answer larger than ${MAX_RESPONSE_BYTES} bytes`, false);
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const oauth = errorResponseSchema.safeParse(json);
      const said = oauth.success
        ? `: ${quote(oauth.data.error, secret)}${oauth.data.error_description ? ` (${quote(oauth.data.error_description, secret)})` : ''}`
        : '';
      // 4xx is the request (invalid_client, unauthorized_client, invalid_scope): the same request fails again.
      const retryable = res.status >= 500 || res.status === 429 || res.status === 408;
      const hint =
        res.status === 400 || res.status === 401
          ? ' — check the client id, the client secret and the scope'
          : '';
      throw fail(`HTTP ${res.status}${said}${hint}`, retryable, { status: res.status });
    }
    const parsed = tokenResponseSchema.safeParse(json);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`);
      throw fail(`not a token response (${quote(problems.join('; '), secret)})`, false);
    }
    const lifetimeMs = parsed.data.expires_in * 1000;
    // Asked again a fifth of its life before it expires (at most a minute, at least MIN_LEFT_MS), counted from when
    // the request started, as the endpoint's clock began then at the latest.
    const margin = Math.max(MIN_LEFT_MS, Math.min(60_000, lifetimeMs / 5));
    this.#current = {
      value: parsed.data.access_token,
      refreshAt: started + lifetimeMs - margin,
      expiresAt: started + lifetimeMs,
    };
    this.#o.log.debug('got an OAuth token', {
      tokenEndpoint: this.#where,
      expiresInS: parsed.data.expires_in,
    });
    return parsed.data.access_token;
  }
}

/** A token kept in a file by something else (a sidecar rotating it): read again each time one is asked for. */
export class FileTokens implements BearerTokens {
  constructor(private readonly file: string) {}

  async token(): Promise<string> {
    const fail = (message: string, retryable: boolean) =>
      new EdrError('EDR_KAFKA_OAUTH', `reading the OAuth token file ${this.file}: ${message}`, {
        retryable,
        details: { tokenFile: this.file },
      });
    let text: string;
    try {
      const f = await open(this.file, 'r');
      try {
        const buf = Buffer.alloc(MAX_TOKEN_CHARS + 2);
        const { bytesRead } = await f.read(buf, 0, buf.length, 0);
        if (bytesRead > MAX_TOKEN_CHARS + 1) throw fail(`larger than ${MAX_TOKEN_CHARS} bytes`, false);
        text = buf.subarray(0, bytesRead).toString('utf8').trim();
      } finally {
        await f.close();
      }
    } catch (err) {
      if (err instanceof EdrError) throw err;
      // Not there yet: the sidecar may write it in a moment.
      const code = (err as NodeJS.ErrnoException).code;
      throw fail(errorMessage(err), code === 'ENOENT');
    }
    if (text === '') throw fail('empty', true);
    // The content is not quoted back: it may well be a token, damaged or not.
    if (!B64TOKEN.test(text)) throw fail('not a bearer token (RFC 6750 b64token, one line)', false);
    return text;
  }
}

/**
 * The `sub` claim of a JWT, read without checking its signature: only to name the principal in messages (the
 * broker's validator maps `sub` to the principal by default). Undefined when the token is not a readable JWT.
 */
export function jwtSubject(token: string): string | undefined {
  const parts = token.split('.');
  if (parts.length !== 3 || parts[1] === undefined) return undefined;
  try {
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8')) as unknown;
    const sub = (claims as { sub?: unknown } | null)?.sub;
    return typeof sub === 'string' && /^[\x21-\x7e]{1,200}$/.test(sub) ? sub : undefined;
  } catch {
    return undefined;
  }
}

type OAuthBearerConfig = Extract<NonNullable<KafkaTransportConfig['sasl']>, { mechanism: 'oauthbearer' }>;

/** The token source a config describes (the schema has checked it names exactly one, completely). */
export function bearerTokens(c: OAuthBearerConfig, log: Logger): BearerTokens {
  if (c.tokenFile !== undefined) return new FileTokens(c.tokenFile);
  if (c.tokenEndpoint === undefined || c.clientId === undefined || c.clientSecret === undefined) {
    throw new EdrError('EDR_CONFIG_INVALID', 'sasl oauthbearer: tokenEndpoint, clientId and clientSecret');
  }
  return new ClientCredentialsTokens({
    tokenEndpoint: c.tokenEndpoint,
    clientId: c.clientId,
    clientSecret: c.clientSecret,
    scope: c.scope,
    timeoutMs: c.tokenTimeoutMs,
    log,
  });
}
