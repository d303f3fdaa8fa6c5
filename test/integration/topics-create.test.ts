/**
 * `edr topics create` on a broker of its own (it creates the table's fixed topic names, which the shared test
 * broker's other tests must not see): everything created once with the table's settings, the second run changes
 * nothing and reports what differs; services started before it say which topics are missing, at once.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, it } from 'node:test';
import { detectorConfigSchema } from '../../detector/config.js';
import { runDetector } from '../../detector/main.js';
import { parseConfig } from '../../infra/config.js';
import { type Broker, startBroker } from '../../infra/kafka/broker.js';
import { kafkaConfigSchema } from '../../infra/kafka/config.js';
import { KafkaTransport } from '../../infra/kafka/transport.js';
import { createLogger } from '../../infra/log.js';
import { topics } from '../../schemas/topics.js';
import { loadSinksConfig } from '../../sinks/config.js';
import { runSinks } from '../../sinks/main.js';
import { edr } from '../harness/edr-cli.js';

let dir: string;
let broker: Broker;
let transport: KafkaTransport;
const log = createLogger({}, 'error');

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'edr-topics-'));
  broker = await startBroker({ dir: path.join(dir, 'kafka') });
  transport = new KafkaTransport(
    kafkaConfigSchema.parse({ brokers: broker.brokers, clientId: 'topics-test' }),
    log,
  );
});
after(async () => {
  await transport?.close();
  await broker?.stop();
  await rm(dir, { recursive: true, force: true });
});

it('services started before the topics exist name the missing topics and the command that makes them', async () => {
  const kafka = { brokers: broker.brokers, clientId: 'early' };
  const detector = parseConfig(detectorConfigSchema, { kafka, rules: { topic: false } });
  const started = Date.now();
  await assert.rejects(
    runDetector(detector, new AbortController().signal),
    (err: Error & { code?: string }) => {
      assert.equal(err.code, 'EDR_TOPICS_MISSING');
      assert.match(err.message, new RegExp(`detector: topics .*${topics.raw.name.replace(/\./g, '\\.')}`));
      assert.match(err.message, /edr topics create/);
      return true;
    },
  );
  // At once: not after the client's retries of "does not host this topic-partition" (about 20 s).
  assert.ok(Date.now() - started < 10_000, `took ${Date.now() - started} ms`);
  const file = path.join(dir, 'sinks.yaml');
  const { writeFileSync } = await import('node:fs');
  writeFileSync(
    file,
    `kafka: { brokers: [${broker.brokers[0]}] }\nstateDir: ${dir}/sinks\n` +
      `sinks: { f: { type: file, directory: ${dir}/alerts } }\nroutes: [{ to: [f] }]\n`,
  );
  await assert.rejects(
    runSinks(loadSinksConfig(file), transport, { log }),
    /sinks: topics .*edr topics create/,
  );
});

it('creates every topic of the table once, then reports differences and changes nothing', async () => {
  const first = edr(['topics', 'create', '--partitions', 'raw=4,alerts=2'], {
    EDR_KAFKA_BROKERS: broker.brokers.join(','),
  });
  assert.equal(first.code, 0, first.out);
  const all = Object.values(topics);
  for (const t of all) assert.match(first.out, new RegExp(`^created  ${t.name.replace(/\./g, '\\.')}$`, 'm'));
  const have = await transport.describeTopics(all.map((t) => t.name));
  assert.equal(have.size, all.length);
  assert.equal(have.get(topics.raw.name)?.partitions, 4);
  assert.equal(have.get(topics.alerts.name)?.partitions, 2);
  assert.equal(have.get(topics.audit.name)?.partitions, topics.audit.partitions);
  // The detector's per-input-partition topics follow the raw topic's count, whatever the table says.
  assert.equal(have.get(topics.correlation.name)?.partitions, 4);
  assert.equal(have.get(topics.changelog.name)?.partitions, 4);
  for (const t of all) {
    assert.equal(have.get(t.name)?.cleanupPolicy, t.cleanupPolicy, t.name);
    assert.equal(have.get(t.name)?.retentionMs, t.retentionMs, t.name);
  }

  // Again with the table's partitions: nothing is created or changed, and the differences are reported.
  const again = edr(['topics', 'create', '--brokers', broker.brokers.join(',')]);
  assert.equal(again.code, 0, again.out);
  assert.match(
    again.out,
    new RegExp(`^differs  ${topics.raw.name.replace(/\./g, '\\.')}  partitions 4 \\(wanted 6\\)$`, 'm'),
  );
  assert.match(again.out, /^differs {2}edr\.alerts\.v1 {2}partitions 2 \(wanted 3\)$/m);
  assert.match(again.out, /^exists {3}edr\.correlation\.v1$/m);
  assert.match(again.out, /^exists {3}edr\.rules\.v1$/m);
  assert.doesNotMatch(again.out, /^created/m);
  assert.equal((await transport.describeTopics([topics.raw.name])).get(topics.raw.name)?.partitions, 4);

  const bad = edr(['topics', 'create', '--brokers', broker.brokers.join(','), '--partitions', 'nosuch=3']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.out, /--partitions: roles are raw, audit/);
});
