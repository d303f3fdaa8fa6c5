import assert from 'node:assert/strict';
import { it } from 'node:test';
import { murmur2, partitionFor } from './partitioner.js';

it('murmur2 matches the values of the Java client (Utils.murmur2)', () => {
  // Reference values from Kafka's UtilsTest#testMurmur2.
  const cases: Array<[string, number]> = [
    ['21', -973932308],
    ['foobar', -790332482],
    ['a-little-bit-long-string', -985981536],
    ['a-little-bit-longer-string', -1486304829],
    ['lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8', -58897971],
    ['abc', 479470107],
  ];
  for (const [s, h] of cases) assert.equal(murmur2(Buffer.from(s)), h, s);
});

it('maps a key to the same partition every time and spreads null keys', () => {
  const p = partitionFor('host-1', 6, () => 0);
  assert.equal(
    partitionFor(Buffer.from('host-1'), 6, () => 0),
    p,
  );
  let n = 0;
  const seen = new Set(Array.from({ length: 6 }, () => partitionFor(null, 6, () => n++)));
  assert.equal(seen.size, 6);
});
