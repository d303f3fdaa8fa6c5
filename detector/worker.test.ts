import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Logger } from '../infra/log.js';
import { MemoryTransport } from '../infra/memory-transport.js';
import { type Batch, deadLetterHeaders, type InRecord, type OutRecord } from '../infra/transport.js';
import { projectCodec } from '../schemas/codec.js';
import { sampleAlert, sampleCollectorRecord, sampleEvent } from '../test/fixtures/events.js';
import { containsRule } from '../test/harness/detector.js';
import { adjustRules, HOOK_URL, POISON, THROWING_RULE_ID } from '../test/harness/throwing-rule.js';
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

function worker(
  store: RuleStore,
  evaluationThreads = 0,
  transport = new MemoryTransport(),
  extra: { maxAlertsPerBatch?: number; metrics?: ReturnType<typeof detectorMetrics> } = {},
): DetectorWorker {
  return new DetectorWorker({
    evaluationThreads,
    transport,
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
    evalThreadHook: HOOK_URL,
    metrics: detectorMetrics(),
    log: quiet,
    ...extra,
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

for (const threads of [0, 1]) {
  test(`a record a rule throws on is dead-lettered with the rule and the error; the rule stays until it has thrown on 3 hosts (${threads} evaluation threads)`, async () => {
    const codec = projectCodec();
    const store = new RuleStore({ log: quiet });
    store.applyTopic([
      { key: A, value: rule(A, POISON) },
      { key: THROWING_RULE_ID, value: rule(THROWING_RULE_ID, 'needle') },
    ]);
    adjustRules(store.current.rules);
    const w = worker(store, threads);
    const ev = (host: string, seq: bigint, argv: string[]) =>
      codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ hostId: host, seq, argv }));
    const first = await w.transform(
      batchOf([
        ev('host-1', 1n, ['echo', 'needle']),
        ev('host-1', 2n, ['echo', 'needle', POISON]),
        ev('host-1', 3n, ['echo', 'needle']),
      ]),
    );
    const ruleOf = (r: OutRecord) => codec.decodeAs('dev.edr.v1.Alert', r.value!).ruleId;
    // The poisoned record: dead-lettered, and still seen by the rule that did not throw on it (A).
    assert.deepEqual(
      first.map((r) => [r.topic, r.topic === 'alerts' ? ruleOf(r) : r.headers?.[deadLetterHeaders.offset]]),
      [
        ['alerts', THROWING_RULE_ID],
        ['dlq', '1'],
        ['alerts', A],
        ['alerts', THROWING_RULE_ID],
      ],
    );
    const dead = first[1]!;
    assert.equal(dead.headers?.[deadLetterHeaders.errorCode], 'EDR_DETECTOR_RULE_THREW');
    assert.match(
      String(dead.headers?.[deadLetterHeaders.error]),
      new RegExp(`rule ${THROWING_RULE_ID} threw: cannot evaluate the crafted value`),
    );
    assert.equal(store.current.disabled.size, 0, 'one record disables no rule');
    // The same host again, then a second one: still enabled. A third host disables it, reported on audit.
    const second = await w.transform(
      batchOf([ev('host-1', 4n, [POISON, 'needle']), ev('host-2', 5n, [POISON, 'needle'])]),
    );
    assert.deepEqual(
      second.filter((r) => r.topic !== 'alerts').map((r) => r.topic),
      ['dlq', 'dlq'],
    );
    assert.equal(store.current.disabled.size, 0);
    const third = await w.transform(batchOf([ev('host-3', 6n, [POISON, 'needle'])]));
    assert.deepEqual(
      third.map((r) => r.topic),
      ['audit', 'dlq', 'alerts'],
    );
    const report = codec.decodeAs('dev.edr.v1.CollectorRecord', third[0]!.value!);
    assert.match(
      report.message ?? '',
      new RegExp(`disabled rule ${THROWING_RULE_ID}.*crafted value.*3 hosts`),
    );
    assert.ok(store.current.disabled.has(THROWING_RULE_ID));
    // Disabled: the next batch evaluates without it, nothing dead-lettered.
    const after = await w.transform(batchOf([ev('host-4', 7n, [POISON, 'needle'])]));
    assert.deepEqual(
      after.map((r) => [r.topic, ruleOf(r)]),
      [['alerts', A]],
    );
    await w.stop();
  });
}

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

