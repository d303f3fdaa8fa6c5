import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EdrError } from '../../infra/errors.js';
import { classify, retryDelayMs } from './retry-policy.js';

describe('retry policy', () => {
  const p = { maxAttempts: 5, initialBackoffMs: 100, maxBackoffMs: 1000, maxRetryAfterMs: 5000 };
  it('backs off exponentially with equal jitter, capped', () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5, 10].map((n) => [
        retryDelayMs(n, undefined, p, () => 0),
        retryDelayMs(n, undefined, p, () => 1),
      ]),
      [
        [50, 100],
        [100, 200],
        [200, 400],
        [400, 800],
        [500, 1000],
        [500, 1000],
      ],
    );
  });
  it('waits as long as Retry-After says, up to the cap', () => {
    assert.equal(retryDelayMs(1, 2000, p), 2000);
    assert.equal(retryDelayMs(1, 60_000, p), 5000);
    assert.equal(retryDelayMs(1, 0, p), 0);
  });
  it('treats unknown errors as permanent, timeouts as retryable', () => {
    assert.equal(classify(new Error('bug'), false).retryable, false);
    assert.equal(classify(new Error('aborted'), true).code, 'EDR_SINK_TIMEOUT');
    assert.equal(classify(new Error('aborted'), true).retryable, true);
    const e = new EdrError('EDR_SINK_X', 'x', { retryable: true });
    assert.equal(classify(e, false), e);
  });
});
