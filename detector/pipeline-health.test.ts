import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Logger } from '../infra/log.js';
import { MemoryTransport } from '../infra/memory-transport.js';
import type { InRecord, OutRecord } from '../infra/transport.js';
import { projectCodec } from '../schemas/codec.js';
import type { Alert } from '../schemas/types.js';
import { sampleCollectorRecord, sampleEvent, sampleHeartbeat } from '../test/fixtures/events.js';
import { containsRule } from '../test/harness/detector.js';
import { adjustRules, POISON, THROWING_RULE_ID } from '../test/harness/throwing-rule.js';
import { HEALTH_RULES, healthTransform, SilentHosts } from './pipeline-health.js';
import { RuleStore } from './rule-store.js';
import { acceptedReport, refusalReport } from './rules-topic.js';
import { detectorMetrics } from './telemetry.js';
import { DetectorWorker } from './worker.js';

const noop = () => {};
const quiet: Logger = { debug: noop, info: noop, warn: noop, error: noop, child: () => quiet };
const codec = projectCodec();

/** Audit records as the health stage reads them. */
const asRead = (values: Array<Buffer | null>): InRecord[] =>
  values.map((value, offset) => ({
    topic: 'audit',
    partition: 0,
    offset,
    key: null,
    value,
    headers: {},
    timestampMs: 0,
  }));

function alertsOf(records: readonly InRecord[]): Alert[] {
  const errors: unknown[] = [];
  const out = healthTransform(codec, { alertsTopic: 'alerts', detectorId: 'd1' }, records, (e) =>
    errors.push(e),
  );
  assert.deepEqual(errors, []);
  assert.ok(out.every((r) => r.topic === 'alerts'));
  return out.map((r) => codec.decodeAs('dev.edr.v1.Alert', r.value!));
}

const field = (a: Alert, f: string) => a.matchedFields.find((m) => m.field === f)?.value;

test('a LOSS record with drops and a STOPPED record raise pipeline alerts about their host; events, loss-free records and garbage none', () => {
  const loss = sampleCollectorRecord({
    losses: {
      kernelSeen: 100n,
      kernelRingFull: 7n,
      kernelTruncated: 0n,
      kernelReadErrors: 0n,
      queueDropped: 2n,
      spoolDropped: 3n,
    },
  });
  const noLoss = sampleCollectorRecord({
    losses: {
      kernelSeen: 100n,
      kernelRingFull: 0n,
      kernelTruncated: 0n,
      kernelReadErrors: 0n,
      queueDropped: 0n,
      spoolDropped: 0n,
    },
  });
  const stopped = sampleCollectorRecord({ kind: 'STOPPED', losses: null, lastSeq: 42n, hostId: 'h2' });
  const records = asRead([
    codec.encode('dev.edr.v1.CollectorRecord', loss),
    codec.encode('dev.edr.v1.ExecveEvent', sampleEvent()),
    codec.encode('dev.edr.v1.CollectorRecord', noLoss),
    Buffer.from('not avro'),
    null,
    codec.encode('dev.edr.v1.CollectorRecord', sampleCollectorRecord({ kind: 'STARTED', losses: null })),
    codec.encode('dev.edr.v1.CollectorRecord', stopped),
  ]);
  const alerts = alertsOf(records);
  assert.deepEqual(
    alerts.map((a) => [a.ruleId, a.event.hostId, a.ruleLevel]),
    [
      [HEALTH_RULES.loss.id, loss.hostId, 'high'],
      [HEALTH_RULES.stopped.id, 'h2', 'high'],
    ],
  );
  assert.deepEqual(
    ['kernelRingFull', 'queueDropped', 'spoolDropped'].map((f) => field(alerts[0]!, f)),
    ['7', '2', '3'],
  );
  assert.equal(field(alerts[1]!, 'lastSeq'), '42');
  // Read again (a redelivery, another worker): the same alert ids, for the sinks' dedup.
  assert.deepEqual(
    alertsOf(records).map((a) => a.alertId),
    alerts.map((a) => a.alertId),
  );
});

