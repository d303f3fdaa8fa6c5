import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { createLogger } from '../../infra/log.js';
import { waitFor } from '../../test/harness/names.js';
import { alertsOf } from '../sink.js';
import { alert, memorySink } from './deliver.testing.js';
import { type Held, ThrottleWindows } from './throttle.js';

describe('throttle windows (memory transport)', () => {
  async function setup(stateDir: string, windowMs: number) {
    const t = await memorySink(stateDir, { fold: { windowMs } });
    const sent: string[][] = [];
    const start = () =>
      t.start({
        async send(m) {
          sent.push(alertsOf(m).map((a) => a.alertId));
        },
        async close() {},
      });
    return { transport: t.transport, sent, start, publish: t.publish, consumed: t.consumed };
  }

  it('holds identical alerts after a message and sends them as one summary when the window closes', async () => {
    const t = await setup(await mkdtemp(path.join(tmpdir(), 'edr-throttle-')), 3_600_000);
    const s = await t.start();
    await t.publish([alert(1)]);
    await waitFor('the first message', () => t.sent.length === 1);
    // One alert per batch, as in a slow storm.
    for (const i of [2, 3, 4]) {
      await t.publish([alert(i)]);
      await t.consumed();
    }
    await t.publish([alert(5, { ruleId: 'other-rule' })]);
    await waitFor('the other rule', () => t.sent.length === 2);
    // The window's timer, without the wait.
    await s.flushHeld();
    await s.stop();
    await t.transport.close();
    assert.deepEqual(t.sent.sort(), [['a1'], ['a2', 'a3', 'a4'], ['a5']]);
  });

  it('sends alerts held when it stopped at the next start, once', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-throttle-'));
    const t = await setup(dir, 3_600_000);
    const first = await t.start();
    await t.publish([alert(1)]);
    await waitFor('the first message', () => t.sent.length === 1);
    await t.publish([alert(2), alert(3)]);
    await t.consumed();
    await first.stop();
    assert.deepEqual(t.sent, [['a1']]);
    const second = await t.start();
    await waitFor('the held alerts', () => t.sent.length === 2);
    await t.publish([alert(2)]); // a redelivery of a held alert is not sent again
    await t.consumed();
    await second.stop();
    await t.transport.close();
    assert.deepEqual(t.sent, [['a1'], ['a2', 'a3']]);
  });

  it('keeps at most maxWindows open: the oldest closes early (held alerts sent now, an empty one forgotten), counted', async () => {
    const sent: string[][] = [];
    const w = new ThrottleWindows({
      windowMs: 3_600_000,
      maxWindows: 2,
      send: async (held) => {
        sent.push(held.map((h) => h.alert.alertId));
      },
      stillHeld: () => true,
      log: createLogger({}, 'error'),
    });
    const held = (i: number): Held => ({
      alert: alert(i),
      record: { topic: 't', partition: 0, offset: i, key: null, value: null, headers: {}, timestampMs: 0 },
    });
    w.hold('rule|h1', [held(1), held(2)]);
    w.open('rule|h2');
    assert.equal(w.size, 2);
    w.open('rule|h3');
    assert.equal(w.size, 2);
    assert.equal(w.has('rule|h1'), false);
    await waitFor('the summary of the closed window', () => sent.length === 1);
    assert.deepEqual(sent, [['a1', 'a2']]);
    w.open('rule|h4'); // closes h2, which holds nothing: nothing to send
    assert.deepEqual([w.has('rule|h2'), w.has('rule|h3'), w.has('rule|h4'), w.size], [false, true, true, 2]);
    assert.equal(w.evicted, 2);
    assert.equal(await w.stop(), 0);
    assert.deepEqual(sent, [['a1', 'a2']]);
  });
});
