import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Logger } from '../../infra/log.js';
import { Outage } from './outage.js';

function recordingLog(lines: string[]): Logger {
  const log: Logger = {
    debug: (m) => void lines.push(`debug ${m}`),
    info: (m) => void lines.push(`info ${m}`),
    warn: (m) => void lines.push(`warn ${m}`),
    error: (m) => void lines.push(`error ${m}`),
    child: () => log,
  };
  return log;
}

describe('sink outage reporting', () => {
  it('logs the start once, then once per period, then the end; counts the alerts waiting', () => {
    const lines: string[] = [];
    let now = 0;
    const o = new Outage({ log: recordingLog(lines), reportEveryMs: 60_000, now: () => now });
    o.failed(new Error('HTTP 503'), 3);
    assert.equal(o.waiting, 3);
    assert.ok(o.ongoing);
    // Many attempts within a period: no more lines.
    for (let i = 0; i < 50; i++) {
      now += 1000;
      o.failed(new Error('HTTP 503'), i === 0 ? 2 : 0);
    }
    assert.equal(o.waiting, 5);
    assert.deepEqual(lines, ['warn sink unavailable: keeping its offsets and retrying until it is back']);
    now = 60_000;
    o.failed(new Error('HTTP 503'), 0);
    assert.equal(lines.length, 2);
    assert.equal(lines[1], 'warn sink still unavailable');
    o.delivered();
    o.settled(3);
    assert.equal(o.waiting, 2);
    assert.equal(lines[2], 'info sink available again');
    assert.ok(!o.ongoing);
    // A success outside an outage says nothing.
    o.delivered();
    assert.equal(lines.length, 3);
    o.settled(10);
    assert.equal(o.waiting, 0);
  });
});
