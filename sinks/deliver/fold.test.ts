import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { alertsOf, type Message } from '../sink.js';
import { alert, at } from './deliver.testing.js';
import { foldAlerts, groupMessages } from './fold.js';

describe('folding and messages', () => {
  it('folds same rule and host within the window, with count and first/last seen', () => {
    const folds = foldAlerts(
      [alert(3), alert(1), alert(2, {}, { hostId: 'other' }), alert(5), alert(400)],
      60_000,
    );
    assert.deepEqual(
      folds.map((f) => [f.alerts.map((a) => a.alertId), f.firstSeenNs, f.lastSeenNs]),
      [
        [['a3', 'a1', 'a5'], at(1), at(5)],
        [['a2'], at(2), at(2)],
        // 400 s after the fold's first: a new fold
        [['a400'], at(400), at(400)],
      ],
    );
  });

  it('does not fold when folding is off', () => {
    assert.equal(foldAlerts([alert(1), alert(2)], false).length, 2);
  });

  it('groups folds: each, one batch, or by digest window', () => {
    const folds = foldAlerts(
      [alert(1, { ruleId: 'r1' }), alert(2, { ruleId: 'r2' }), alert(100, { ruleId: 'r3' })],
      false,
    );
    const ids = (ms: Message[]) => ms.map((m) => alertsOf(m).map((a) => a.alertId));
    assert.deepEqual(ids(groupMessages(folds, 'each')), [['a1'], ['a2'], ['a100']]);
    assert.deepEqual(ids(groupMessages(folds, 'batch')), [['a1', 'a2', 'a100']]);
    assert.deepEqual(ids(groupMessages(folds, { digestWindowMs: 10_000 })), [['a1', 'a2'], ['a100']]);
    assert.deepEqual(groupMessages([], 'batch'), []);
  });
});
