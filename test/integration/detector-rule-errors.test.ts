/**
 * A rule that throws on one crafted value, with a real broker and a worker evaluating on a thread: the poisoned
 * record is dead-lettered with the rule and the error in the batch's transaction, the good records around it
 * alert exactly once, and the rule stays enabled (it alerts on the next good record). Only once it has thrown on
 * events of three hosts is it disabled and reported on the audit topic.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { alertId } from '../../detector/alerts.js';
import { replay } from '../../detector/replay.js';
import { RuleStore } from '../../detector/rule-store.js';
import { detectorMetrics } from '../../detector/telemetry.js';
import { DetectorWorker } from '../../detector/worker.js';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import type { Logger } from '../../infra/log.js';
import { deadLetterHeaders } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import { sampleEvent } from '../fixtures/events.js';
import { testTransport } from '../harness/broker.js';
import {
  collectRecords,
  containsRule,
  createTestTopics,
  drained,
  tempDir,
  testTopics,
  watchOutputs,
} from '../harness/detector.js';
import { unique, waitFor } from '../harness/names.js';
import { adjustRules, HOOK_URL, POISON, THROWING_RULE_ID } from '../harness/throwing-rule.js';

const opened: Array<{ close(): Promise<void> }> = [];
after(async () => {
  for (const c of opened.reverse()) await c.close().catch(() => {});
});

const noop = () => {};
const quiet: Logger = { debug: noop, info: noop, warn: noop, error: noop, child: () => quiet };

test('a poisoned record is dead-lettered with its reason, the good ones alert exactly once, the rule stays until 3 hosts', async () => {
  const t: KafkaTransport = await testTransport('rule-errors');
  opened.push(t);
  const topics = testTopics(unique('rerr'));
  await createTestTopics(t, topics, 2);
  const store = new RuleStore({ log: quiet });
  store.applyTopic([{ key: THROWING_RULE_ID, value: containsRule(THROWING_RULE_ID, 'edr-known-bad') }]);
  const group = unique('edr-detector');
  const worker = new DetectorWorker({
    transport: t,
    store,
    groupId: group,
    detectorId: 'rule-errors',
    topics,
    changelogPartitions: 2,
    maxBatchRecords: 100,
    partitionConcurrency: 1,
    members: 1,
    evaluationThreads: 1,
    evalThreadHook: HOOK_URL,
    maxGroups: 100,
    restoreTimeoutMs: 5000,
    metrics: detectorMetrics(),
    log: quiet,
  });
  await worker.start();
  opened.push({ close: () => worker.stop() });

  const codec = projectCodec();
  const producer = await t.producer();
  opened.push(producer);
  let seq = 0n;
  const expected = new Set<string>();
  const send = async (host: string, poisoned: boolean) => {
    const e = sampleEvent({
      hostId: host,
      hostname: host,
      seq: ++seq,
      argv: ['sh', '-c', `echo edr-known-bad ${seq}${poisoned ? ` ${POISON}` : ''}`],
    });
    if (!poisoned) expected.add(alertId(THROWING_RULE_ID, e));
    return { topic: topics.input, key: host, value: codec.encode('dev.edr.v1.ExecveEvent', e) };
  };
  // One host: good, good, poisoned, good, good.
  await producer.publish([
    await send('host-1', false),
    await send('host-1', false),
    await send('host-1', true),
    await send('host-1', false),
    await send('host-1', false),
  ]);
  const { alerts, dead, close } = await watchOutputs(t, topics);
  opened.push({ close });
  await waitFor('4 alerts and 1 dead letter', () => alerts.length >= 4 && dead.length >= 1, 60_000);
  await drained(t, group, topics.input);
  assert.deepEqual(new Set(alerts.map((a) => a.alert.alertId)), expected);
  assert.equal(alerts.length, 4, 'each good record alerts exactly once');
  assert.equal(dead.length, 1);
  const d = dead[0]!;
  assert.equal(d.headers[deadLetterHeaders.errorCode]?.toString(), 'EDR_DETECTOR_RULE_THREW');
  assert.match(
    d.headers[deadLetterHeaders.error]?.toString() ?? '',
    new RegExp(`rule ${THROWING_RULE_ID} threw: cannot evaluate the crafted value`),
  );
  assert.equal(d.headers[deadLetterHeaders.topic]?.toString(), topics.input);
  assert.ok(d.value?.includes(POISON), 'the original bytes');
  assert.equal(store.current.disabled.size, 0, 'one record disables no rule');

  // Still enabled: the next good record alerts.
  await producer.publish([await send('host-1', false)]);
  await waitFor('the next alert', () => alerts.length >= 5, 30_000);

  // Two more hosts: the third distinct host disables the rule, reported on the audit topic.
  const au = await collectRecords(t, topics.audit);
  opened.push({ close: () => au.consumption.stop() });
  const audit = au.records;
  await producer.publish([await send('host-2', true)]);
  await waitFor('a second dead letter', () => dead.length >= 2, 30_000);
  assert.equal(store.current.disabled.size, 0, 'two hosts disable no rule');
  await producer.publish([await send('host-3', true)]);
  await waitFor('the rule-disabled report', () => audit.length >= 1, 30_000);
  assert.ok(store.current.disabled.has(THROWING_RULE_ID));
  const report = codec.decodeAs('dev.edr.v1.CollectorRecord', audit[0]!.value!);
  assert.match(report.message ?? '', new RegExp(`disabled rule ${THROWING_RULE_ID}.*3 hosts`));
  await waitFor('the third dead letter (same transaction as the report)', () => dead.length >= 3, 30_000);
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(dead.length, 3);
});

test('edr replay skips and reports a record a rule throws on, and completes with the other matches', async () => {
  const t: KafkaTransport = await testTransport('replay-rule-errors');
  opened.push(t);
  const topics = testTopics(unique('rerr-replay'));
  await createTestTopics(t, topics, 1);
  const rulesDir = tempDir('edr-rerr-replay');
  writeFileSync(path.join(rulesDir, 'rule.yml'), containsRule(THROWING_RULE_ID, 'edr-known-bad'));
  const codec = projectCodec();
  const events = [1, 2, 3].map((i) =>
    sampleEvent({
      seq: BigInt(i),
      argv: ['sh', '-c', `echo edr-known-bad ${i}${i === 2 ? ` ${POISON}` : ''}`],
    }),
  );
  const producer = await t.producer();
  await producer.publish(
    events.map((e) => ({
      topic: topics.audit,
      key: e.hostId,
      value: codec.encode('dev.edr.v1.ExecveEvent', e),
    })),
  );
  await producer.close();
  const res = await replay({
    transport: t,
    rulesDir,
    topic: topics.audit,
    alertsTopic: topics.alerts,
    fromMs: 0,
    toMs: undefined,
    hosts: undefined,
    runId: unique('run'),
    parallel: 1,
    adjustRules,
  });
  assert.equal(res.completed, true);
  assert.equal(res.matchesByRule.get(THROWING_RULE_ID), 2);
  assert.equal(res.skipped, 1);
  assert.match(
    res.skippedRecords[0] ?? '',
    new RegExp(`@1: rule ${THROWING_RULE_ID} threw: cannot evaluate`),
  );
});
