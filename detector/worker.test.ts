import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Logger } from '../infra/log.js';
import { MemoryTransport } from '../infra/memory-transport.js';
import { type Batch, deadLetterHeaders, type InRecord } from '../infra/transport.js';
import { projectCodec } from '../schemas/codec.js';
import { sampleCollectorRecord, sampleEvent } from '../test/fixtures/events.js';
import { containsRule } from '../test/harness/detector.js';
import { alertId } from './alerts.js';
import { pack, packBuffers } from './eval-pool.js';
import { evaluateRecords } from './evaluate.js';
import { RuleStore } from './rule-store.js';
import { detectorMetrics } from './telemetry.js';
import { DetectorWorker } from './worker.js';

const noop = () => {};
const quiet: Logger = { debug: noop, info: noop, warn: noop, error: noop, child: () => quiet };
const A = '00000000-0000-4000-8000-0000000000a1';
const B = '00000000-0000-4000-8000-0000000000b1';
const rule = (id: string, needle: string) => containsRule(id, needle);
const topics = {
  input: 'in',
  alerts: 'alerts',
  audit: 'audit',
  deadLetter: 'dlq',
  correlation: 'corr',
  changelog: 'state',
};

function batchOf(values: Array<Buffer | null>, headers: Record<string, Buffer> = {}): Batch {
  const records: InRecord[] = values.map((value, offset) => ({
    topic: 'in',
    partition: 0,
    offset,
    key: Buffer.from('host'),
    value,
    headers,
    timestampMs: 0,
  }));
  return {
    topic: 'in',
    partition: 0,
    records,
    fetchedFrom: 0,
    signal: new AbortController().signal,
    ack() {},
  };
}

function worker(store: RuleStore, evaluationThreads = 0): DetectorWorker {
  return new DetectorWorker({
    evaluationThreads,
    transport: new MemoryTransport(),
    store,
    groupId: 'g',
    detectorId: 'unit',
    topics,
    changelogPartitions: 1,
    maxBatchRecords: 100,
    partitionConcurrency: 1,
    members: 1,
    maxGroups: 100,
    restoreTimeoutMs: 100,
    metrics: detectorMetrics(),
    log: quiet,
  });
}

for (const threads of [0, 1]) {
  test(`a batch becomes alerts keyed by host, dead letters for what does not decode; lifecycle records skipped (${threads} evaluation threads)`, async () => {
    const codec = projectCodec();
    const store = new RuleStore({ log: quiet });
    store.applyTopic([{ key: A, value: rule(A, 'needle') }]);
    const hit = sampleEvent({ argv: ['echo', 'needle'] });
    const w = worker(store, threads);
    const out = await w.transform(
      batchOf(
        [
          codec.encode('dev.edr.v1.ExecveEvent', hit),
          Buffer.from('garbage'),
          codec.encode('dev.edr.v1.CollectorRecord', sampleCollectorRecord()),
          codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ argv: ['ls'] })),
        ],
        { traceparent: Buffer.from('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01') },
      ),
    );
    assert.deepEqual(
      out.map((r) => r.topic),
      ['alerts', 'dlq'],
    );
    const alert = codec.decodeAs('dev.edr.v1.Alert', out[0]!.value!);
    assert.equal(out[0]!.key, hit.hostId);
    assert.equal(alert.alertId, alertId(A, hit));
    assert.equal(alert.ruleSetVersion, store.current.version);
    assert.equal(alert.replayRunId, null);
    assert.equal(alert.detectorId, 'unit');
    assert.deepEqual(structuredClone(alert.matchedFields), [{ field: 'CommandLine', value: 'echo needle' }]);
    // The event bytes went into the alert as they were: the alert's event is the event.
    assert.deepEqual(structuredClone(alert.event), hit);
    assert.equal(
      String(out[0]!.headers?.['traceparent']),
      '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    );
    assert.equal(out[1]!.headers?.[deadLetterHeaders.errorCode], 'EDR_SCHEMA_NOT_SINGLE_OBJECT');
    assert.equal(out[1]!.headers?.[deadLetterHeaders.offset], '1');
    await w.stop();
  });
}

test('a rule that throws at evaluation is disabled and reported on the audit topic; the others still match', async () => {
  const codec = projectCodec();
  const store = new RuleStore({ log: quiet });
  store.applyTopic([
    { key: A, value: rule(A, 'needle') },
    { key: B, value: rule(B, 'needle') },
  ]);
  const bad = store.current.rules.find((r) => r.id === B)!;
  bad.test = () => {
    throw new Error('boom');
  };
  const out = await worker(store).transform(
    batchOf([
      codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ argv: ['needle'] })),
      codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ seq: 2n, argv: ['needle'] })),
    ]),
  );
  assert.deepEqual(
    out.map((r) => r.topic),
    ['audit', 'alerts', 'alerts'],
  );
  const report = codec.decodeAs('dev.edr.v1.CollectorRecord', out[0]!.value!);
  assert.equal(report.kind, 'CONFIG');
  assert.match(report.message ?? '', new RegExp(`disabled rule ${B}.*boom`));
  assert.ok(store.current.disabled.has(B));
  for (const r of out.slice(1)) assert.equal(codec.decodeAs('dev.edr.v1.Alert', r.value!).ruleId, A);
});

