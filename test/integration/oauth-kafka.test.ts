/**
 * SASL OAUTHBEARER on a secured broker of its own (SASL_SSL taking SCRAM-SHA-512 and OAUTHBEARER, the ACL table
 * of infra/kafka/acls.ts), its tokens from a local OAuth token endpoint (node:http, client-credentials grant)
 * issuing unsigned JWTs, which the broker's unsecured test validator accepts (see BrokerSecurity): the principal
 * is the token's `sub`, so the ACLs of that service apply; a refused client fails at once.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTableTopics } from '../../cli/topics.js';
import { EdrError } from '../../infra/errors.js';
import { aclNames, aclTable } from '../../infra/kafka/acls.js';
import { type Broker, startBroker } from '../../infra/kafka/broker.js';
import { kafkaConfigSchema } from '../../infra/kafka/config.js';
import { KafkaTransport } from '../../infra/kafka/transport.js';
import { createLogger } from '../../infra/log.js';
import { topics } from '../../schemas/topics.js';
import { withStderr } from '../harness/stderr.js';

const ADMIN = 'edr-test-admin';
const ADMIN_PASSWORD = `pw-${randomBytes(12).toString('hex')}`;
process.env['EDR_TEST_OAUTH_ADMIN_PASSWORD'] = ADMIN_PASSWORD;
const SECRET = `client-secret-${randomBytes(12).toString('hex')}`;
process.env['EDR_TEST_OAUTH_CLIENT_SECRET'] = SECRET;

/** An unsigned JWT (`alg: none`), as only the test broker's unsecured validator accepts. */
function unsignedJwt(sub: string, lifetimeS: number): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  return `${b64({ alg: 'none' })}.${b64({ sub, iat: now, exp: now + lifetimeS })}.`;
}

/**
 * A token endpoint that knows one secret and gives each client id a token for the principal of the same name;
 * `refuse` makes it answer 401 invalid_client to everything.
 */
