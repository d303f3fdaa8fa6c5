import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { EachBatchPayload, PartitionMetadata } from 'kafkajs';
import { partitionFor } from '../partitioner.js';
import type { OutRecord } from '../transport.js';
import { byTopic, keyPartitioner, sizedChunks, toInRecord } from './records.js';

type FetchedMessage = EachBatchPayload['batch']['messages'][number];

function rec(topic: string, bytes: number, key: string | null = null): OutRecord {
  return { topic, key, value: Buffer.alloc(bytes) };
}

describe('sizedChunks', () => {
  it('keeps order and cuts before a record that would pass the limit', () => {
    // 24 bytes of framing per record: 100-byte values are 124 each, so two fit under 300.
    const records = [1, 2, 3, 4, 5].map(() => rec('t', 100));
    const chunks = sizedChunks(records, 300);
    assert.deepEqual(
      chunks.map((c) => c.length),
      [2, 2, 1],
    );
    assert.deepEqual(chunks.flat(), records);
  });

  it('sends a record larger than the limit alone, and nothing for no records', () => {
    const big = rec('t', 1000);
    const chunks = sizedChunks([rec('t', 10), big, rec('t', 10)], 200);
    assert.deepEqual(chunks, [[chunks[0]![0]], [big], [chunks[2]![0]]]);
    assert.deepEqual(sizedChunks([], 200), []);
  });

  it('counts keys and headers', () => {
    const plain = rec('t', 50);
    const headed: OutRecord = { ...plain, key: 'k'.repeat(40), headers: { 'edr-error': 'x'.repeat(40) } };
    assert.equal(sizedChunks([plain, plain], 150).length, 1);
    assert.equal(sizedChunks([headed, headed], 150).length, 2);
  });
});

it('byTopic groups records by topic in order, with their partition, timestamp and headers', () => {
  const groups = byTopic([
    { topic: 'a', key: 'k1', value: Buffer.from('1') },
    { topic: 'b', key: null, value: null, partition: 3, timestampMs: 1700000000000 },
    { topic: 'a', key: 'k2', value: Buffer.from('2'), headers: { h: 'v' } },
  ]);
  assert.deepEqual(groups, [
    {
      topic: 'a',
      messages: [
        { key: 'k1', value: Buffer.from('1') },
        { key: 'k2', value: Buffer.from('2'), headers: { h: 'v' } },
      ],
    },
    { topic: 'b', messages: [{ key: null, value: null, partition: 3, timestamp: '1700000000000' }] },
  ]);
});

describe('toInRecord', () => {
  it('converts offsets and timestamps to numbers and takes the last value of a repeated header', () => {
    const r = toInRecord('t', 2, {
      key: Buffer.from('k'),
      value: Buffer.from('v'),
      offset: '41',
      timestamp: '1700000000000',
      headers: { one: Buffer.from('a'), many: [Buffer.from('x'), 'y'], none: undefined },
    } as unknown as FetchedMessage);
    assert.deepEqual(r, {
      topic: 't',
      partition: 2,
      offset: 41,
      key: Buffer.from('k'),
      value: Buffer.from('v'),
      headers: { one: Buffer.from('a'), many: Buffer.from('y') },
      timestampMs: 1700000000000,
    });
  });

  it('shares one frozen empty headers object between records without headers', () => {
    const m = {
      key: null,
      value: null,
      offset: '0',
      timestamp: '0',
      headers: {},
    } as unknown as FetchedMessage;
    const a = toInRecord('t', 0, m);
    const b = toInRecord('t', 0, { ...m, headers: undefined } as unknown as FetchedMessage);
    assert.equal(a.key, null);
    assert.equal(a.value, null);
    assert.equal(a.headers, b.headers);
    assert.ok(Object.isFrozen(a.headers));
  });
});

describe('keyPartitioner', () => {
  const meta = (leaders: number[]): PartitionMetadata[] =>
    leaders.map((leader, partitionId) => ({
      partitionErrorCode: 0,
      partitionId,
      leader,
      replicas: [],
      isr: [],
    }));

  it('keeps an explicit partition and maps a key as partitionFor does', () => {
    const choose = keyPartitioner();
    const partitionMetadata = meta([1, 1, 1, 1, 1, 1]);
    assert.equal(
      choose({ topic: 't', partitionMetadata, message: { key: 'host-1', value: null, partition: 4 } }),
      4,
    );
    for (const key of ['host-1', 'host-2', Buffer.from('host-3')]) {
      assert.equal(
        choose({ topic: 't', partitionMetadata, message: { key, value: null } }),
        partitionFor(key, 6, () => 0),
      );
    }
  });

  it('spreads records without a key over the partitions that have a leader', () => {
    const choose = keyPartitioner();
    const partitionMetadata = meta([1, -1, 1, -1]);
    const seen = new Set(
      Array.from({ length: 20 }, () =>
        choose({ topic: 't', partitionMetadata, message: { key: null, value: null } }),
      ),
    );
    assert.deepEqual([...seen].sort(), [0, 2]);
  });
});
