/**
 * The OAUTHBEARER token sources against a real HTTP token endpoint (node:http on loopback) and real files: what is
 * sent, what is cached and when it is asked again, and how each failure comes out — never with the secret.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Secret } from '../config.js';
import { EdrError } from '../errors.js';
import type { Logger } from '../log.js';
import { ClientCredentialsTokens, FileTokens, jwtSubject } from './oauth.js';

// Characters form encoding changes (RFC 6749 §2.3.1), and a ':' that would split the Basic pair if not encoded.
const CLIENT_ID = 'edr collector:1';
const SECRET = 's3cret:+%&/ é-do-not-print';

interface Seen {
  path: string;
  authorization: string | undefined;
  contentType: string | undefined;
  body: string;
}
type Answer = (req: IncomingMessage, res: ServerResponse) => void;

/** A token endpoint answering each request with the next scripted answer (the last one repeats). */
class TokenServer {
  readonly seen: Seen[] = [];
  answers: Answer[] = [];
  private server!: Server;
  url!: string;

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => {
        body += c.toString('utf8');
      });
      req.on('end', () => {
        this.seen.push({
          path: req.url ?? '',
          authorization: req.headers.authorization,
          contentType: req.headers['content-type'],
          body,
        });
        const answer = this.answers.length > 1 ? this.answers.shift()! : this.answers[0]!;
        answer(req, res);
      });
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}

const json =
  (status: number, body: unknown): Answer =>
  (_req, res) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
const issue = (token: string, expiresIn: number | string = 3600, tokenType = 'Bearer') =>
  json(200, { access_token: token, token_type: tokenType, expires_in: expiresIn });

/** A logger keeping its lines, serialized as the real one does. */
function keptLog(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const line = (level: string) => (msg: string, fields?: Record<string, unknown>) => {
    lines.push(JSON.stringify({ level, msg, ...fields }));
  };
  const log = { lines, debug: line('debug'), info: line('info'), warn: line('warn'), error: line('error') };
  return { ...log, child: () => log as never };
}

/** An EDR_KAFKA_OAUTH error, retryable or not, whose message says `says` and nowhere holds the secret. */
function oauthError(retryable: boolean, says: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof EdrError, `an EdrError, not ${String(err)}`);
    assert.equal(err.code, 'EDR_KAFKA_OAUTH', err.message);
    assert.equal(err.retryable, retryable, err.message);
    assert.match(err.message, says);
    const all = [err.message, err.stack ?? '', JSON.stringify(err.details), String(err.cause)].join('\n');
    assert.ok(!all.includes(SECRET), 'no secret in the error');
    return true;
  };
}

