import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { createLogger } from '../infra/log.js';
import { sampleEvent } from '../test/fixtures/events.js';
import { containsRule } from '../test/harness/detector.js';
import { alertId } from './alerts.js';
import { RuleStore } from './rule-store.js';
import { evaluateExecve } from './sigma/engine.js';

const quiet = createLogger({}, 'error');

const rule = (id: string, needle: string) => containsRule(id, needle);
const A = '00000000-0000-4000-8000-0000000000a1';
const B = '00000000-0000-4000-8000-0000000000b1';

test('topic updates: a bad rule is rejected with its reason, the rest applies; a tombstone deletes', () => {
  const store = new RuleStore({ log: quiet });
  const empty = store.current.version;
  store.applyTopic([
    { key: A, value: rule(A, 'x') },
    { key: 'broken', value: 'detection: [' },
  ]);
  assert.deepEqual(
    store.current.rules.map((r) => r.id),
    [A],
  );
  assert.equal(store.current.problems.length, 1);
  assert.equal(store.current.problems[0]!.file, 'rules-topic:broken');
  store.applyTopic([{ key: A, value: null }]);
  assert.equal(store.current.rules.length, 0);
  assert.equal(store.current.version, empty);
});

test('the version depends on what runs, not on the order or formatting it arrived in', () => {
  const one = new RuleStore({ log: quiet });
  one.applyTopic([
    { key: A, value: rule(A, 'x') },
    { key: B, value: rule(B, 'y') },
  ]);
  const two = new RuleStore({ log: quiet });
  two.applyTopic([{ key: B, value: `# a comment\n${rule(B, 'y')}` }]);
  two.applyTopic([{ key: A, value: rule(A, 'x') }]);
  assert.equal(one.current.version, two.current.version);
  two.applyTopic([{ key: A, value: rule(A, 'z') }]);
  assert.notEqual(one.current.version, two.current.version);
});

test('a swap replaces the whole snapshot: a snapshot held across a reload stays whole', () => {
  const store = new RuleStore({ log: quiet });
  store.applyTopic([{ key: A, value: rule(A, 'x') }]);
  const held = store.current;
  store.applyTopic([{ key: B, value: rule(B, 'y') }]);
  assert.equal(held.rules.length, 1);
  assert.equal(store.current.rules.length, 2);
  assert.notEqual(held.version, store.current.version);
});

test('directory rules, overridden by the topic; disabling a rule changes the version', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'edr-rs-'));
  writeFileSync(path.join(dir, 'a.yml'), rule(A, 'from-dir'));
  writeFileSync(path.join(dir, 'bad.yml'), rule(B, 'x').replace('contains', 'nosuchmodifier'));
  const store = new RuleStore({ dir, log: quiet });
  assert.equal(store.refreshDir(), true);
  assert.equal(store.refreshDir(), false, 'unchanged directory: no reload');
  assert.deepEqual(
    store.current.rules.map((r) => r.id),
    [A],
  );
  assert.equal(store.current.problems.length, 1);
  store.applyTopic([{ key: A, value: rule(A, 'from-topic') }]);
  assert.equal(store.current.rules.length, 1);
  assert.match(JSON.stringify(store.current.rules[0]!.doc.raw), /from-topic/);
  const v = store.current.version;
  store.disable(A, 'boom');
  assert.equal(store.current.rules.length, 0);
  assert.notEqual(store.current.version, v);
});

test('alert ids: deterministic per rule and event; a replay run gets its own', () => {
  const e = sampleEvent();
  assert.equal(alertId(A, e), alertId(A, sampleEvent()));
  assert.notEqual(alertId(A, e), alertId(B, e));
  assert.notEqual(alertId(A, e), alertId(A, sampleEvent({ seq: 2n })));
  assert.notEqual(alertId(A, e), alertId(A, e, 'run-1'));
});

test('minLevel: rules below it are not evaluated unless a correlation names them; the version is the same', () => {
  const C = '00000000-0000-4000-8000-0000000000c1';
  const D = '00000000-0000-4000-8000-0000000000d1';
  const info = (id: string, needle: string) =>
    rule(id, needle).replace('level: high', 'level: informational');
  const docs = [
    { key: A, value: rule(A, 'needle') },
    { key: B, value: info(B, 'needle') },
    { key: C, value: info(C, 'needle') },
    {
      key: D,
      value: `title: three of C\nid: ${D}\nlevel: informational\ncorrelation:\n  type: event_count\n  rules: [${C}]\n  group-by: [User]\n  timespan: 60s\n  condition: {gte: 3}\n`,
    },
  ];
  const all = new RuleStore({ log: quiet });
  all.applyTopic(docs);
  const low = new RuleStore({ log: quiet, minLevel: 'low' });
  low.applyTopic(docs);
  assert.deepEqual(
    all.current.rules.map((r) => r.id),
    [A, B, C],
  );
  assert.deepEqual(all.current.belowLevel, new Set());
  // B is left out of evaluation; C stays, as the correlation's input (the worker raises no alert for it).
  assert.deepEqual(
    low.current.rules.map((r) => r.id),
    [A, C],
  );
  assert.deepEqual(low.current.belowLevel, new Set([B, C]));
  assert.equal(low.current.minLevel, 'low');
  const ids = (s: RuleStore) =>
    evaluateExecve(s.current.engine, sampleEvent({ argv: ['cat', 'needle'] })).map((m) => m.rule.id);
  assert.deepEqual(ids(low), [A, C]);
  assert.deepEqual(ids(all), [A, B, C]);
  // Workers at different levels run the same rule-set version (what `edr rules list` shows).
  assert.equal(low.current.version, all.current.version);
});
