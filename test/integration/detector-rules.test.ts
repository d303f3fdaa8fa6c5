/**
 * Fleet-wide hot rules: two worker processes follow the rules topic. A rule pushed with `edr rules push` during
 * the run produces alerts on both workers (with the version `edr rules list` shows); a malformed rule in the
 * same push is rejected and reported while the good one applies; a signed but malformed record put on the topic
 * directly is rejected by the workers (an unsigned one is refused); a signed deletion (`push --delete`) stops the
 * rule.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { readSigningKey, signRecord } from '../../detector/rule-signing.js';
import { freePort } from '../../infra/kafka/broker.js';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import type { Transport } from '../../infra/transport.js';
import { testBrokers, testTransport } from '../harness/broker.js';
import {
  collectAlerts,
  createTestTopics,
  tempDir,
  testTopics,
  WorkerProcess,
  writeConfig,
} from '../harness/detector.js';
import { edr, produceMarked } from '../harness/edr-cli.js';
import { unique, waitFor } from '../harness/names.js';

// Closed even when a test fails, or the open clients would keep the test process alive.
const opened: KafkaTransport[] = [];
after(async () => {
  await Promise.all(opened.map((t) => t.close()));
});

const RULE_ID = '5d3c0e0a-0000-4000-8000-00000000e101';
const GOOD = `title: Hot pushed rule
id: ${RULE_ID}
status: test
level: medium
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    CommandLine|contains: 'hot-marker'
  condition: selection
`;
const MALFORMED = `title: Broken rule
id: 5d3c0e0a-0000-4000-8000-00000000e102
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    CommandLine|nosuchmodifier: 'x'
  condition: selection
`;

const workers: WorkerProcess[] = [];
after(async () => {
  await Promise.all(workers.map((w) => w.kill()));
});

function loaded(w: WorkerProcess, version: string): boolean {
  return w.log
    .split('\n')
    .some((l) => l.includes('"msg":"rule set loaded"') && l.includes(`"version":"${version}"`));
}

/** A W3C trace context per event, as a collector would set it. */
function traceparent(n: number): string {
  return `00-${n.toString(16).padStart(32, '0')}-${'ab'.repeat(8)}-01`;
}

const produce = (t: Transport, topic: string, n: number, marker: string) =>
  produceMarked(t, topic, n, marker, { headers: (seq) => ({ traceparent: traceparent(seq) }) });