test('evaluation names the rule that throws, reports the record and goes on, the other rules evaluated alone on it; the same on records or packed values', () => {
  const codec = projectCodec();
  const store = new RuleStore({ log: quiet });
  store.applyTopic([
    { key: A, value: rule(A, 'needle') },
    { key: THROWING_RULE_ID, value: rule(THROWING_RULE_ID, 'needle') },
  ]);
  const set = { engine: store.current.engine, rules: store.current.rules };
  adjustRules(set.rules);
  const values = [
    codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ argv: ['needle'] })),
    Buffer.from('not avro'),
    codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ hostId: 'h9', argv: ['needle', POISON] })),
    codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ seq: 9n, argv: ['needle'] })),
  ];
  const records = batchOf(values).records;
  const { data, bounds } = pack(records);
  const res = evaluateRecords(
    { ...set, version: 'v1', detectorId: 'd1' },
    { data: Buffer.from(data), bounds },
  );
  assert.deepEqual(
    res.matches.map((m) => [m.index, m.ruleId]).sort(),
    [
      [0, A],
      [0, THROWING_RULE_ID],
      [2, A],
      [3, A],
      [3, THROWING_RULE_ID],
    ].sort(),
  );
  assert.deepEqual(
    res.undecodable.map((u) => [u.index, u.code]),
    [[1, 'EDR_SCHEMA_NOT_SINGLE_OBJECT']],
  );
  const message = `cannot evaluate the crafted value ${POISON}`;
  assert.deepEqual(res.failed, [
    {
      index: 2,
      hostId: 'h9',
      rules: [{ ruleId: THROWING_RULE_ID, message }],
      reason: `rule ${THROWING_RULE_ID} threw: ${message}`,
    },
  ]);
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

test('a crafted record on the correlation topic (an Alert declaring 2^31 tags) is dead-lettered at once', async () => {
  const codec = projectCodec();
  const store = new RuleStore({ log: quiet });
  const transport = new MemoryTransport();
  await transport.createTopics([
    { name: 'corr', partitions: 1 },
    { name: 'state', partitions: 1 },
  ]);
  const w = worker(store, 0, transport);
  const header = codec.encode('dev.edr.v1.Alert', sampleAlert()).subarray(0, 10);
  const crafted = Buffer.concat([header, Buffer.from([0, 0, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 0x0f])]);
  const out = await w.transformRepartitioned(batchOf([crafted]));
  const dead = out.filter((r) => r.topic === 'dlq');
  assert.equal(dead.length, 1);
  assert.equal(dead[0]!.headers?.[deadLetterHeaders.errorCode], 'EDR_SCHEMA_CORRUPT');
  assert.match(String(dead[0]!.headers?.[deadLetterHeaders.error]), /array block of 2147483647 items/);
  await w.stop();
});

test('an alert that fits nowhere reports its record, blames no rule, and the batch goes on', () => {
  const codec = projectCodec();
  const store = new RuleStore({ log: quiet });
  store.applyTopic([{ key: A, value: rule(A, 'needle') }]);
  const set = { engine: store.current.engine, rules: store.current.rules, version: 'v1', detectorId: 'd1' };
  const records = batchOf([
    codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ argv: ['needle'] })),
    codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ seq: 2n, argv: ['needle'] })),
  ]).records;
  const res = evaluateRecords({ ...set, maxAlertBytes: 200 }, records);
  assert.deepEqual(res.matches, []);
  assert.deepEqual(
    res.failed.map((f) => [f.index, f.rules, /does not fit in 200 bytes/.test(f.reason)]),
    [
      [0, [], true],
      [1, [], true],
    ],
  );
});

test('alerts per batch are bounded: beyond maxAlertsPerBatch only the first of each rule and host is kept, the rest counted', async () => {
  const codec = projectCodec();
  const store = new RuleStore({ log: quiet });
  store.applyTopic([{ key: A, value: rule(A, 'needle') }]);
  const dropped: number[] = [];
  const metrics = { ...detectorMetrics(), alertsDropped: (n: number) => dropped.push(n) };
  const w = worker(store, 0, new MemoryTransport(), { maxAlertsPerBatch: 3, metrics });
  const ev = (host: string, i: number) =>
    codec.encode(
      'dev.edr.v1.ExecveEvent',
      sampleEvent({ hostId: host, pid: 100 + i, argv: ['echo', 'needle'] }),
    );
  // Ten matches of one host, then one of another host.
  const values = [...Array.from({ length: 10 }, (_, i) => ev('h1', i)), ev('h2', 0)];
  const out = await w.transform(batchOf(values));
  assert.deepEqual(
    out.map((r) => r.key),
    ['h1', 'h1', 'h1', 'h2'],
    'three alerts, then only the first of a new rule and host',
  );
  assert.deepEqual(dropped, [7]);
  await w.stop();
});
