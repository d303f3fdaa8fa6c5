import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EdrError } from '../infra/errors.js';
import { parseLogsource } from './hunt.js';

describe('hunt helpers', () => {
  it('parses --logsource', () => {
    assert.deepEqual(parseLogsource('product=Linux,category=process_creation'), {
      product: 'linux',
      category: 'process_creation',
    });
    assert.deepEqual(parseLogsource('service=auditd'), { service: 'auditd' });
    for (const bad of ['product', 'vendor=x', 'product=', '']) {
      assert.throws(
        () => parseLogsource(bad),
        (e: unknown) => e instanceof EdrError && e.code === 'EDR_HUNT_USAGE',
      );
    }
  });
});
