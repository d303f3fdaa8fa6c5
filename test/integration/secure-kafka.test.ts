/**
 * The pipeline on a secured broker of its own (SASL_SSL with SCRAM-SHA-512, the standard authorizer denying what
 * no ACL allows, the ACL table of infra/kafka/acls.ts): the transport contract over SASL_SSL as a super user; the
 * collector → detector → sink path with each service's own principal; what each must not do refused with an
 * error naming the topic (or group, or transactional id), the operation and the principal; a wrong password
 * failing at once, with the password in no error and no log line.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTableTopics } from '../../cli/topics.js';
import { Publisher } from '../../collector/publish.js';
import { Spool } from '../../collector/spool.js';
import { detectorConfigSchema } from '../../detector/config.js';
import { runDetector } from '../../detector/main.js';
import { replay } from '../../detector/replay.js';
import { keyIdOf, signRecord } from '../../detector/rule-signing.js';
import { EdrError } from '../../infra/errors.js';
import { aclNames, aclTable } from '../../infra/kafka/acls.js';
import { answersApiVersions, type Broker, startBroker } from '../../infra/kafka/broker.js';
import { kafkaConfigSchema } from '../../infra/kafka/config.js';
import { KafkaTransport } from '../../infra/kafka/transport.js';
import { createLogger } from '../../infra/log.js';
import { projectCodec } from '../../schemas/codec.js';
import { topics } from '../../schemas/topics.js';
import { parseSinksConfig } from '../../sinks/config.js';
import { runSinks } from '../../sinks/main.js';
import { sampleEvent } from '../fixtures/events.js';
import { containsRule } from '../harness/detector.js';
import { unique, waitFor } from '../harness/names.js';
import { withStderr } from '../harness/stderr.js';
import { transportContract } from '../harness/transport-contract.js';

const ADMIN = 'edr-test-admin';
const principals = {
  collector: 'edr-collector',
  detector: 'edr-detector',
  sink: 'edr-sink',
  operator: 'edr-operator',
  replay: 'edr-replay',
};
const passwords = new Map<string, string>(
  [ADMIN, ...Object.values(principals)].map((u) => [u, `pw-${randomBytes(12).toString('hex')}`]),
);
for (const [user, pw] of passwords) process.env[envName(user)] = pw;

function envName(user: string): string {
  return `EDR_TEST_SASL_${user.replaceAll('-', '_').toUpperCase()}`;
}

let dir: string;
let broker: Promise<Broker> | undefined;

/** This file's own broker, started once, whichever suite asks first. */
function secureBroker(): Promise<Broker> {
  broker ??= (async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'edr-secure-kafka-'));
    const b = await startBroker({
      dir,
      security: {
        users: [...passwords].map(([name, password]) => ({ name, password })),
        superUsers: [ADMIN],
        acls: aclTable(aclNames({ principals })),
      },
    });
    process.once('exit', () => {
      try {
        process.kill(b.pid, 'SIGKILL');
      } catch {}
    });
    return b;
  })();
  return broker;
}

after(async () => {
  if (broker === undefined) return;
  try {
    await (await broker).stop();
  } finally {
    // A broker that did not start leaves its directory too.
    await rm(dir, { recursive: true, force: true });
  }
});

/** The `kafka:` config section of `user` on the secured broker: TLS trusting the test CA, SCRAM-SHA-512. */
async function kafkaSection(user: string, passwordEnv = envName(user)) {
  const b = await secureBroker();
  return {
    brokers: b.brokers,
    clientId: user,
    tls: { caFile: b.caFile },
    sasl: { mechanism: 'scram-sha-512', username: user, password: { env: passwordEnv } },
  };
}

async function transportAs(user: string, log = createLogger({ component: user })): Promise<KafkaTransport> {
  return new KafkaTransport(kafkaConfigSchema.parse(await kafkaSection(user)), log);
}

