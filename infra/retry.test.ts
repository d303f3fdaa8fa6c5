import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EdrError } from './errors.js';
import { abortableDelay, backoffMs, retry } from './retry.js';

const transient = () => new EdrError('EDR_TEST_TRANSIENT', 'try later', { retryable: true });

describe('backoffMs', () => {
  const b = { initialMs: 100, maxMs: 1000 };
  it('doubles from the initial pause up to the cap, half of it random', () => {
    const table: Array<[number, number, number]> = [
      // attempt, least (random 0), most (random 1)
      [1, 50, 100],
      [2, 100, 200],
      [3, 200, 400],
      [4, 400, 800],
      [5, 500, 1000],
      [40, 500, 1000],
    ];
    for (const [n, lo, hi] of table) {
      assert.equal(
        backoffMs(n, b, () => 0),
        lo,
        `attempt ${n}, random 0`,
      );
      assert.equal(
        backoffMs(n, b, () => 1),
        hi,
        `attempt ${n}, random 1`,
      );
    }
  });
  it('without jitter is the exponential pause itself', () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5].map((n) => backoffMs(n, { ...b, jitter: 'none' })),
      [100, 200, 400, 800, 1000],
    );
  });
});

describe('retry', () => {
  const fast = { initialMs: 1, maxMs: 2 };
  it('tries again on a retryable failure until it succeeds', async () => {
    const seen: number[] = [];
    const v = await retry(
      async (attempt) => {
        seen.push(attempt);
        if (attempt < 3) throw transient();
        return 'ok';
      },
      { backoff: fast },
    );
    assert.equal(v, 'ok');
    assert.deepEqual(seen, [1, 2, 3]);
  });
  it('rethrows at once what is not retryable', async () => {
    let n = 0;
    await assert.rejects(
      retry(
        async () => {
          n++;
          throw new Error('a bug');
        },
        { backoff: fast },
      ),
      /a bug/,
    );
    assert.equal(n, 1);
  });
  it('stops after maxAttempts with the last failure', async () => {
    let n = 0;
    await assert.rejects(
      retry(
        async () => {
          n++;
          throw transient();
        },
        { backoff: fast, maxAttempts: 4 },
      ),
      { code: 'EDR_TEST_TRANSIENT' },
    );
    assert.equal(n, 4);
  });
  it('takes the pause a failure asks for, and tells onRetry', async () => {
    const told: Array<[number, number]> = [];
    await retry(
      async (attempt) => {
        if (attempt < 3) throw transient();
      },
      {
        backoff: { initialMs: 10_000, maxMs: 10_000 },
        delayFor: (_err, attempt) => attempt,
        onRetry: (_err, attempt, delay) => told.push([attempt, delay]),
      },
    );
    assert.deepEqual(told, [
      [1, 1],
      [2, 2],
    ]);
  });
  it('an abort ends the pause and rethrows the failure', async () => {
    const ac = new AbortController();
    const started = Date.now();
    setTimeout(() => ac.abort(), 20);
    await assert.rejects(
      retry(
        async () => {
          throw transient();
        },
        { backoff: { initialMs: 60_000, maxMs: 60_000 }, signal: ac.signal },
      ),
      { code: 'EDR_TEST_TRANSIENT' },
    );
    assert.ok(Date.now() - started < 10_000);
  });
});

describe('abortableDelay', () => {
  it('resolves at once on an aborted signal', async () => {
    const started = Date.now();
    await abortableDelay(60_000, AbortSignal.abort());
    assert.ok(Date.now() - started < 10_000);
  });
});
