import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Logger } from '../infra/log.js';
import { MemoryTransport } from '../infra/memory-transport.js';
import { type Batch, deadLetterHeaders, type InRecord } from '../infra/transport.js';
import { projectCodec } from '../schemas/codec.js';
import { sampleCollectorRecord, sampleEvent } from '../test/fixtures/events.js';
import { alertId } from './alerts.js';
import { RuleStore } from './rule-store.js';
import { detectorMetrics } from './telemetry.js';
import { containsRule } from './testing.js';
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
  return { topic: 'in', partition: 0, records, signal: new AbortController().signal, ack() {} };
}

function worker(store: RuleStore): DetectorWorker {
  return new DetectorWorker({
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

test('a batch becomes alerts keyed by host, dead letters for what does not decode; lifecycle records skipped', async () => {
  const codec = projectCodec();
  const store = new RuleStore({ log: quiet });
  store.applyTopic([{ key: A, value: rule(A, 'needle') }]);
  const hit = sampleEvent({ argv: ['echo', 'needle'] });
  const out = await worker(store).transform(
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
  assert.equal(
    String(out[0]!.headers?.['traceparent']),
    '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  );
  assert.equal(out[1]!.headers?.[deadLetterHeaders.errorCode], 'EDR_SCHEMA_NOT_SINGLE_OBJECT');
  assert.equal(out[1]!.headers?.[deadLetterHeaders.offset], '1');
});

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