test('evaluation threads follow rule-set changes between batches, and alerts carry the version that matched', async () => {
  const codec = projectCodec();
  const store = new RuleStore({ log: quiet });
  store.applyTopic([{ key: A, value: rule(A, 'needle') }]);
  const w = worker(store, 1);
  const batch = () =>
    batchOf([codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ argv: ['needle', 'haystack'] }))]);
  const before = store.current.version;
  const first = (await w.transform(batch())).map((r) => codec.decodeAs('dev.edr.v1.Alert', r.value!));
  assert.deepEqual(
    first.map((a) => [a.ruleId, a.ruleSetVersion]),
    [[A, before]],
  );
  store.applyTopic([{ key: B, value: rule(B, 'haystack') }]);
  const second = (await w.transform(batch())).map((a) => codec.decodeAs('dev.edr.v1.Alert', a.value!));
  assert.notEqual(store.current.version, before);
  assert.deepEqual(second.map((a) => [a.ruleId, a.ruleSetVersion]).sort(), [
    [A, store.current.version],
    [B, store.current.version],
  ]);
  store.applyTopic([{ key: A, value: null }]);
  const third = (await w.transform(batch())).map((a) => codec.decodeAs('dev.edr.v1.Alert', a.value!).ruleId);
  assert.deepEqual(third, [B]);
  await w.stop();
});

test('evaluation names the rule that throws and stops at that record, so it is re-evaluated without it; the same on records or packed values', () => {
  const codec = projectCodec();
  const store = new RuleStore({ log: quiet });
  store.applyTopic([
    { key: A, value: rule(A, 'needle') },
    { key: B, value: rule(B, 'boom') },
  ]);
  const set = { engine: store.current.engine, rules: store.current.rules };
  const bad = set.rules.find((r) => r.id === B)!;
  const test = bad.test;
  const values = [
    codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ argv: ['needle'] })),
    Buffer.from('not avro'),
    codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ argv: ['needle', 'boom'] })),
  ];
  const records = batchOf(values).records;
  const { data, bounds } = pack(records);
  // Rule B throws only on the third record.
  bad.test = (ctx) => {
    if (test(ctx)) throw new Error('boom');
    return false;
  };
  const res = evaluateRecords(
    { ...set, version: 'v1', detectorId: 'd1' },
    { data: Buffer.from(data), bounds },
  );
  assert.equal(res.next, 2);
  assert.deepEqual(
    res.matches.map((m) => [m.index, m.ruleId]),
    [[0, A]],
  );
  assert.deepEqual(
    res.undecodable.map((u) => [u.index, u.code]),
    [[1, 'EDR_SCHEMA_NOT_SINGLE_OBJECT']],
  );
  assert.deepEqual(res.culprits, [{ ruleId: B, message: 'boom' }]);
  const { alerts, ...inProcess } = evaluateRecords({ ...set, version: 'v1', detectorId: 'd1' }, records);
  const ids = (bufs: Buffer[]) => bufs.map((b) => codec.decodeAs('dev.edr.v1.Alert', b).alertId);
  assert.deepEqual({ ...inProcess, alerts: ids(alerts) }, { ...res, alerts: ids(res.alerts) });
});

test('packed values read back the same, whether they share one buffer (one copy) or not', () => {
  const whole = Buffer.from('..abc.de..f....ghij');
  const cases: Array<Array<Buffer | null>> = [
    // Subarrays of one buffer, in order, small gaps, a null and an empty value among them.
    [
      whole.subarray(2, 5),
      whole.subarray(6, 8),
      null,
      whole.subarray(10, 11),
      whole.subarray(11, 11),
      whole.subarray(15, 19),
    ],
    // Separate buffers; then one buffer out of order; then far apart in one buffer.
    [Buffer.from('abc'), Buffer.from('de'), null],
    [whole.subarray(6, 8), whole.subarray(2, 5)],
    [Buffer.alloc(4000).subarray(0, 2), null],
    [null, null],
    [],
  ];
  for (const values of cases) {
    const { data, bounds } = packBuffers(values);
    assert.equal(bounds.length, 2 * values.length);
    const back = values.map((_, i) =>
      Buffer.from(data.subarray(bounds[2 * i]!, bounds[2 * i + 1]!)).toString(),
    );
    assert.deepEqual(
      back,
      values.map((v) => v?.toString() ?? ''),
    );
    assert.ok(data.byteLength < 100, 'copies the values, not whole far-apart buffers');
  }
});

for (const threads of [0, 1]) {
  test(`rules below the store's minLevel raise no alert; correlation input below it stays silent (${threads} evaluation threads)`, async () => {
    const codec = projectCodec();
    const store = new RuleStore({ log: quiet, minLevel: 'low' });
    const info = (id: string) => rule(id, 'needle').replace('level: high', 'level: informational');
    const C = '00000000-0000-4000-8000-0000000000c1';
    store.applyTopic([
      { key: A, value: rule(A, 'needle') },
      { key: B, value: info(B) },
      { key: C, value: info(C) },
      {
        key: 'corr',
        value: `title: two of C\nid: 00000000-0000-4000-8000-0000000000d1\nlevel: high\ncorrelation:\n  type: event_count\n  rules: [${C}]\n  group-by: [User]\n  timespan: 60s\n  condition: {gte: 2}\n`,
      },
    ]);
    const w = worker(store, threads);
    const hit = (pid: number) =>
      codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ pid, argv: ['echo', 'needle'] }));
    const out = await w.transform(batchOf([hit(1), hit(2)]));
    const ids = (topic: string) =>
      out.filter((r) => r.topic === topic).map((r) => codec.decodeAs('dev.edr.v1.Alert', r.value!).ruleId);
    // A alerts on each event; neither B nor C does, but C's matches still go on to its correlation (grouped by
    // user, so through the correlation topic).
    assert.deepEqual(ids('alerts'), [A, A]);
    assert.deepEqual(ids('corr'), [C, C]);
    await w.stop();
  });
}