describe('client-credentials tokens', () => {
  const server = new TokenServer();
  let clock = 0;
  let log = keptLog();
  const tokens = (more: { tokenEndpoint?: string; timeoutMs?: number; scope?: string } = {}) =>
    new ClientCredentialsTokens({
      tokenEndpoint: more.tokenEndpoint ?? `${server.url}/oauth2/token?tenant=t1`,
      clientId: CLIENT_ID,
      clientSecret: new Secret(SECRET),
      scope: more.scope,
      timeoutMs: more.timeoutMs ?? 5000,
      log,
      now: () => clock,
    });

  before(() => server.start());
  after(() => server.stop());

  it('sends the client credentials as HTTP Basic, form-encoded, and the grant as a form body', async () => {
    server.seen.length = 0;
    server.answers = [issue('tok-1')];
    assert.equal(await tokens({ scope: 'kafka:write kafka:read' }).token(), 'tok-1');
    assert.equal(server.seen.length, 1);
    const got = server.seen[0]!;
    assert.equal(got.path, '/oauth2/token?tenant=t1');
    assert.equal(got.contentType, 'application/x-www-form-urlencoded');
    const [scheme, b64] = got.authorization!.split(' ');
    assert.equal(scheme, 'Basic');
    const pair = Buffer.from(b64!, 'base64').toString('utf8');
    const colon = pair.indexOf(':');
    // Each half form-decoded gives the original back; the id's own ':' was encoded, so the first ':' splits.
    const decode = (s: string) => new URLSearchParams(`x=${s}`).get('x');
    assert.equal(decode(pair.slice(0, colon)), CLIENT_ID);
    assert.equal(decode(pair.slice(colon + 1)), SECRET);
    const form = new URLSearchParams(got.body);
    assert.deepEqual(Object.fromEntries(form), {
      grant_type: 'client_credentials',
      scope: 'kafka:write kafka:read',
    });
    assert.ok(!got.body.includes('s3cret'), 'the secret only in the Authorization header');
  });

  it('keeps the token until shortly before it expires, then asks again, once for concurrent callers', async () => {
    server.seen.length = 0;
    server.answers = [issue('tok-a', 100), issue('tok-b', '3600'), issue('tok-c')];
    clock = 1_000_000;
    const t = tokens();
    assert.equal(await t.token(), 'tok-a');
    // Valid for 100 s, asked again a fifth of that (20 s) before expiry.
    clock += 79_000;
    assert.equal(await t.token(), 'tok-a');
    assert.equal(server.seen.length, 1);
    clock += 2_000;
    const together = await Promise.all([t.token(), t.token(), t.token()]);
    assert.deepEqual(together, ['tok-b', 'tok-b', 'tok-b']);
    assert.equal(server.seen.length, 2);
    // An hour's token: the margin is at most a minute.
    clock += 3_539_000;
    assert.equal(await t.token(), 'tok-b');
    clock += 2_000;
    assert.equal(await t.token(), 'tok-c');
    assert.equal(server.seen.length, 3);
  });

  it('gives no token out with less than 15 s left', async () => {
    server.seen.length = 0;
    server.answers = [issue('tok-short', 30), issue('tok-next', 10), issue('tok-then')];
    clock = 0;
    const t = tokens();
    assert.equal(await t.token(), 'tok-short');
    clock = 14_000;
    assert.equal(await t.token(), 'tok-short');
    clock = 16_000;
    assert.equal(await t.token(), 'tok-next');
    // Shorter than that: asked again each time.
    assert.equal(await t.token(), 'tok-then');
    assert.equal(server.seen.length, 3);
  });

  it('keeps using a still valid token when the refresh fails, until its last 15 s', async () => {
    server.answers = [issue('tok-old', 100), json(503, { error: 'temporarily_unavailable' })];
    clock = 0;
    log = keptLog();
    const t = tokens();
    assert.equal(await t.token(), 'tok-old');
    clock = 84_000;
    assert.equal(await t.token(), 'tok-old');
    assert.match(log.lines.join('\n'), /refreshing the OAuth token failed.*temporarily_unavailable/);
    // Not to its last 15 s: kafkajs would re-authenticate on every request, which the broker refuses.
    clock = 86_000;
    await assert.rejects(t.token(), oauthError(true, /HTTP 503: temporarily_unavailable/));
  });

  it('fails at once, not retryable, when the endpoint refuses the client; the secret in no error and no log', async () => {
    // A careless endpoint echoing what it got.
    server.answers = [json(401, { error: 'invalid_client', error_description: `bad secret ${SECRET}` })];
    log = keptLog();
    const error = await tokens()
      .token()
      .then(
        () => assert.fail('a token'),
        (e: unknown) => e,
      );
    oauthError(false, /HTTP 401: invalid_client \(bad secret \*\*\*\).*client id, the client secret/)(error);
    assert.match((error as Error).message, /from http:\/\/127\.0\.0\.1:\d+\/oauth2\/token: /);
    assert.ok(!(error as Error).message.includes('tenant=t1'), 'no query string in the message');
    // Debug lines included: the whole log of a refused request, then of a successful one.
    server.answers = [issue('tok-logged')];
    await tokens().token();
    assert.ok(log.lines.length > 0);
    assert.ok(!log.lines.join('\n').includes(SECRET), 'no secret in the log');
    server.answers = [json(400, { error: 'invalid_scope' })];
    await assert.rejects(tokens().token(), oauthError(false, /HTTP 400: invalid_scope/));
  });

  it('retries what may pass: 5xx, 429, no answer in time, nobody listening', async () => {
    server.answers = [json(503, 'down')];
    await assert.rejects(tokens().token(), oauthError(true, /HTTP 503$/));
    server.answers = [json(429, { error: 'slow_down' })];
    await assert.rejects(tokens().token(), oauthError(true, /HTTP 429: slow_down/));
    server.answers = [() => {}];
    await assert.rejects(tokens({ timeoutMs: 200 }).token(), oauthError(true, /no answer within 200 ms/));
    const closed = new TokenServer();
    await closed.start();
    const url = closed.url;
    await closed.stop();
    await assert.rejects(
      tokens({ tokenEndpoint: `${url}/token` }).token(),
      oauthError(true, /fetch failed.*ECONNREFUSED/),
    );
  });

  it('refuses answers that are not a bearer token, whatever the status', async () => {
    const cases: Array<[Answer, RegExp]> = [
      [issue('tok', 3600, 'mac'), /token_type: expected token_type bearer/],
      // kafkajs writes the token between \x01 separators of the SASL message: one inside would add extensions.
      [issue('tok\u0001auth=Bearer forged'), /access_token: not a bearer token/],
      [issue('tok', -5), /expires_in/],
      [json(200, { token_type: 'bearer', expires_in: 60 }), /access_token/],
      [(_q, res) => res.end('<html>login</html>'), /not a token response/],
      [(_q, res) => res.end('x'.repeat(70_000)), /larger than 65536 bytes/],
    ];
    for (const [answer, says] of cases) {
      server.answers = [answer];
      await assert.rejects(tokens().token(), oauthError(false, says));
    }
    // token_type is case-insensitive (RFC 6749 §5.1).
    server.answers = [issue('tok-lower', 60, 'bearer')];
    assert.equal(await tokens().token(), 'tok-lower');
  });

  it('does not follow a redirect with the credentials', async () => {
    server.seen.length = 0;
    server.answers = [
      (_q, res) => {
        res.writeHead(307, { location: '/elsewhere' });
        res.end();
      },
      issue('tok-elsewhere'),
    ];
    await assert.rejects(tokens().token(), oauthError(false, /redirect/));
    assert.deepEqual(
      server.seen.map((s) => s.path),
      ['/oauth2/token?tenant=t1'],
    );
  });
});