test('rules pushed during a run apply on every worker; malformed ones are rejected; signed deletions stop them', async () => {
  const t = await testTransport('detector-rules');
  opened.push(t);
  const topics = testTopics(unique('drl'));
  await createTestTopics(t, topics);
  const dir = tempDir('edr-drl');
  const watched = path.join(dir, 'watched');
  mkdirSync(watched);
  const group = unique('edr-detector');
  const brokers = await testBrokers();
  const metricsPort = await freePort();
  const keys = path.join(dir, 'keys');
  const keygen = edr(['rules', 'keygen', '--out', keys]);
  assert.equal(keygen.code, 0, keygen.out);
  const signingKey = path.join(keys, 'rules-signing.key');
  const publicKey = path.join(keys, 'rules-signing.pub');
  const cfg = (name: string) =>
    writeConfig(dir, name, {
      kafka: { brokers, clientId: name, sessionTimeoutMs: 6000 },
      detectorId: name,
      groupId: group,
      topics,
      createTopics: false,
      // Each worker also watches a directory (the same content on every host).
      rules: { dir: watched, pollMs: 500, publicKeys: [publicKey] },
      // Counts rule alerts only: the pipeline alerts pushes raise are detector-pipeline-health's.
      health: { enabled: false },
      ...(name === 'worker-a' ? { metrics: { port: metricsPort } } : {}),
    });
  const a = new WorkerProcess(cfg('worker-a')).start();
  const b = new WorkerProcess(cfg('worker-b')).start();
  workers.push(a, b);
  const { alerts, consumption } = await collectAlerts(t, topics.alerts, unique('reader'));
  try {
    await waitFor('both workers to own partitions', async () => {
      const lag = await t.lag(group, topics.input);
      return a.logged('detector started') === 1 && b.logged('detector started') === 1 && lag.length === 6;
    });
    // Before the push: nothing matches.
    await produce(t, topics.input, 64, 'hot-marker');
    await waitFor('the first events consumed', async () =>
      (await t.lag(group, topics.input)).every((l) => l.lag === 0),
    );
    assert.equal(alerts.length, 0);

    // A malformed record straight on the topic, signed: rejected by the workers, the rest applies. Unsigned, it
    // is refused before it is even parsed.
    const p = await t.producer();
    const broken = Buffer.from('title: [unclosed');
    const headers = signRecord(readSigningKey(signingKey), {
      topic: topics.rules,
      key: Buffer.from('broken-direct'),
      version: 1n,
      op: 'put',
      value: broken,
    });
    await p.publish([
      { topic: topics.rules, key: 'broken-direct', value: broken, headers },
      { topic: topics.rules, key: 'unsigned-direct', value: Buffer.from(GOOD) },
    ]);
    await p.close();

    const list = () =>
      edr([
        'rules',
        'list',
        '--brokers',
        brokers.join(','),
        '--topic',
        topics.rules,
        '--public-key',
        publicKey,
      ]);
    const push = (from: string, ...more: string[]) =>
      edr([
        'rules',
        'push',
        from,
        '--brokers',
        brokers.join(','),
        '--topic',
        topics.rules,
        '--signing-key',
        signingKey,
        ...more,
      ]);
    const rulesDir = path.join(dir, 'rules');
    mkdirSync(rulesDir);
    writeFileSync(path.join(rulesDir, 'good.yml'), GOOD);
    writeFileSync(path.join(rulesDir, 'broken.yml'), MALFORMED);
    const pushed = push(rulesDir);
    assert.equal(pushed.code, 1, pushed.out);
    assert.match(pushed.out, /REJECTED\s+broken\.yml:\d+/);
    assert.match(pushed.out, new RegExp(`added\\s+good\\.yml:\\d+\\s+${RULE_ID}`));
    assert.match(pushed.out, /1 published, 0 unchanged, 0 deleted, 1 rejected/);

    const listed = list();
    assert.equal(listed.code, 0, listed.out);
    assert.match(listed.out, new RegExp(RULE_ID));
    assert.match(listed.out, /REJECTED\s+rules-topic:broken-direct/);
    assert.match(listed.out, /REFUSED\s+rules-topic:unsigned-direct@\d+\s+unsigned/);
    const version = /rule-set version ([0-9a-f]+)/.exec(listed.out)?.[1];
    assert.ok(version, listed.out);

    await waitFor('both workers to load the pushed rule', () => [a, b].every((w) => loaded(w, version)));
    assert.ok(a.logged('rule rejected') >= 1 && b.logged('rule rejected') >= 1);
    assert.ok(a.logged('rule record refused') >= 1 && b.logged('rule record refused') >= 1);
    await produce(t, topics.input, 64, 'hot-marker');
    await waitFor('64 alerts', () => alerts.length >= 64);
    const by = new Set(alerts.map((x) => x.alert.detectorId));
    assert.deepEqual([...by].sort(), ['worker-a', 'worker-b'], 'alerts from both workers');
    assert.deepEqual(new Set(alerts.map((x) => x.alert.ruleSetVersion)), new Set([version]));
    assert.deepEqual(new Set(alerts.map((x) => x.alert.ruleId)), new Set([RULE_ID]));
    for (const { alert, record } of alerts) {
      assert.equal(
        record.headers['traceparent']?.toString(),
        traceparent(Number(alert.event.seq)),
        'trace continues',
      );
    }
    // The Prometheus endpoint of worker A.
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    for (const m of [
      'edr_detector_events_consumed',
      'edr_detector_alerts_emitted',
      'edr_detector_rule_matches',
      'edr_detector_evaluation_ms',
      `edr_detector_rule_set_version{version="${version}"`,
    ]) {
      assert.ok(text.includes(m), `${m} in /metrics`);
    }
    assert.match(text, new RegExp(`edr_detector_rule_matches_total\\{ruleId="${RULE_ID}"[^}]*\\} \\d+`));

    // Pushing again changes nothing; a signed deletion stops the rule everywhere.
    const again = push(rulesDir);
    assert.match(again.out, /0 published, 1 unchanged/);
    mkdirSync(path.join(dir, 'nothing'));
    const del = push(path.join(dir, 'nothing'), '--delete', RULE_ID);
    assert.match(del.out, new RegExp(`deleted\\s+${RULE_ID}`), del.out);
    const emptied = list();
    const v2 = /rule-set version ([0-9a-f]+)/.exec(emptied.out)?.[1];
    assert.ok(v2 && v2 !== version, emptied.out);
    await waitFor('both workers to drop the rule', () => [a, b].every((w) => loaded(w, v2)));
    await produce(t, topics.input, 64, 'hot-marker');
    await waitFor('the last events consumed', async () =>
      (await t.lag(group, topics.input)).every((l) => l.lag === 0),
    );
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(alerts.length, 64, 'no alert after the tombstone');

    // A rule file dropped into the watched directory is picked up within seconds by both workers.
    const DIR_ID = '5d3c0e0a-0000-4000-8000-00000000e103';
    const loads = [a, b].map((w) => w.logged('rule set loaded'));
    writeFileSync(
      path.join(watched, 'dir.yml'),
      GOOD.replace(RULE_ID, DIR_ID).replace('hot-marker', 'dir-marker'),
    );
    const t0 = Date.now();
    await waitFor('both workers to load the directory rule', () =>
      [a, b].every((w, i) => w.logged('rule set loaded') > loads[i]!),
    );
    const pickedUpMs = Date.now() - t0;
    await produce(t, topics.input, 64, 'dir-marker');
    await waitFor('64 more alerts', () => alerts.length >= 128);
    assert.ok(alerts.slice(64).every((x) => x.alert.ruleId === DIR_ID));
    process.stderr.write(`# directory change picked up by both workers in ${pickedUpMs} ms\n`);
  } finally {
    await consumption.stop();
    await Promise.all(workers.map((w) => w.kill('SIGTERM')));
    await t.close();
  }
});