class TokenEndpoint {
  requests = 0;
  refuse = false;
  /** How many requests to come are answered 503. */
  unavailable = 0;
  /** The lifetime of the tokens it issues (expires_in and the JWT's exp). */
  lifetimeS = 600;
  private server!: Server;
  url!: string;

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        this.requests++;
        const [scheme, b64] = (req.headers.authorization ?? '').split(' ');
        const pair = Buffer.from(b64 ?? '', 'base64').toString('utf8');
        const colon = pair.indexOf(':');
        const decode = (s: string) => new URLSearchParams(`x=${s}`).get('x') ?? '';
        const [id, secret] = [decode(pair.slice(0, colon)), decode(pair.slice(colon + 1))];
        res.setHeader('content-type', 'application/json');
        if (this.unavailable > 0) {
          this.unavailable--;
          res.writeHead(503).end(JSON.stringify({ error: 'temporarily_unavailable' }));
          return;
        }
        if (this.refuse || scheme !== 'Basic' || secret !== SECRET) {
          res.writeHead(401).end(JSON.stringify({ error: 'invalid_client' }));
          return;
        }
        res.end(
          JSON.stringify({
            access_token: unsignedJwt(id, this.lifetimeS),
            token_type: 'Bearer',
            expires_in: this.lifetimeS,
          }),
        );
      });
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/token`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}

describe('SASL OAUTHBEARER against the secured broker', () => {
  const endpoint = new TokenEndpoint();
  let dir: string;
  let broker: Broker | undefined;
  let admin: KafkaTransport;
  const open: KafkaTransport[] = [];

  /** A transport authenticating with a token the endpoint issues to `clientId`. */
  const oauthAs = (clientId: string, log = createLogger({ component: clientId })) => {
    const t = new KafkaTransport(
      kafkaConfigSchema.parse({
        brokers: broker!.brokers,
        clientId,
        tls: { caFile: broker!.caFile },
        sasl: {
          mechanism: 'oauthbearer',
          tokenEndpoint: endpoint.url,
          allowInsecureTokenEndpoint: true,
          clientId,
          clientSecret: { env: 'EDR_TEST_OAUTH_CLIENT_SECRET' },
        },
      }),
      log,
    );
    open.push(t);
    return t;
  };

  before(async () => {
    await endpoint.start();
    dir = await mkdtemp(path.join(tmpdir(), 'edr-oauth-kafka-'));
    broker = await startBroker({
      dir,
      security: {
        users: [{ name: ADMIN, password: ADMIN_PASSWORD }],
        superUsers: [ADMIN],
        acls: aclTable(aclNames()),
        unsecuredOAuthBearer: true,
        // Sessions end (and kafkajs authenticates again) within the refresh test below.
        maxReauthMs: 12_000,
      },
    });
    // SCRAM still works beside OAUTHBEARER: the admin creates the topics with it.
    admin = new KafkaTransport(
      kafkaConfigSchema.parse({
        brokers: broker.brokers,
        clientId: ADMIN,
        tls: { caFile: broker.caFile },
        sasl: {
          mechanism: 'scram-sha-512',
          username: ADMIN,
          password: { env: 'EDR_TEST_OAUTH_ADMIN_PASSWORD' },
        },
      }),
    );
    open.push(admin);
    await createTableTopics(admin, { replication: 1 });
  });
  after(async () => {
    await Promise.all(open.map((t) => t.close()));
    await endpoint.stop();
    try {
      await broker?.stop();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  /** A producer of `t`, authenticated as edr-sink, is refused writing the raw topic (the collector's alone). */
  const sinkRefusedRaw = async (t: KafkaTransport) => {
    const sink = await t.producer();
    await assert.rejects(
      sink.publish([{ topic: topics.raw.name, key: 'forged', value: Buffer.from('forged') }]),
      (err: unknown) =>
        err instanceof EdrError &&
        err.code === 'EDR_KAFKA_TOPIC_AUTHORIZATION' &&
        err.message.includes(`WRITE topic ${topics.raw.name} as User:edr-sink`),
    );
    await sink.close();
  };

  const total = async (topic: string) =>
    (await admin.endOffsets(topic)).reduce((n, p) => n + Number(p.offset), 0);

  it("publishes to the raw topic as the token's subject, edr-collector, whose ACLs refuse it the rules topic", {
    timeout: 60_000,
  }, async () => {
    const before = await total(topics.raw.name);
    endpoint.requests = 0;
    const collector = await oauthAs('edr-collector').producer();
    await collector.publish([{ topic: topics.raw.name, key: 'host-1', value: Buffer.from('event') }]);
    assert.equal(await total(topics.raw.name), before + 1);
    await assert.rejects(
      collector.publish([{ topic: topics.rules.name, key: 'forged', value: Buffer.from('forged') }]),
      (err: unknown) => {
        assert.ok(err instanceof EdrError, String(err));
        assert.equal(err.code, 'EDR_KAFKA_TOPIC_AUTHORIZATION', err.message);
        assert.ok(
          err.message.includes(`not authorized to WRITE topic ${topics.rules.name} as User:edr-collector`),
        );
        return true;
      },
    );
    await collector.close();
    // Every connection authenticated with the one token the endpoint issued.
    assert.equal(endpoint.requests, 1);
  });

  it("is another principal with another subject: edr-sink's token may not write the raw topic", {
    timeout: 60_000,
  }, async () => {
    await sinkRefusedRaw(oauthAs('edr-sink'));
  });

  it('takes the token from a file, read again for each new connection', { timeout: 60_000 }, async () => {
    const file = path.join(dir, 'token');
    await writeFile(file, `${unsignedJwt('edr-collector', 600)}\n`, { mode: 0o600 });
    const t = new KafkaTransport(
      kafkaConfigSchema.parse({
        brokers: broker!.brokers,
        clientId: 'edr-collector',
        tls: { caFile: broker!.caFile },
        sasl: { mechanism: 'oauthbearer', tokenFile: file },
      }),
    );
    open.push(t);
    const collector = await t.producer();
    const before = await total(topics.raw.name);
    await collector.publish([{ topic: topics.raw.name, key: 'host-3', value: Buffer.from('event') }]);
    assert.equal(await total(topics.raw.name), before + 1);
    await collector.close();
    // The sidecar now holds another identity's token: the next producer's connections authenticate with it.
    await writeFile(file, unsignedJwt('edr-sink', 600));
    await sinkRefusedRaw(t);
  });

  it('goes on past the expiry of its first token: a new one, connections authenticated again', {
    timeout: 90_000,
  }, async () => {
    // Each token lives 20 s and is asked again 15 s before it expires; the broker ends each session after 12 s, or
    // when its token expires, and refuses an expired token: the first token alone would not last the test.
    endpoint.lifetimeS = 20;
    endpoint.requests = 0;
    const t = oauthAs('edr-collector');
    try {
      const collector = await t.producer();
      const before = await total(topics.raw.name);
      const started = Date.now();
      let sent = 0;
      while (Date.now() - started < 25_000) {
        await collector.publish([
          { topic: topics.raw.name, key: `host-${sent}`, value: Buffer.from('event') },
        ]);
        sent++;
        await new Promise((r) => setTimeout(r, 250));
      }
      await collector.close();
      assert.equal(await total(topics.raw.name), before + sent);
      // 25 s of 20-second tokens asked again after 5 s: the first and at least two more, each on authenticating.
      assert.ok(endpoint.requests >= 3, `${endpoint.requests} tokens issued`);
    } finally {
      endpoint.lifetimeS = 600;
    }
  });

  it('connects once the token endpoint is back from a short outage (503)', { timeout: 60_000 }, async () => {
    endpoint.unavailable = 2;
    endpoint.requests = 0;
    const collector = await oauthAs('edr-collector').producer();
    await collector.publish([{ topic: topics.raw.name, key: 'host-2', value: Buffer.from('event') }]);
    await collector.close();
    assert.equal(endpoint.requests, 3, 'two 503s, then the token');
  });

  it('fails fast, with a clear error and without the secret, when the token endpoint refuses the client', {
    timeout: 60_000,
  }, async () => {
    endpoint.refuse = true;
    endpoint.requests = 0;
    const started = Date.now();
    const t = oauthAs('edr-collector', createLogger({ component: 'refused' }, 'debug'));
    const { outcome, logged } = await withStderr(() => t.endOffsets(topics.raw.name));
    const took = Date.now() - started;
    assert.equal(outcome.status, 'rejected');
    const err = (outcome as PromiseRejectedResult).reason as unknown;
    assert.ok(err instanceof EdrError, String(err));
    assert.equal(err.code, 'EDR_KAFKA_OAUTH', err.message);
    assert.equal(err.retryable, false);
    assert.match(
      err.message,
      /getting an OAuth token from http:\/\/127\.0\.0\.1:\d+\/token: HTTP 401: invalid_client/,
    );
    // Not retried: the same credentials are refused again.
    assert.equal(endpoint.requests, 1);
    assert.ok(took < 5000, `failed after ${took} ms, not at once`);
    endpoint.refuse = false;
    const everything = [err.message, err.stack ?? '', JSON.stringify(err.details), logged].join('\n');
    assert.ok(!everything.includes(SECRET), 'no secret in the error or the logs');
    // Once the client is admitted again, the same transport connects: the failure was not kept.
    assert.equal((await t.endOffsets(topics.raw.name)).length, topics.raw.partitions);
  });
});
