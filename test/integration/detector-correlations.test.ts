/**
 * Correlations across a worker restart: per host, 3 failed-looking commands and the first half of a temporal
 * pair before one worker is SIGKILLed and restarted, 2 more and the second half after. Each host's event_count
 * (>= 5 within 60 s) and temporal correlation must fire exactly once; so must a correlation grouped by user
 * (not by host), which runs through the repartition topic.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import type { OutRecord, Transport } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import { sampleEvent } from '../fixtures/events.js';
import { testBrokers, testTransport } from '../harness/broker.js';
import {
  collectAlerts,
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

const base = (id: string, marker: string) => `title: ${marker}
id: ${id}
name: ${marker}
status: test
level: low
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    CommandLine|contains: '${marker}'
  condition: selection
`;

const RULES = `${base('5d3c0e0a-0000-4000-8000-00000000e301', 'auth-fail-marker')}---
${base('5d3c0e0a-0000-4000-8000-00000000e302', 'download-marker')}---
${base('5d3c0e0a-0000-4000-8000-00000000e303', 'exec-marker')}---
title: Many failed-looking commands on one host
id: 5d3c0e0a-0000-4000-8000-00000000e3c1
level: high
correlation:
  type: event_count
  rules: [auth-fail-marker]
  group-by: [Computer]
  timespan: 60s
  condition:
    gte: 5
---
title: Download then exec on one host
id: 5d3c0e0a-0000-4000-8000-00000000e3c2
level: high
correlation:
  type: temporal
  rules: [download-marker, exec-marker]
  group-by: [Computer]
  timespan: 60s
---
title: Many failed-looking commands by one user across the fleet
id: 5d3c0e0a-0000-4000-8000-00000000e3c3
level: critical
correlation:
  type: event_count
  rules: [auth-fail-marker]
  group-by: [User]
  timespan: 60s
  condition:
    gte: 50
`;

const HOSTS = 12;
const T0 = 1_795_000_000_000n * 1_000_000n;

const workers: WorkerProcess[] = [];
after(async () => {
  await Promise.all(workers.map((w) => w.kill()));
});

let seq = 0;
async function phase(
  t: Transport,
  topic: string,
  fails: number,
  marker: string,
  atMs: number,
): Promise<void> {
  const codec = projectCodec();
  const records: OutRecord[] = [];
  for (let h = 0; h < HOSTS; h++) {
    const host = `corr-host-${h}`;
    const cmds = [...Array.from({ length: fails }, () => 'su root -c auth-fail-marker'), `run ${marker}`];
    cmds.forEach((cmd, i) => {
      const e = sampleEvent({
        hostId: host,
        hostname: host,
        seq: BigInt(++seq),
        timeNs: T0 + BigInt(atMs + i * 500) * 1_000_000n,
        argv: cmd.split(' '),
      });
      records.push({ topic, key: host, value: codec.encode('dev.edr.v1.ExecveEvent', e) });
    });
  }
  const p = await t.producer();
  await p.publish(records);
  await p.close();
}

test('correlations fire exactly once across a worker restart (host-scoped and repartitioned)', async () => {
  const t = await testTransport('detector-corr');
  opened.push(t);
  const topics = testTopics(unique('dco'));
  await createTestTopics(t, topics);
  const dir = tempDir('edr-dco');
  const rulesDir = path.join(dir, 'rules');
  mkdirSync(rulesDir);
  writeFileSync(path.join(rulesDir, 'corr.yml'), RULES);
  const group = unique('edr-detector');
  const brokers = await testBrokers();
  const cfg = (name: string) =>
    writeConfig(dir, name, {
      kafka: { brokers, clientId: name, sessionTimeoutMs: 6000 },
      detectorId: name,
      groupId: group,
      topics,
      rules: { dir: rulesDir, pollMs: 500, topic: false },
      createTopics: false,
      correlation: { restoreTimeoutMs: 10_000 },
    });
  const a = new WorkerProcess(cfg('worker-a')).start();
  const b = new WorkerProcess(cfg('worker-b')).start();
  workers.push(a, b);
  const { alerts, consumption } = await collectAlerts(t, topics.alerts, unique('reader'));
  // The repartition topic is written in transactions by one producer per input partition: its tail can hold up to
  // one commit marker per producer, never consumed. Drained: input consumed, and the repartition group's commits
  // within that many markers of the end and no longer moving.
  let lastCommitted = '';
  const drained = async () => {
    if (!(await t.lag(group, topics.input)).every((l) => l.lag === 0)) return false;
    const corr = await t.lag(`${group}-correlate`, topics.correlation);
    const committed = JSON.stringify(corr.map((l) => l.committed));
    const still = committed === lastCommitted;
    lastCommitted = committed;
    if (!still) await new Promise((r) => setTimeout(r, 1500));
    return still && corr.every((l) => l.lag <= 6);
  };
  try {
    await waitFor(
      'both workers started',
      () => a.logged('detector started') === 1 && b.logged('detector started') === 1,
    );
    await phase(t, topics.input, 3, 'download-marker', 0);
    await waitFor('phase 1 consumed', drained, 60_000);
    assert.equal(alerts.length, 0, 'nothing fires before the restart');

    await a.kill('SIGKILL');
    const a2 = new WorkerProcess(a.configFile).start();
    workers.push(a2);
    await waitFor('the restarted worker', () => a2.logged('detector started') === 1);
    await phase(t, topics.input, 2, 'exec-marker', 10_000);
    await waitFor(`${2 * HOSTS + 1} correlation alerts`, () => alerts.length >= 2 * HOSTS + 1, 120_000).catch(
      (err) => {
        throw new Error(
          `${(err as Error).message}: got ${alerts.length}\n${[a, b, a2].map((w) => w.log.slice(-4000)).join('\n---\n')}`,
        );
      },
    );
    await waitFor('everything consumed', drained, 60_000);
    await new Promise((r) => setTimeout(r, 2000));
    const count = new Map<string, number>();
    for (const { alert } of alerts) {
      const k = alert.ruleId.endsWith('e3c3') ? alert.ruleId : `${alert.ruleId} ${alert.event.hostId}`;
      count.set(k, (count.get(k) ?? 0) + 1);
    }
    for (let h = 0; h < HOSTS; h++) {
      assert.equal(
        count.get(`5d3c0e0a-0000-4000-8000-00000000e3c1 corr-host-${h}`),
        1,
        `event_count host ${h}`,
      );
      assert.equal(count.get(`5d3c0e0a-0000-4000-8000-00000000e3c2 corr-host-${h}`), 1, `temporal host ${h}`);
    }
    assert.equal(count.get('5d3c0e0a-0000-4000-8000-00000000e3c3'), 1, 'the repartitioned correlation');
    assert.equal(alerts.length, 2 * HOSTS + 1, 'no base-rule alerts (generate: false), nothing twice');
    const byUser = alerts.find((x) => x.alert.ruleId.endsWith('e3c3'))!.alert;
    assert.deepEqual(byUser.matchedFields.find((f) => f.field === 'User')?.value, 'alice');
  } finally {
    await consumption.stop();
    await Promise.all(workers.map((w) => w.kill('SIGTERM')));
    await t.close();
  }
});
