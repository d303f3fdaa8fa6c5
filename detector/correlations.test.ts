import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Logger } from '../infra/log.js';
import { MemoryTransport } from '../infra/memory-transport.js';
import { CorrelationStore, groupKey, isHostScoped } from './correlations.js';
import { compileDocs } from './sigma/engine.js';
import { parseRuleText } from './sigma/parse.js';
import { detectorMetrics } from './telemetry.js';

const noop = () => {};
/** An event read from a record stamped at its own time. */
const at = (ms: number) => ({ eventMs: ms, recordMs: ms });
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

async function store(
  maxGroups: number,
  evicted: number[],
  transport = new MemoryTransport(),
  extra: { maxEventsPerGroup?: number; maxChangelogRecordBytes?: number } = {},
  counted: { clamped: number[]; trimmed: number[] } = { clamped: [], trimmed: [] },
) {
  const metrics = {
    ...detectorMetrics(),
    correlationEvictions: (n: number) => evicted.push(n),
    eventTimeClamped: (skew: number) => counted.clamped.push(skew),
    correlationTrimmed: (n: number) => counted.trimmed.push(n),
  };
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
    ...extra,
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
  assert.equal(s.step(1, c, 'base', at(1000), get('h1')).length, 0);
  assert.equal(s.step(1, c, 'base', at(2000), get('h1')).length, 0);
  assert.equal(s.step(1, c, 'base', at(2500), get('h2')).length, 0);
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
  assert.equal(s.step(1, c, 'base', at(90_000), get('h1')).length, 0, 'the old entries left the time span');
  assert.equal(s.step(1, c, 'base', at(91_000), get('h1')).length, 0);
  const m = s.step(1, c, 'base', at(92_000), get('h1'));
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
    s.step(0, c, 'base', at(1000 + i), (f) => (f === 'Computer' ? h : undefined));
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
  a.step(1, c, 'base', at(1000), get);
  a.step(1, c, 'base', at(2000), get);
  const txp = await transport.transactionalProducer('t');
  // The changelog holds the checkpoint at 3; the group's committed offset reads 1 (behind, as a read can lag).
  await txp.transaction(async (tx) => {
    await tx.send(a.checkpoint(1, 3));
    await tx.commitOffsets('g', [{ topic: 'in', partition: 1, offset: 1 }]);
  });
  // Read from 3, first record at 5: offsets 3 and 4 were markers or aborted records, so the state at 3 is current.
  const b = await store(10, [], transport);
  await b.prepare(1, 5, 3);
  assert.equal(
    b.step(1, c, 'base', at(3000), get).length,
    1,
    'the two restored entries and this one make three',
  );
  // Read from 4: offset 3 may have been a visible record this state lacks, so it is not taken.
  const d = await store(10, [], transport);
  await d.prepare(1, 5, 4);
  assert.equal(d.step(1, c, 'base', at(3000), get).length, 0, 'started empty');
});

test('an event dated far from its record timestamp is windowed at the record time: it wipes no other group, and is counted', async () => {
  const c = correlation('Computer');
  const counted = { clamped: [] as number[], trimmed: [] as number[] };
  const s = await store(10, [], new MemoryTransport(), {}, counted);
  await s.prepare(0, 0);
  const get = (h: string) => (f: string) => (f === 'Computer' ? h : undefined);
  const now = 1_700_000_000_000;
  s.step(0, c, 'base', at(now), get('victim'));
  s.step(0, c, 'base', at(now + 1000), get('victim'));
  // One host's event dated a year ahead, read from a record stamped now.
  const year = 365 * 86_400_000;
  assert.equal(s.step(0, c, 'base', { eventMs: now + year, recordMs: now + 2000 }, get('liar')).length, 0);
  // The victim's two entries are still there: its third event completes the correlation.
  assert.equal(
    s.step(0, c, 'base', at(now + 3000), get('victim')).length,
    1,
    'the future event wiped the state',
  );
  assert.deepEqual(counted.clamped, [year - 2000]);
  // Dated a year back: windowed at the record time too, so it still counts in its host's window.
  s.step(0, c, 'base', { eventMs: now - year, recordMs: now + 4000 }, get('liar'));
  assert.equal(s.step(0, c, 'base', at(now + 5000), get('liar')).length, 1);
  assert.equal(counted.clamped.length, 2);
  // Within the bound, the event's own time is used (no count).
  s.step(0, c, 'base', { eventMs: now + 6000, recordMs: now + 6000 + 60_000 }, get('h'));
  assert.equal(counted.clamped.length, 2);
});

/** A store with partition 0 ready, a correlation over `base` by Computer that never fires, and counters. */
async function boundedStore(
  type: string,
  condition: string,
  extra: { maxEventsPerGroup?: number; maxChangelogRecordBytes?: number },
) {
  const { docs } = parseRuleText(
    `title: n\nid: c2\ncorrelation:\n  type: ${type}\n  rules: [base]\n  group-by: [Computer]\n  timespan: 1h\n  condition: ${condition}\n`,
    'c.yml',
  );
  const c = compileDocs(docs).correlations[0]!;
  const counted = { clamped: [] as number[], trimmed: [] as number[] };
  const s = await store(10, [], new MemoryTransport(), extra, counted);
  await s.prepare(0, 0);
  return { c, s, counted };
}

test('one group keeps at most maxEventsPerGroup entries (the newest), counted', async () => {
  const { c, s, counted } = await boundedStore('event_count', '{gte: 1000000}', { maxEventsPerGroup: 50 });
  for (let i = 0; i < 200; i++)
    s.step(0, c, 'base', at(1000 + i), (f) => (f === 'Computer' ? 'h' : undefined));
  const [rec] = s.checkpoint(0, 200);
  const entries = (JSON.parse(rec!.value!.toString()) as { entries: Array<{ timeMs: number }> }).entries;
  assert.equal(entries.length, 50);
  assert.equal(entries[0]!.timeMs, 1150, 'the newest are kept');
  assert.equal(
    counted.trimmed.reduce((a, b) => a + b, 0),
    150,
  );
});

test('a changelog record stays under maxChangelogRecordBytes: the oldest entries go, from memory too', async () => {
  const { c, s, counted } = await boundedStore('value_count', '{gte: 1000000, field: CommandLine}', {
    maxChangelogRecordBytes: 20_000,
  });
  // 100 distinct 1 KB command lines: about 100 KB of entries in one group.
  for (let i = 0; i < 100; i++) {
    const cmd = `${i} ${'x'.repeat(1000)}`;
    s.step(0, c, 'base', at(1000 + i), (f) =>
      f === 'Computer' ? 'h' : f === 'CommandLine' ? cmd : undefined,
    );
  }
  const records = s.checkpoint(0, 100);
  const group = records[0]!;
  assert.ok(group.value !== null && group.value.length <= 20_000, `record of ${group.value?.length} bytes`);
  const kept = (JSON.parse(group.value.toString()) as { entries: Array<{ timeMs: number }> }).entries;
  assert.ok(kept.length > 0 && kept.length < 100);
  assert.equal(kept[kept.length - 1]!.timeMs, 1099, 'the newest entry is kept');
  assert.equal(
    counted.trimmed.reduce((a, b) => a + b, 0),
    100 - kept.length,
  );
  // Memory holds what the changelog holds: the next change writes the same entries plus one.
  s.step(0, c, 'base', at(2000), (f) => (f === 'Computer' ? 'h' : f === 'CommandLine' ? 'short' : undefined));
  const next = (JSON.parse(s.checkpoint(0, 101)[0]!.value!.toString()) as { entries: unknown[] }).entries;
  assert.equal(next.length, kept.length + 1);
});