describe('token files', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'edr-oauth-file-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('reads the token again each time, as a sidecar rotates it', async () => {
    const file = path.join(dir, 'token');
    const t = new FileTokens(file);
    await writeFile(file, 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.\n');
    assert.equal(await t.token(), 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.');
    await writeFile(file, 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJiIn0.');
    assert.equal(await t.token(), 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJiIn0.');
  });

  it('says what is wrong with the file, without quoting its content', async () => {
    const fileError = (retryable: boolean, says: RegExp) => (err: unknown) => {
      assert.ok(err instanceof EdrError && err.code === 'EDR_KAFKA_OAUTH', String(err));
      assert.equal(err.retryable, retryable);
      assert.match(err.message, says);
      assert.ok(!err.message.includes('forged'), 'no content quoted');
      return true;
    };
    await assert.rejects(new FileTokens(path.join(dir, 'absent')).token(), fileError(true, /ENOENT/));
    const bad = path.join(dir, 'bad');
    await writeFile(bad, 'tok\u0001auth=Bearer forged');
    await assert.rejects(new FileTokens(bad).token(), fileError(false, /not a bearer token/));
    await writeFile(bad, 'a'.repeat(20_000));
    await assert.rejects(new FileTokens(bad).token(), fileError(false, /larger than 16384 bytes/));
    await writeFile(bad, '  \n');
    await assert.rejects(new FileTokens(bad).token(), fileError(true, /empty/));
  });
});

it("reads a JWT's subject for messages, and nothing from what is not one", () => {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  assert.equal(jwtSubject(`${b64({ alg: 'none' })}.${b64({ sub: 'edr-collector' })}.`), 'edr-collector');
  assert.equal(jwtSubject(`${b64({ alg: 'none' })}.${b64({ sub: 'two\nlines' })}.`), undefined);
  assert.equal(jwtSubject(`${b64({ alg: 'none' })}.${b64({ sub: 7 })}.`), undefined);
  assert.equal(jwtSubject('opaque-token'), undefined);
  assert.equal(jwtSubject('a.not-json.c'), undefined);
});
