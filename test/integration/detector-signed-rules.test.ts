/**
 * Signed rules on the rules topic, against a real broker and a detector process. The detector trusts two keys (a
 * rotation): a rule pushed with either is accepted and alerts. Records that are unsigned, signed with a key it
 * does not trust, altered after signing, an older validly signed version replayed after a newer one, a bare
 * tombstone, and an unsigned filter that would switch the rule off are each refused: reported on the audit topic
 * with their reason, offset and hash, logged and counted, and the running rule set is unchanged (the detector
 * still alerts with the rule it ran). A signed filter and a signed deletion do apply.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { generateKeyFiles, readSigningKey, signRecord } from '../../detector/rule-signing.js';
import { readRulesTopic } from '../../detector/rules-topic.js';
import { freePort } from '../../infra/kafka/broker.js';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import type { OutRecord, Transport } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import type { Alert, RuleRefused } from '../../schemas/types.js';
import { testBrokers, testTransport } from '../harness/broker.js';
import * as harness from '../harness/detector.js';
import { edr, produceMarked } from '../harness/edr-cli.js';
import { unique, waitFor } from '../harness/names.js';

const opened: KafkaTransport[] = [];
const workers: harness.WorkerProcess[] = [];
after(async () => {
  await Promise.all(workers.map((w) => w.kill()));
  await Promise.all(opened.map((t) => t.close()));
});

const R1 = '5d3c0e0a-0000-4000-8000-00000000f101';
const R2 = '5d3c0e0a-0000-4000-8000-00000000f102';
/** The filter switching R1 off for every event with `sig-one` (all of them). */
const FILTER = `title: switch R1 off
id: 5d3c0e0a-0000-4000-8000-00000000f1f1
logsource:
  product: linux
  category: process_creation
filter:
  rules:
    - ${R1}
  quiet:
    CommandLine|contains: 'sig-one'
  condition: not quiet
`;

/** The RuleRefused records on the audit topic (other records there are skipped). */
async function collectRefusals(
  t: Transport,
  topic: string,
): Promise<{ refusals: RuleRefused[]; stop: () => Promise<void> }> {
  const codec = projectCodec();
  const refusals: RuleRefused[] = [];
  const c = await t.consume({
    groupId: unique('audit-reader'),
    topics: [topic],
    start: 'earliest',
    handler: async (batch) => {
      for (const r of batch.records) {
        const d = codec.decode(r.value ?? Buffer.alloc(0));
        if (d.name === 'dev.edr.v1.RuleRefused') refusals.push(d.value);
      }
    },
  });
  return { refusals, stop: () => c.stop() };
}

