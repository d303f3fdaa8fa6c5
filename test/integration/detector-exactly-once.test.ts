/**
 * Two detector worker processes over 6 partitions; one is SIGKILLed and restarted twice while they work. Every
 * expected alert must appear exactly once to a read-committed reader of the alerts topic, and undecodable
 * records must land in the dead-letter topic with their reason while the run goes on.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { alertId } from '../../detector/alerts.js';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import { deadLetterHeaders, type InRecord, type OutRecord } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import { sampleEvent } from '../fixtures/events.js';
import { testBrokers, testTransport } from '../harness/broker.js';
import {
  collectAlerts,
  containsRule,
  createTestTopics,
  tempDir,
  testTopics,
  WorkerProcess,
  writeConfig,
} from '../harness/detector.js';
import { unique, waitFor } from '../harness/names.js';

// Closed even when a test fails, or the open clients would keep the test process alive.
const opened: KafkaTransport[] = [];
after(async () => {
  await Promise.all(opened.map((t) => t.close()));
});

const EVENTS = Number(process.env['EDR_TEST_DETECTOR_EVENTS'] ?? 200_000);
const HOSTS = 64;
const EVERY = 40; // one event in 40 matches the rule
const RULE_ID = '5d3c0e0a-0000-4000-8000-00000000e001';
// Not Avro; a known schema with a truncated body; empty.
const BAD = [
  Buffer.from('not avro at all'),
  projectCodec().encode('dev.edr.v1.ExecveEvent', sampleEvent()).subarray(0, 24),
  Buffer.alloc(0),
];

const RULE = containsRule(RULE_ID, 'edr-known-bad', 'Known bad marker on the command line');

const workers: WorkerProcess[] = [];
after(async () => {
  await Promise.all(workers.map((w) => w.kill()));
});

test('two workers, SIGKILL twice: every expected alert exactly once; bad records dead-lettered', async () => {
  const t = await testTransport('detector-eo');
  opened.push(t);
  const topics = testTopics(unique('deo'));
  await createTestTopics(t, topics);
  const dir = tempDir('edr-deo');
  const rulesDir = path.join(dir, 'rules');
  mkdirSync(rulesDir);
  writeFileSync(path.join(rulesDir, 'bad.yml'), RULE);
  const group = unique('edr-detector');

  const codec = projectCodec();
  const expected = new Set<string>();
  const producer = await t.producer();
  const t0 = Date.now();
  let chunk: OutRecord[] = [];
  const badAt = new Set([Math.floor(EVENTS / 3), Math.floor(EVENTS / 2), Math.floor((EVENTS * 4) / 5)]);
  let b = 0;
  for (let i = 0; i < EVENTS; i++) {
    const host = `host-${String(i % HOSTS).padStart(4, '0')}`;
    const matches = i % EVERY === 7;
    const e = sampleEvent({
      hostId: host,
      hostname: host,
      seq: BigInt(i),
      pid: 1000 + (i % 30000),
      timeNs: 1_795_000_000_000_000_000n + BigInt(i) * 1_000_000n,
      argv: matches ? ['sh', '-c', `echo edr-known-bad ${i}`] : ['ls', '-l', `/tmp/${i}`],
    });
    if (matches) expected.add(alertId(RULE_ID, e));
    chunk.push({ topic: topics.input, key: host, value: codec.encode('dev.edr.v1.ExecveEvent', e) });
    if (badAt.has(i)) chunk.push({ topic: topics.input, key: `bad-${b}`, value: BAD[b++]! });
    if (chunk.length >= 5000) {
      await producer.publish(chunk);
      chunk = [];
    }
  }
  await producer.publish(chunk);
  await producer.close();
  const produceMs = Date.now() - t0;

  const brokers = await testBrokers();
  const cfg = (name: string) =>
    writeConfig(dir, name, {
      kafka: { brokers, clientId: name, sessionTimeoutMs: 6000 },
      detectorId: name,
      groupId: group,
      topics,
      rules: { dir: rulesDir, pollMs: 500, topic: false },
      maxBatchRecords: 1000,
      createTopics: false,
    });
  const a = new WorkerProcess(cfg('worker-a')).start();
  const bw = new WorkerProcess(cfg('worker-b')).start();
  workers.push(a, bw);
  const { alerts, consumption } = await collectAlerts(t, topics.alerts, unique('reader'));
  const t1 = Date.now();
  try {
    // Kill A twice while alerts are still coming, each time restarting it.
    const kills = [0.2, 0.55];
    let current = a;
    for (const at of kills) {
      await waitFor(`${at * 100}% of the alerts`, () => alerts.length >= expected.size * at, 180_000);
      await current.kill('SIGKILL');
      current = new WorkerProcess(current.configFile).start();
      workers.push(current);
    }
    await waitFor('every expected alert', () => alerts.length >= expected.size, 240_000).catch((err) => {
      throw new Error(
        `${(err as Error).message}: ${alerts.length}/${expected.size}\n${workers.map((w) => w.log.slice(-3000)).join('\n---\n')}`,
      );
    });
    const runMs = Date.now() - t1;
    // Let anything still in flight land: all input consumed, then a moment for a duplicate to show up.
    await waitFor(
      'the group to reach the end of the input',
      async () => (await t.lag(group, topics.input)).every((l) => l.lag === 0),
      60_000,
    );
    await new Promise((r) => setTimeout(r, 2000));
    const ids = alerts.map((x) => x.alert.alertId);
    const seen = new Map<string, number>();
    for (const id of ids) seen.set(id, (seen.get(id) ?? 0) + 1);
    const dups = [...seen].filter(([, n]) => n > 1);
    const where = (id: string) =>
      alerts
        .filter((x) => x.alert.alertId === id)
        .map(
          (x) =>
            `${x.alert.detectorId}@alerts[${x.record.partition}]:${x.record.offset} seq ${x.alert.event.seq}`,
        )
        .join(' + ');
    assert.equal(
      dups.length,
      0,
      `duplicated alerts: ${dups.length}; e.g. ${dups
        .slice(0, 5)
        .map(([id]) => where(id))
        .join('; ')}\n${workers
        .map((w) =>
          w.log
            .split('\n')
            .filter((l) => /"level":"(warn|error)"/.test(l))
            .slice(-15)
            .join('\n'),
        )
        .join('\n---\n')}`,
    );
    assert.equal(seen.size, expected.size);
    for (const id of expected) assert.ok(seen.has(id), `missing alert ${id}`);
    const versions = new Set(alerts.map((x) => x.alert.ruleSetVersion));
    assert.equal(versions.size, 1, 'one rule-set version');
    process.stderr.write(
      `# ${EVENTS} events produced in ${produceMs} ms; ${expected.size} alerts exactly once in ${runMs} ms ` +
        `(${Math.round(EVENTS / (runMs / 1000))} events/s with 2 kills)\n`,
    );
  } finally {
    await consumption.stop();
  }

  // Dead letters: the original bytes, and why, from where.
  const dead: InRecord[] = [];
  const dl = await t.consume({
    groupId: unique('dlq-reader'),
    topics: [topics.deadLetter],
    handler: async (batch) => {
      dead.push(...batch.records);
    },
  });
  await waitFor('3 dead letters', () => dead.length >= 3, 30_000);
  await dl.stop();
  assert.equal(dead.length, 3);
  const codes = dead.map((r) => r.headers[deadLetterHeaders.errorCode]?.toString()).sort();
  assert.deepEqual(
    codes,
    ['EDR_SCHEMA_CORRUPT', 'EDR_SCHEMA_NOT_SINGLE_OBJECT', 'EDR_SCHEMA_NOT_SINGLE_OBJECT'].sort(),
  );
  for (const r of dead) {
    assert.equal(r.headers[deadLetterHeaders.topic]?.toString(), topics.input);
    assert.ok(Number(r.headers[deadLetterHeaders.offset]?.toString()) >= 0);
    assert.ok((r.headers[deadLetterHeaders.error]?.length ?? 0) > 0);
    const i = Number(r.key?.toString().slice(4));
    assert.deepEqual(r.value ?? Buffer.alloc(0), BAD[i]);
  }
  await Promise.all(workers.map((w) => w.kill('SIGTERM')));
  await t.close();
});
