import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Logger } from '../infra/log.js';
import { MemoryTransport } from '../infra/memory-transport.js';
import { CorrelationStore, groupKey, isHostScoped } from './correlations.js';
import { compileDocs } from './sigma/engine.js';
import { parseRuleText } from './sigma/parse.js';
import { detectorMetrics } from './telemetry.js';

const noop = () => {};
const quiet: Logger = { debug: noop, info: noop, warn: noop, error: noop, child: () => quiet };

const correlation = (groupBy: string) => {
  const { docs } = parseRuleText(
    `title: many
id: c1
correlation:
  type: event_count
  rules: [base]
  group-by: [${groupBy}]
  timespan: 60s
  condition: {gte: 3}
`,
    'c.yml',
  );
  return compileDocs(docs).correlations[0]!;
};

async function store(maxGroups: number, evicted: number[], transport = new MemoryTransport()) {
  const metrics = { ...detectorMetrics(), correlationEvictions: (n: number) => evicted.push(n) };
  await transport.createTopics([
    { name: 'in', partitions: 2 },
    { name: 'state', partitions: 2, cleanupPolicy: 'compact' },
  ]);
  return new CorrelationStore({
    stage: 'h',
    groupId: 'g',
    inputTopic: 'in',
    transport,
    changelogTopic: 'state',
    changelogPartitions: 2,
    maxGroups,
    restoreTimeoutMs: 100,
    metrics,
    log: quiet,
  });
}

test('host-scoped or repartitioned, by group-by', () => {
  assert.equal(isHostScoped(correlation('Computer')), true);
  assert.equal(isHostScoped(correlation('User')), false);
  assert.equal(
    groupKey(correlation('User'), 'base', (f) => (f === 'User' ? 'alice' : undefined)),
    '["alice"]',
  );
});

test('fires at the threshold within the time span; changed groups and a checkpoint go to the changelog', async () => {
  const c = correlation('Computer');
  const s = await store(10, []);
  await s.prepare(1, 0);
  const get = (h: string) => (f: string) => (f === 'Computer' ? h : undefined);
  assert.equal(s.step(1, c, 'base', 1000, get('h1')).length, 0);
  assert.equal(s.step(1, c, 'base', 2000, get('h1')).length, 0);
  assert.equal(s.step(1, c, 'base', 2500, get('h2')).length, 0);
  const cp = s.checkpoint(1, 3);
  assert.deepEqual(
    cp.map((r) => [r.key, r.partition]),
    [
      [`h|1|${cp[0]!.key!.toString().split('|')[2]}|["h1"]`, 1],
      [`h|1|${cp[0]!.key!.toString().split('|')[2]}|["h2"]`, 1],
      ['h|1|#', 1],
    ],
  );
  assert.deepEqual(JSON.parse(cp[2]!.value!.toString()), { next: 3 });
  // The next batch continues in memory (first offset = next).
  await s.prepare(1, 3);
  assert.equal(s.step(1, c, 'base', 90_000, get('h1')).length, 0, 'the old entries left the time span');
  assert.equal(s.step(1, c, 'base', 91_000, get('h1')).length, 0);
  const m = s.step(1, c, 'base', 92_000, get('h1'));
  assert.equal(m.length, 1);
  assert.equal(m[0]!.value, 3);
  // The matched group starts afresh: its changelog record is a tombstone.
  const after = s.checkpoint(1, 6);
  assert.ok(after.some((r) => r.key?.toString().endsWith('["h1"]') && r.value === null));
});

test('memory is bounded: beyond maxGroups the group seen longest ago is evicted, and counted', async () => {
  const c = correlation('Computer');
  const evicted: number[] = [];
  const s = await store(2, evicted);
  await s.prepare(0, 0);
  for (const [i, h] of ['a', 'b', 'c'].entries()) {
    s.step(0, c, 'base', 1000 + i, (f) => (f === 'Computer' ? h : undefined));
  }
  assert.deepEqual(evicted, [1]);
  const keys = s
    .checkpoint(0, 3)
    .filter((r) => r.value !== null)
    .map((r) => r.key?.toString().split('|').pop());
  assert.deepEqual(keys, ['["b"]', '["c"]', '#']);
});

test('a checkpoint is taken over when nothing visible lies between it and the batch, whatever the committed offset reads', async () => {
  const c = correlation('Computer');
  const get = (f: string) => (f === 'Computer' ? 'h1' : undefined);
  const transport = new MemoryTransport();
  const a = await store(10, [], transport);
  await a.prepare(1, 0);
  a.step(1, c, 'base', 1000, get);
  a.step(1, c, 'base', 2000, get);
  const txp = await transport.transactionalProducer('t');
  // The changelog holds the checkpoint at 3; the group's committed offset reads 1 (behind, as a read can lag).
  await txp.transaction(async (tx) => {
    await tx.send(a.checkpoint(1, 3));
    await tx.commitOffsets('g', [{ topic: 'in', partition: 1, offset: 1 }]);
  });
  // Read from 3, first record at 5: offsets 3 and 4 were markers or aborted records, so the state at 3 is current.
  const b = await store(10, [], transport);
  await b.prepare(1, 5, 3);
  assert.equal(b.step(1, c, 'base', 3000, get).length, 1, 'the two restored entries and this one make three');
  // Read from 4: offset 3 may have been a visible record this state lacks, so it is not taken.
  const d = await store(10, [], transport);
  await d.prepare(1, 5, 4);
  assert.equal(d.step(1, c, 'base', 3000, get).length, 0, 'started empty');
});