test('a detector runs only rules signed by a trusted key, at a rising version, and reports what it refuses', async () => {
  const t = await testTransport('detector-signed');
  opened.push(t);
  const topics = harness.testTopics(unique('dsr'));
  await harness.createTestTopics(t, topics, 3);
  const dir = harness.tempDir('edr-dsr');
  const brokers = (await testBrokers()).join(',');
  // Two trusted keys (old and new during a rotation) and one nobody trusts.
  const oldKey = generateKeyFiles(path.join(dir, 'old'));
  const newKey = generateKeyFiles(path.join(dir, 'new'));
  const stranger = generateKeyFiles(path.join(dir, 'stranger'));
  const metricsPort = await freePort();
  const group = unique('edr-detector');
  const config = harness.writeConfig(dir, 'worker', {
    kafka: { brokers: brokers.split(','), clientId: 'worker', sessionTimeoutMs: 6000 },
    detectorId: 'signed-worker',
    groupId: group,
    topics,
    createTopics: false,
    evaluationThreads: 0,
    rules: { publicKeys: [oldKey.publicKey, newKey.publicKey] },
    // Counts rule alerts only: the pipeline alerts pushes raise are detector-pipeline-health's.
    health: { enabled: false },
    metrics: { port: metricsPort },
  });
  const w = new harness.WorkerProcess(config).start();
  workers.push(w);
  const { alerts, consumption } = await harness.collectAlerts(t, topics.alerts, unique('reader'));
  const audit = await collectRefusals(t, topics.audit);
  const rulesDir = path.join(dir, 'rules');
  const push = (key: string, ...more: string[]) =>
    edr([
      'rules',
      'push',
      rulesDir,
      '--brokers',
      brokers,
      '--topic',
      topics.rules,
      '--signing-key',
      key,
      ...more,
    ]);
  const setRules = (files: Record<string, string>) => {
    rmSync(rulesDir, { recursive: true, force: true });
    mkdirSync(rulesDir);
    for (const [name, text] of Object.entries(files)) writeFileSync(path.join(rulesDir, name), text);
  };
  const ruleOf = (xs: Array<{ alert: Alert }>) => [...new Set(xs.map((x) => x.alert.ruleId))].sort();
  /**
   * Produces 12 events with `marker`, waits until the worker consumed them and `expected` alerts arrived (and a
   * moment for any beyond); returns the alerts they raised.
   */
  const alertsFor = async (marker: string, expected: number): Promise<Array<{ alert: Alert }>> => {
    const before = alerts.length;
    await produceMarked(t, topics.input, 12, marker, { hosts: 8 });
    await waitFor(`${marker} events consumed`, async () =>
      (await t.lag(group, topics.input)).every((l) => l.lag === 0),
    );
    await waitFor(`${expected} alerts`, () => alerts.length - before >= expected);
    await new Promise((r) => setTimeout(r, 1000));
    return alerts.slice(before);
  };
  const list = () =>
    edr([
      'rules',
      'list',
      '--brokers',
      brokers,
      '--topic',
      topics.rules,
      '--public-key',
      oldKey.publicKey,
      '--public-key',
      newKey.publicKey,
    ]);
  /** The rule-set version of what the topic holds, as `edr rules list` computes it for the trusted keys. */
  const topicVersion = (): string => {
    const l = list();
    const v = /rule-set version ([0-9a-f]+)/.exec(l.out)?.[1];
    assert.ok(v, l.out);
    return v;
  };
  const loaded = (version: string) =>
    w.log
      .split('\n')
      .some((l) => l.includes('"msg":"rule set loaded"') && l.includes(`"version":"${version}"`));
  try {
    await waitFor('the worker started', () => w.logged('detector started') === 1, 60_000);
    assert.equal(w.logged('following the rules topic'), 1);

    // Push R1 weak (matches nothing we send), then R1 strong: both signed with the old key.
    setRules({ 'r1.yml': harness.containsRule(R1, 'never-sent-marker') });
    assert.equal(push(oldKey.privateKey).code, 0);
    setRules({ 'r1.yml': harness.containsRule(R1, 'sig-one') });
    const strong = push(oldKey.privateKey);
    assert.equal(strong.code, 0, strong.out);
    assert.match(strong.out, new RegExp(`changed\\s+r1\\.yml:\\d+\\s+${R1}`));
    const v1 = topicVersion();
    await waitFor('R1 loaded', () => loaded(v1));
    const accepted = await alertsFor('sig-one', 12);
    assert.equal(accepted.length, 12, 'the signed rule alerts');
    assert.deepEqual(ruleOf(accepted), [R1]);
    const loads = w.logged('rule set loaded');

    // The hostile records, straight on the topic.
    const onTopic = await readRulesTopic(t, topics.rules);
    const weak = onTopic.find((r) => r.value?.toString().includes('never-sent-marker'))!;
    assert.ok(weak, 'the weak version is on the topic');
    const replacing = Buffer.from(harness.containsRule(R1, 'never-sent-marker'));
    const sign = (file: string, value: Buffer, version: bigint, key = R1) =>
      signRecord(readSigningKey(file), {
        topic: topics.rules,
        key: Buffer.from(key),
        version,
        op: 'put',
        value,
      });
    const far = BigInt(Date.now()) * 1000n + 10_000_000n;
    const tampered = Buffer.from(replacing);
    tampered.write('sig-one-xxxxxxxx', tampered.indexOf('never-sent-marker'));
    const hostile: Array<{ reason: string; record: OutRecord }> = [
      { reason: 'unsigned', record: { topic: topics.rules, key: R1, value: replacing } },
      {
        reason: 'unknown-key',
        record: {
          topic: topics.rules,
          key: R1,
          value: replacing,
          headers: sign(stranger.privateKey, replacing, far),
        },
      },
      {
        // Signed, then the YAML altered.
        reason: 'bad-signature',
        record: {
          topic: topics.rules,
          key: R1,
          value: tampered,
          headers: sign(oldKey.privateKey, replacing, far),
        },
      },
      {
        // The older, validly signed version replayed after the newer one.
        reason: 'stale-version',
        record: {
          topic: topics.rules,
          key: R1,
          value: weak.value,
          headers: Object.fromEntries(Object.entries(weak.headers)),
        },
      },
      { reason: 'bare-tombstone', record: { topic: topics.rules, key: R1, value: null } },
      // Its key also carries a terminal escape sequence, which `edr rules list` must not pass to the terminal.
      {
        reason: 'unsigned',
        record: { topic: topics.rules, key: 'filter-r1\x1b[2J', value: Buffer.from(FILTER) },
      },
    ];
    const end = (await t.endOffsets(topics.rules))[0]!.offset;
    const p = await t.producer();
    await p.publish(hostile.map((h) => h.record));
    await p.close();
    await waitFor('six refusals on the audit topic', () => audit.refusals.length >= 6);
    const got = audit.refusals.slice().sort((a, b) => Number(a.offset - b.offset));
    assert.deepEqual(
      got.map((r) => [r.reason, Number(r.offset), r.ruleId]),
      hostile.map((h, i) => [h.reason, end + i, h.record.key]),
    );
    for (const [i, r] of got.entries()) {
      const value = hostile[i]!.record.value;
      assert.equal(r.detectorId, 'signed-worker');
      assert.equal(r.topic, topics.rules);
      assert.equal(r.valueSha256, value === null ? null : createHash('sha256').update(value).digest('hex'));
    }
    assert.equal(got[1]!.keyId, stranger.keyId);
    assert.ok(got[3]!.acceptedVersion !== null && got[3]!.version! < got[3]!.acceptedVersion);
    assert.equal(w.logged('rule record refused'), 6);
    // The running rule set is unchanged: no new snapshot, and R1 still alerts on every event.
    assert.equal(w.logged('rule set loaded'), loads);
    const still = await alertsFor('sig-one', 12);
    assert.equal(still.length, 12, 'the previous rule still alerts');
    assert.deepEqual(ruleOf(still), [R1]);
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    assert.match(metrics, /edr_detector_rules_refused_total\{reason="unsigned"[^}]*\} 2/);
    assert.match(metrics, /edr_detector_rules_refused_total\{reason="stale-version"[^}]*\} 1/);

    // `edr rules list` shows the key and version of what runs, and flags what a detector refuses.
    const listed = list();
    assert.equal(listed.code, 0, listed.out);
    assert.match(listed.out, new RegExp(`${R1} .*\\[key ${oldKey.keyId}, version \\d+\\]`));
    for (const h of hostile.slice(0, -1))
      assert.match(listed.out, new RegExp(`REFUSED\\s+rules-topic:${h.record.key}@\\d+\\s+${h.reason}`));
    assert.ok(listed.out.includes('REFUSED   rules-topic:filter-r1\\x1b[2J@'), listed.out);
    assert.ok(!listed.out.includes('\x1b'), 'no escape sequence reaches the terminal');
    assert.match(listed.out, /1 rules on .*, 0 filters; .*; 6 records refused/);

    // Rotation: the new key's pushes apply beside the old key's rules.
    setRules({
      'r1.yml': harness.containsRule(R1, 'sig-one'),
      'r2.yml': harness.containsRule(R2, 'sig-two'),
    });
    // The push is told the old key, so it sees R1 as it runs and signs it again with the new one.
    const rotated = push(newKey.privateKey, '--public-key', oldKey.publicKey);
    assert.equal(rotated.code, 0, rotated.out);
    assert.match(rotated.out, new RegExp(`re-signed\\s+r1\\.yml:\\d+\\s+${R1}`));
    assert.match(rotated.out, new RegExp(`added\\s+r2\\.yml:\\d+\\s+${R2}`));
    const v2 = topicVersion();
    await waitFor('R2 loaded', () => loaded(v2));
    assert.deepEqual(ruleOf(await alertsFor('sig-two', 12)), [R2]);

    // The same filter, signed, does switch R1 off; a signed deletion stops R2.
    setRules({ 'filter.yml': FILTER });
    const filtered = push(newKey.privateKey, '--delete', R2);
    assert.equal(filtered.code, 0, filtered.out);
    assert.match(filtered.out, new RegExp(`deleted\\s+${R2}`));
    assert.match(
      list().out,
      new RegExp(`filter\\s+switch R1 off\\s+\\[key ${newKey.keyId}, version \\d+\\]`),
    );
    const v3 = topicVersion();
    await waitFor('the filter and the deletion loaded', () => loaded(v3));
    assert.equal((await alertsFor('sig-one sig-two', 0)).length, 0, 'R1 filtered, R2 deleted');
    assert.equal(audit.refusals.length, 6, 'nothing pushed with a trusted key was refused');
  } finally {
    await consumption.stop();
    await audit.stop();
    await w.kill('SIGTERM');
  }
});