test('a rule disabled on a worker (it threw on 3 hosts) becomes a pipeline alert through its audit report', async () => {
  const store = new RuleStore({ log: quiet });
  store.applyTopic([{ key: THROWING_RULE_ID, value: containsRule(THROWING_RULE_ID, 'needle') }]);
  adjustRules(store.current.rules);
  const w = new DetectorWorker({
    evaluationThreads: 0,
    transport: new MemoryTransport(),
    store,
    groupId: 'g',
    detectorId: 'worker-7',
    topics: {
      input: 'in',
      alerts: 'alerts',
      audit: 'audit',
      deadLetter: 'dlq',
      correlation: 'c',
      changelog: 's',
    },
    changelogPartitions: 1,
    maxBatchRecords: 100,
    partitionConcurrency: 1,
    members: 1,
    maxGroups: 10,
    restoreTimeoutMs: 100,
    metrics: detectorMetrics(),
    log: quiet,
  });
  const poisoned = ['h1', 'h2', 'h3'].map((hostId) =>
    codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ hostId, argv: [POISON, 'needle'] })),
  );
  const batch = asRead(poisoned).map((r) => ({ ...r, topic: 'in' }));
  const out: OutRecord[] = await w.transform({
    topic: 'in',
    partition: 0,
    records: batch,
    fetchedFrom: 0,
    signal: new AbortController().signal,
    ack() {},
  });
  await w.stop();
  const audit = out.filter((r) => r.topic === 'audit');
  assert.equal(audit.length, 1, 'the worker reported the disabled rule');
  const [alert, ...rest] = alertsOf(asRead(audit.map((r) => r.value)));
  assert.equal(rest.length, 0);
  assert.equal(alert!.ruleId, HEALTH_RULES.ruleDisabled.id);
  assert.equal(alert!.event.hostId, 'worker-7');
  assert.equal(field(alert!, 'disabledRuleId'), THROWING_RULE_ID);
  assert.match(field(alert!, 'reason') ?? '', /3 hosts/);
});

test('rules-topic changes: each accepted record and each refusal raises an alert; the accepted ones with one id per record whichever worker reports', () => {
  const accepted = [
    { key: 'r1', value: 'title: x', version: 3n, keyId: 'k1', offset: 10 },
    { key: 'r2', value: null, version: 4n, keyId: 'k1', offset: 11 },
  ];
  const byWorker = (detectorId: string) =>
    alertsOf(asRead([acceptedReport(codec, { detectorId, auditTopic: 'audit' }, accepted).value as Buffer]));
  const a = byWorker('w1');
  assert.deepEqual(
    a.map((x) => [x.ruleId, field(x, 'changedRuleId'), field(x, 'version'), field(x, 'deleted')]),
    [
      [HEALTH_RULES.rulesChanged.id, 'r1', '3', 'false'],
      [HEALTH_RULES.rulesChanged.id, 'r2', '4', 'true'],
    ],
  );
  assert.deepEqual(
    byWorker('w2').map((x) => x.alertId),
    a.map((x) => x.alertId),
  );
  const refusal = refusalReport(
    codec,
    { detectorId: 'w1', auditTopic: 'audit' },
    {
      record: {
        ...asRead([Buffer.from('evil')])[0]!,
        topic: 'rules',
        key: Buffer.from('r-evil'),
        offset: 12,
      },
      reason: 'unsigned',
      detail: 'no signature',
    },
  );
  const [r] = alertsOf(asRead([refusal.value as Buffer]));
  assert.deepEqual(
    [r!.ruleId, r!.event.hostId, field(r!, 'refusedRuleId'), field(r!, 'reason')],
    [HEALTH_RULES.ruleRefused.id, 'w1', 'r-evil', 'unsigned'],
  );
});

test('a known host silent past silentAfterMs raises one alert per silence, on partitions owned; bounded; stopped hosts and future dates excluded', () => {
  let now = 1_000_000;
  const silent = new SilentHosts({ silentAfterMs: 10_000, maxHosts: 3, now: () => now });
  const beat = (hostId: string, lastSeq: bigint) =>
    sampleHeartbeat({ hostId, lastSeq, timeNs: BigInt(now) * 1_000_000n });
  silent.heartbeat(0, beat('quiet', 5n), now);
  silent.heartbeat(1, beat('elsewhere', 1n), now);
  silent.heartbeat(0, beat('stops', 1n), now);
  const owned = (p: number) => p === 0;
  now += 5000;
  silent.heartbeat(0, beat('alive', 1n), now);
  assert.equal(silent.evicted, 1, 'four hosts, at most three kept: the one heard from longest ago went');
  silent.stopped('stops');
  // A host dating its heartbeat an hour ahead is heard from now, not an hour later.
  silent.heartbeat(0, beat('liar', 1n), now + 3_600_000);
  assert.deepEqual(silent.due(owned, 'd1'), [], 'nobody silent yet');
  now += 6000;
  const first = silent.due(owned, 'd1');
  // 'quiet' was evicted (first heard), 'elsewhere' is not owned, 'stops' stopped: none of them.
  assert.deepEqual(first, []);
  now += 5000;
  const second = silent.due(owned, 'd1');
  assert.deepEqual(
    second.map((a) => [a.ruleId, a.event.hostId]),
    [
      [HEALTH_RULES.silent.id, 'alive'],
      [HEALTH_RULES.silent.id, 'liar'],
    ],
  );
  assert.equal(field(second[0]!, 'silentForMs'), '11000');
  assert.deepEqual(silent.due(owned, 'd1'), [], 'once per silence');
  // Heard from again, then silent again: a new alert (a new id, from the new heartbeat).
  silent.heartbeat(0, beat('alive', 9n), now);
  now += 10_001;
  const third = silent.due(owned, 'd1');
  assert.deepEqual(
    third.map((a) => a.event.hostId),
    ['alive'],
  );
  assert.notEqual(third[0]!.alertId, second[0]!.alertId);
});