/** A refusal: the stable code, not retryable, and a message naming what was asked and by whom. */
function refused(code: string, says: string) {
  return (err: unknown) => {
    assert.ok(err instanceof EdrError, `an EdrError, not ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.equal(err.retryable, false);
    assert.ok(err.message.includes(says), `'${err.message}' says '${says}'`);
    return true;
  };
}

transportContract('kafka over SASL_SSL (SCRAM-SHA-512, a super user)', () => transportAs(ADMIN), {
  largeCount: 100_000,
  timeoutMs: 60_000,
});

describe('secured pipeline: one principal per service', () => {
  const open: KafkaTransport[] = [];
  const as = async (user: string) => {
    const t = await transportAs(user);
    open.push(t);
    return t;
  };

  before(async () => {
    // Services no longer create topics: the operator does, which its Create on the cluster allows.
    // What `edr topics create` does, as the operator on the secured broker.
    const created = await createTableTopics(await as(principals.operator), { replication: 1 });
    assert.deepEqual(
      created.filter((t) => t.state === 'differs').map((t) => t.name),
      [],
    );
  });
  after(async () => {
    await Promise.all(open.map((t) => t.close()));
  });

  it('carries events from the collector through a detector to a file sink', {
    timeout: 120_000,
  }, async () => {
    const ruleId = '5d1c1e4e-8a8c-4c52-9a51-000000000014';
    const needle = `secure-${randomBytes(4).toString('hex')}`;
    // The rule comes from the rules topic, which only the operator writes.
    const operator = await as(principals.operator);
    // Signed, as detectors accept from the topic only what a trusted key signed.
    const pair = generateKeyPairSync('ed25519');
    const signer = { id: keyIdOf(pair.publicKey), key: pair.privateKey };
    const value = Buffer.from(containsRule(ruleId, needle));
    const op = await operator.producer();
    await op.publish([
      {
        topic: topics.rules.name,
        key: ruleId,
        value,
        headers: signRecord(signer, {
          topic: topics.rules.name,
          key: Buffer.from(ruleId),
          version: BigInt(Date.now()) * 1000n,
          op: 'put',
          value,
        }),
      },
    ]);
    await op.close();

    const work = await mkdtemp(path.join(tmpdir(), 'edr-secure-path-'));
    const stopDetector = new AbortController();
    const detector = runDetector(
      detectorConfigSchema.parse({
        kafka: await kafkaSection(principals.detector),
        detectorId: 'secure-test',
        createTopics: false,
        evaluationThreads: 0,
        rules: {
          topic: true,
          publicKeys: [pair.publicKey.export({ type: 'spki', format: 'pem' }).toString()],
        },
      }),
      stopDetector.signal,
    );
    const sinkTransport = await as(principals.sink);
    const router = await runSinks(
      parseSinksConfig({
        kafka: await kafkaSection(principals.sink),
        stateDir: path.join(work, 'state'),
        sinks: { archive: { type: 'file', directory: path.join(work, 'out'), startFrom: 'earliest' } },
        routes: [{ to: ['archive'] }],
      }),
      sinkTransport,
    );

    const codec = projectCodec();
    const spool = new Spool({
      dir: path.join(work, 'spool'),
      maxBytes: 1 << 20,
      segmentBytes: 1 << 16,
      fsync: 'never',
    });
    const publisher = new Publisher(
      await as(principals.collector),
      spool,
      {
        rawTopic: topics.raw.name,
        auditTopic: topics.audit.name,
        batchMaxEvents: 100,
        timeoutMs: 10_000,
        retryIntervalMs: 200,
        maxPendingEvents: 1000,
      },
      createLogger({ component: 'collector' }),
    );
    publisher.start();
    const events = [
      sampleEvent({ seq: 1n, argv: ['sh', '-c', `echo ${needle}`] }),
      sampleEvent({ seq: 2n, argv: ['ls', '-l'] }),
    ];
    try {
      await publisher.submit(
        events.map((e) => ({
          key: Buffer.from(e.hostId),
          value: codec.encode('dev.edr.v1.ExecveEvent', e),
          toRaw: true,
          toAudit: true,
          event: true,
        })),
      );
      await waitFor('the collector to publish', () => publisher.counters().eventsPublished === 2, 30_000);
      assert.equal(publisher.counters().outages, 0, 'the collector was never refused');

      const lines = async () => {
        const out = path.join(work, 'out');
        const files = await readdir(out).catch(() => []);
        const texts = await Promise.all(files.map((f) => readFile(path.join(out, f), 'utf8')));
        return texts.join('').split('\n').filter(Boolean);
      };
      await waitFor('the alert in the sink file', async () => (await lines()).length > 0, 90_000);
      const alerts = (await lines()).map(
        (l) => JSON.parse(l) as { ruleId: string; event: { argv: string[] } },
      );
      assert.equal(alerts.length, 1);
      assert.equal(alerts[0]!.ruleId, ruleId);
      assert.deepEqual(alerts[0]!.event.argv, ['sh', '-c', `echo ${needle}`]);
    } finally {
      await publisher.stop(5000);
      await router.stop();
      stopDetector.abort();
      await detector;
      await rm(work, { recursive: true, force: true });
    }
  });

  it('replays the audit topic as the replay principal', { timeout: 90_000 }, async () => {
    const needle = `replayed-${randomBytes(4).toString('hex')}`;
    const ruleId = '5d1c1e4e-8a8c-4c52-9a51-000000000015';
    const from = Date.now() - 1000;
    const producer = await (await as(principals.collector)).producer();
    const event = sampleEvent({ seq: 7n, argv: ['sh', '-c', needle] });
    await producer.publish([
      {
        topic: topics.audit.name,
        key: event.hostId,
        value: projectCodec().encode('dev.edr.v1.ExecveEvent', event),
      },
    ]);
    await producer.close();
    const rulesDir = await mkdtemp(path.join(tmpdir(), 'edr-secure-replay-'));
    try {
      await writeFile(path.join(rulesDir, 'rule.yml'), containsRule(ruleId, needle));
      const result = await replay({
        transport: await as(principals.replay),
        rulesDir,
        topic: topics.audit.name,
        alertsTopic: topics.alerts.name,
        fromMs: from,
        toMs: undefined,
        hosts: undefined,
        runId: unique('secure'),
        parallel: 1,
      });
      assert.equal(result.completed, true);
      assert.equal(result.matchesByRule.get(ruleId), 1);
    } finally {
      await rm(rulesDir, { recursive: true, force: true });
    }
  });

  it('refuses a collector reading alerts, naming the topic, the operation and the principal', async () => {
    const collector = await as(principals.collector);
    await assert.rejects(
      collector.consume({
        groupId: unique('edr-collector-peek'),
        topics: [topics.alerts.name],
        handler: async () => {},
      }),
      refused(
        'EDR_KAFKA_TOPIC_AUTHORIZATION',
        `not authorized to READ topic ${topics.alerts.name} as User:edr-collector`,
      ),
    );
  });

  /** `user` publishing one record to `topic` is refused, the error naming both and WRITE. */
  async function refusedWrite(user: string, topic: string): Promise<void> {
    const producer = await (await as(user)).producer();
    try {
      await assert.rejects(
        producer.publish([{ topic, key: 'forged', value: Buffer.from('forged') }]),
        refused('EDR_KAFKA_TOPIC_AUTHORIZATION', `not authorized to WRITE topic ${topic} as User:${user}`),
      );
    } finally {
      await producer.close();
    }
  }

  it('refuses a collector writing the rules topic', () =>
    refusedWrite(principals.collector, topics.rules.name));

  it('refuses a sink writing the raw topic', () => refusedWrite(principals.sink, topics.raw.name));

  it('refuses a detector a group or a transactional id outside its prefix', async () => {
    const detector = await as(principals.detector);
    await assert.rejects(
      detector.transactionalProducer('edr-replay-forged-0'),
      refused(
        'EDR_KAFKA_COORDINATOR_NOT_FOUND',
        'not authorized to WRITE transactional id edr-replay-forged-0 as User:edr-detector',
      ),
    );
    // Committing offsets for another service's group in its own transaction: the broker answers for the group.
    const txp = await detector.transactionalProducer(`edr-detector-${unique('t')}-0`);
    try {
      await assert.rejects(
        txp.transaction(async (tx) => {
          await tx.commitOffsets('edr-sink-archive', [{ topic: topics.raw.name, partition: 0, offset: 0 }]);
        }),
        refused(
          'EDR_KAFKA_GROUP_AUTHORIZATION',
          'not authorized to READ group edr-sink-archive as User:edr-detector',
        ),
      );
    } finally {
      await txp.close();
    }
    // Joining it, as finding a transactional id's coordinator above: kafkajs drops the broker's answer to
    // FindCoordinator, so the error names the likely cause.
    const c = await detector.consume({
      groupId: 'edr-sink-archive',
      topics: [topics.raw.name],
      handler: async () => {},
    });
    await assert.rejects(
      c.done,
      refused(
        'EDR_KAFKA_COORDINATOR_NOT_FOUND',
        'not authorized to READ group edr-sink-archive as User:edr-detector',
      ),
    );
    await c.stop();
  });

  it('admits no client without credentials on any listener', async () => {
    const b = await secureBroker();
    const props = await readFile(path.join(dir, 'server.properties'), 'utf8');
    const listeners = /^listeners=(.*)$/m.exec(props)![1]!.split(',');
    const port = (name: string) =>
      Number(
        listeners
          .find((l) => l.startsWith(`${name}://`))!
          .split(':')
          .pop(),
      );
    const ca = await readFile(b.caFile!, 'utf8');
    assert.deepEqual(
      listeners.map((l) => l.split(':')[0]),
      ['SASL_SSL', 'BROKER', 'CONTROLLER'],
    );
    // The broker's own listeners want its certificate: neither plain TCP nor TLS without one gets an answer.
    for (const name of ['BROKER', 'CONTROLLER']) {
      assert.equal(await answersApiVersions(port(name)), false, `${name} answers plain TCP`);
      assert.equal(
        await answersApiVersions(port(name), '127.0.0.1', ca),
        false,
        `${name} answers without a certificate`,
      );
    }
    // The client listener answers ApiVersions before authentication (how readiness is probed); every other
    // request needs a SCRAM login (the wrong-password case below).
    assert.equal(await answersApiVersions(port('SASL_SSL'), '127.0.0.1', ca), true);
  });

  it("passes the config's client certificate: the broker's own, on its mutual-TLS listener", async () => {
    const props = await readFile(path.join(dir, 'server.properties'), 'utf8');
    const broker = /BROKER:\/\/(127\.0\.0\.1:\d+)/.exec(props)![1]!;
    const tlsDir = path.join(dir, 'tls');
    const t = new KafkaTransport(
      kafkaConfigSchema.parse({
        brokers: [broker],
        clientId: 'mtls',
        tls: {
          caFile: path.join(tlsDir, 'ca.pem'),
          certFile: path.join(tlsDir, 'broker.pem'),
          keyFile: path.join(tlsDir, 'broker.key'),
        },
      }),
      createLogger({}, 'error'),
    );
    try {
      // The certificate's principal is a super user: it sees a topic no ACL names for it.
      assert.equal((await t.endOffsets(topics.rules.name)).length, 1);
    } finally {
      await t.close();
    }
  });

  it('fails fast on a wrong password, with the password in no error and no log line', async () => {
    const wrong = `wrong-${randomBytes(12).toString('hex')}`;
    process.env['EDR_TEST_SASL_WRONG'] = wrong;
    const t = new KafkaTransport(
      kafkaConfigSchema.parse(await kafkaSection(principals.sink, 'EDR_TEST_SASL_WRONG')),
      createLogger({ component: 'wrong-password' }, 'debug'),
    );
    const started = Date.now();
    const { outcome, logged } = await withStderr(() => t.endOffsets(topics.alerts.name));
    await t.close();
    const failure = outcome.status === 'rejected' ? (outcome.reason as unknown) : undefined;
    const took = Date.now() - started;
    assert.ok(failure instanceof EdrError, `an EdrError, not ${String(failure)}`);
    assert.equal(failure.code, 'EDR_KAFKA_AUTHENTICATION', failure.message);
    assert.equal(failure.retryable, false);
    assert.match(failure.message, /SASL authentication failed as User:edr-sink/);
    assert.ok(took < 10_000, `failed after ${took} ms, not at once`);
    const everything = [failure.message, failure.stack ?? '', JSON.stringify(failure.details), logged].join(
      '\n',
    );
    for (const pw of [wrong, passwords.get(principals.sink)!]) {
      assert.ok(!everything.includes(pw), 'no password in the error or the logs');
    }
    // Nor in the broker's log, for any user.
    const brokerLog = await readFile((await secureBroker()).logFile, 'utf8');
    for (const pw of [wrong, ...passwords.values()])
      assert.ok(!brokerLog.includes(pw), 'no password in the broker log');
  });
});
