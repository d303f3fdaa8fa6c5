/**
 * The pipeline watches itself, against a real broker and a detector process with its default health stage: a
 * collector's LOSS record (drops) and STOPPED record on the audit topic, a signed rules push and an unsigned
 * rules-topic record each become exactly one pipeline alert on the alerts topic, with the project's rule ids.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { HEALTH_RULES } from '../../detector/pipeline-health.js';
import { generateKeyFiles } from '../../detector/rule-signing.js';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import { sampleCollectorRecord, sampleHeartbeat } from '../fixtures/events.js';
import { testBrokers, testTransport } from '../harness/broker.js';
import * as harness from '../harness/detector.js';
import { edr } from '../harness/edr-cli.js';
import { unique, waitFor } from '../harness/names.js';

/** What the tests start, stopped when the file's tests end. */
const started: { transports: KafkaTransport[]; processes: harness.WorkerProcess[] } = {
  transports: [],
  processes: [],
};
after(async () => {
  for (const w of started.processes) await w.kill();
  for (const t of started.transports) await t.close();
});

const RULE = '5d3c0e0a-0000-4000-8000-00000000h001';

/** Topics, a detector process (with `extra` config) started and a reader of its alerts topic. */
async function start(prefix: string, extra: (dir: string) => Record<string, unknown>) {
  const t = await testTransport(prefix);
  started.transports.push(t);
  const topics = harness.testTopics(unique(prefix));
  await harness.createTestTopics(t, topics, 3);
  const dir = harness.tempDir(`edr-${prefix}`);
  const w = new harness.WorkerProcess(
    harness.writeConfig(dir, 'worker', {
      kafka: { brokers: await testBrokers(), clientId: 'worker', sessionTimeoutMs: 6000 },
      detectorId: `${prefix}-worker`,
      groupId: unique('edr-detector'),
      topics,
      evaluationThreads: 0,
      ...extra(dir),
    }),
  ).start();
  started.processes.push(w);
  const { alerts, consumption } = await harness.collectAlerts(t, topics.alerts, unique('reader'));
  await waitFor('the worker started', () => w.logged('detector started') === 1, 60_000);
  return { t, topics, w, alerts, consumption };
}

test('loss, a stopped collector, a rules push and a refused record each raise one pipeline alert', async () => {
  const brokers = await testBrokers();
  const { t, topics, w, alerts, consumption } = await start('dph', (dir) => ({
    rules: { publicKeys: [generateKeyFiles(path.join(dir, 'key')).publicKey] },
  }));
  const dir = path.dirname(w.configFile);
  const key = { privateKey: path.join(dir, 'key', 'rules-signing.key') };
  try {
    const codec = projectCodec();
    const lossy = sampleCollectorRecord({
      hostId: 'host-blinded',
      losses: {
        kernelSeen: 5000n,
        kernelRingFull: 1234n,
        kernelTruncated: 0n,
        kernelReadErrors: 0n,
        queueDropped: 0n,
        spoolDropped: 0n,
      },
    });
    const stopped = sampleCollectorRecord({ hostId: 'host-stopped', kind: 'STOPPED', losses: null });
    const p = await t.producer();
    await p.publish([
      { topic: topics.audit, key: lossy.hostId, value: codec.encode('dev.edr.v1.CollectorRecord', lossy) },
      {
        topic: topics.audit,
        key: stopped.hostId,
        value: codec.encode('dev.edr.v1.CollectorRecord', stopped),
      },
    ]);
    // A signed push (accepted), then an unsigned record (refused).
    const rulesDir = path.join(dir, 'rules');
    mkdirSync(rulesDir);
    writeFileSync(path.join(rulesDir, 'r.yml'), harness.containsRule(RULE, 'pushed-marker'));
    const push = edr([
      'rules',
      'push',
      rulesDir,
      '--brokers',
      brokers.join(','),
      '--topic',
      topics.rules,
      '--signing-key',
      key.privateKey,
    ]);
    assert.equal(push.code, 0, push.out);
    await p.publish([
      { topic: topics.rules, key: RULE, value: Buffer.from(harness.containsRule(RULE, 'evil-marker')) },
    ]);
    const want = [
      HEALTH_RULES.loss,
      HEALTH_RULES.stopped,
      HEALTH_RULES.rulesChanged,
      HEALTH_RULES.ruleRefused,
    ];
    await waitFor('four pipeline alerts', () => alerts.length >= 4, 60_000);
    // A moment for any duplicate to show.
    await new Promise((r) => setTimeout(r, 2000));
    await p.close();
    const got = alerts.map(({ alert }) => [alert.ruleId, alert.event.hostId]);
    console.log(`pipeline alerts: ${JSON.stringify(got)}`);
    assert.deepEqual(
      got.sort(),
      [
        [HEALTH_RULES.loss.id, 'host-blinded'],
        [HEALTH_RULES.stopped.id, 'host-stopped'],
        [HEALTH_RULES.rulesChanged.id, 'rules-topic'],
        [HEALTH_RULES.ruleRefused.id, 'dph-worker'],
      ].sort(),
      `each once: ${want.map((r) => r.id).join(', ')}`,
    );
    const loss = alerts.find(({ alert }) => alert.ruleId === HEALTH_RULES.loss.id)!.alert;
    assert.equal(loss.matchedFields.find((f) => f.field === 'kernelRingFull')?.value, '1234');
  } finally {
    await consumption.stop();
  }
});

test('a host whose heartbeats stop raises one silent-host alert; a host still beating none', async () => {
  const { t, topics, alerts, consumption } = await start('dps', () => ({
    rules: { topic: false },
    health: { silentAfterMs: 3000 },
  }));
  const codec = projectCodec();
  const p = await t.producer();
  const beat = (hostId: string) => ({
    topic: topics.audit,
    key: hostId,
    value: codec.encode(
      'dev.edr.v1.CollectorHeartbeat',
      sampleHeartbeat({ hostId, intervalMs: 500n, timeNs: BigInt(Date.now()) * 1_000_000n }),
    ),
  });
  try {
    // Both hosts beat for 2 s; then 'host-killed' stops (as a SIGKILLed collector does: no STOPPED), the other
    // goes on for 8 s more.
    const t0 = Date.now();
    while (Date.now() - t0 < 10_000) {
      await p.publish(
        Date.now() - t0 < 2000 ? [beat('host-killed'), beat('host-alive')] : [beat('host-alive')],
      );
      await new Promise((r) => setTimeout(r, 500));
    }
    await waitFor('the silent-host alert', () => alerts.length >= 1, 30_000);
    await new Promise((r) => setTimeout(r, 2000));
    const got = alerts.map(({ alert }) => [alert.ruleId, alert.event.hostId]);
    console.log(`silent-host alerts: ${JSON.stringify(got)}`);
    assert.deepEqual(got, [[HEALTH_RULES.silent.id, 'host-killed']]);
  } finally {
    await p.close();
    await consumption.stop();
  }
});
