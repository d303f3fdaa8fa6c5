import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { httpStatusError, jsonReplacer, networkError, parseRetryAfter } from './sink.js';

describe('error classification', () => {
  it('reads Retry-After as seconds or an HTTP date', () => {
    assert.equal(parseRetryAfter('3'), 3000);
    assert.equal(parseRetryAfter('0.5'), 500);
    assert.equal(
      parseRetryAfter('Thu, 01 Jan 2026 00:00:10 GMT', Date.parse('2026-01-01T00:00:00Z')),
      10_000,
    );
    assert.equal(parseRetryAfter('soon'), undefined);
    assert.equal(parseRetryAfter(null), undefined);
  });

  const statuses: Array<[number, string, boolean]> = [
    [429, 'EDR_SINK_RATE_LIMITED', true],
    [500, 'EDR_SINK_UNAVAILABLE', true],
    [503, 'EDR_SINK_UNAVAILABLE', true],
    [408, 'EDR_SINK_UNAVAILABLE', true],
    [400, 'EDR_SINK_REJECTED', false],
    [403, 'EDR_SINK_REJECTED', false],
    [404, 'EDR_SINK_REJECTED', false],
    [410, 'EDR_SINK_REJECTED', false],
  ];
  for (const [status, code, retryable] of statuses) {
    it(`HTTP ${status}: ${code}, retryable ${retryable}`, () => {
      const e = httpStatusError(status, 'peer', 'body', '2');
      assert.equal(e.code, code);
      assert.equal(e.retryable, retryable);
    });
  }

  it('carries Retry-After with a 429', () => {
    assert.equal(httpStatusError(429, 'peer', '', '7').details['retryAfterMs'], 7000);
  });

  it('network failures are retryable, other errors are not', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
    const fetchFailed = new TypeError('fetch failed', { cause: refused });
    assert.equal(networkError(fetchFailed, 'x').code, 'EDR_SINK_UNREACHABLE');
    assert.equal(networkError(fetchFailed, 'x').retryable, true);
    assert.equal(networkError(new DOMException('t', 'TimeoutError'), 'x').code, 'EDR_SINK_TIMEOUT');
    assert.equal(networkError(new RangeError('bug'), 'x').retryable, false);
  });

  it('writes bigints as decimal strings', () => {
    assert.equal(JSON.stringify({ t: 2n ** 63n }, jsonReplacer), '{"t":"9223372036854775808"}');
  });
});
