import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EdrError } from '../infra/errors.js';
import { type ExecCaptureStats, reconcile, resolveOptions, toEdrError } from './index.js';

describe('resolveOptions', () => {
  it('fills defaults', () => {
    const o = resolveOptions();
    assert.equal(o.ringBufferBytes, 8 * 1024 * 1024);
    assert.equal(o.queueMaxEvents, 65536);
    assert.equal(o.batchMaxEvents, 1024);
    assert.equal(o.wakeupBytes, 64 * 1024);
    assert.equal(resolveOptions({ wakeupBytes: 0 }).wakeupBytes, 0);
  });

  it('keeps valid values', () => {
    assert.equal(resolveOptions({ ringBufferBytes: 1 << 20, pollTimeoutMs: 10 }).ringBufferBytes, 1 << 20);
  });

  it('reports every problem at once', () => {
    const table: Array<[Record<string, unknown>, RegExp]> = [
      [{ ringBufferBytes: 3000 }, /ringBufferBytes must be a power of two/],
      [{ ringBufferBytes: 6 * 4096 }, /power of two/],
      [{ queueMaxEvents: 0 }, /queueMaxEvents must be an integer from 1/],
      [{ batchMaxEvents: 1.5 }, /batchMaxEvents/],
      [{ wakeupBytes: -1 }, /wakeupBytes must be an integer from 0/],
    ];
    for (const [options, pattern] of table) {
      assert.throws(
        () => resolveOptions(options),
        (err: unknown) =>
          err instanceof EdrError && err.code === 'EDR_NATIVE_OPTIONS' && pattern.test(err.message),
        JSON.stringify(options),
      );
    }
    assert.throws(
      () => resolveOptions({ queueMaxEvents: -1, pollTimeoutMs: Number.NaN }),
      (err: unknown) => err instanceof EdrError && (err.details['problems'] as string[]).length === 2,
    );
  });
});

describe('toEdrError', () => {
  it('keeps the addon code and message', () => {
    const native = Object.assign(new Error('exec capture needs CAP_BPF'), { code: 'EDR_NATIVE_PERMISSION' });
    const err = toEdrError(native);
    assert.equal(err.code, 'EDR_NATIVE_PERMISSION');
    assert.equal(err.message, 'exec capture needs CAP_BPF');
    assert.equal(err.cause, native);
    assert.equal(err.retryable, false);
  });

  it('uses the fallback for foreign errors and adds hints', () => {
    assert.equal(toEdrError(new TypeError('x')).code, 'EDR_NATIVE_FAILED');
    assert.equal(
      toEdrError(Object.assign(new Error('y'), { code: 'ENOENT' }), 'EDR_NATIVE_LOAD').code,
      'EDR_NATIVE_LOAD',
    );
    assert.match(toEdrError(new Error('z'), 'EDR_NATIVE_LOAD').message, /libbpf output/);
    const same = new EdrError('EDR_NATIVE_NO_BTF', 'no btf');
    assert.equal(toEdrError(same), same);
  });
});

describe('reconcile', () => {
  const base: ExecCaptureStats = {
    seen: 100,
    execSeen: 40,
    forkSeen: 30,
    exitSeen: 30,
    ringDrops: 5,
    kernelMisses: 0,
    argvTruncated: 1,
    pathTruncated: 0,
    readErrors: 0,
    received: 95,
    queueDrops: 10,
    decodeDrops: 0,
    queued: 5,
    delivered: 80,
    batches: 7,
    closed: true,
  };

  it('is zero when every event is accounted for', () => {
    assert.deepEqual(reconcile(base), { kernel: 0, queue: 0 });
  });

  it('shows events in flight or lost per stage', () => {
    assert.deepEqual(reconcile({ ...base, seen: 103 }), { kernel: 3, queue: 0 });
    assert.deepEqual(reconcile({ ...base, delivered: 79 }), { kernel: 0, queue: 1 });
    // A record whose decoding threw is accounted for, not missing.
    assert.deepEqual(reconcile({ ...base, delivered: 79, decodeDrops: 1 }), { kernel: 0, queue: 0 });
  });
});
