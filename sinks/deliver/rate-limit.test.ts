import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TokenBucket } from './rate-limit.js';

describe('token bucket', () => {
  it('lets a burst through, then spaces messages at the rate', () => {
    let now = 0;
    const b = new TokenBucket(2, 2, () => now);
    assert.deepEqual([b.reserve(), b.reserve(), b.reserve(), b.reserve()], [0, 0, 500, 1000]);
    now = 10_000;
    assert.equal(b.reserve(), 0);
    assert.equal(new TokenBucket(0, 1).reserve(), 0);
  });
});
