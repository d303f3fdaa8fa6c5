import assert from 'node:assert/strict';
import { mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { createLogger } from '../infra/log.js';
import { sampleEvent } from '../test/fixtures/events.js';
import { containsRule } from '../test/harness/detector.js';
import { rulesMessage, ThreadRules } from './eval-pool.js';
import { type RuleSnapshot, RuleStore } from './rule-store.js';
import { type CompiledRule, evaluateExecve } from './sigma/engine.js';

const quiet = createLogger({}, 'error');
const A = '00000000-0000-4000-8000-0000000000a1';
const B = '00000000-0000-4000-8000-0000000000b1';
const W = '00000000-0000-4000-8000-0000000000e1';
const F = '00000000-0000-4000-8000-0000000000f1';

const windowsRule = (needle: string) => containsRule(W, needle).replace('product: linux', 'product: windows');
/** A Sigma filter: rule `ruleId` does not match command lines containing `needle`. */
const filterOf = (ruleId: string, needle: string) => `title: not ${needle}
id: ${F}
logsource: { product: linux, category: process_creation }
filter:
  rules: [${ruleId}]
  selection:
    CommandLine|contains: '${needle}'
  condition: not selection
`;

const ruleOf = (snap: RuleSnapshot, id: string): CompiledRule => snap.rules.find((r) => r.id === id)!;
const matches = (snap: RuleSnapshot, ...argv: string[]) =>
  evaluateExecve(snap.engine, sampleEvent({ argv })).map((m) => m.rule.id);

test('a one-rule change from the topic compiles that rule only: the others are the same objects, results right', () => {
  const store = new RuleStore({ log: quiet });
  store.applyTopic([
    { key: A, value: containsRule(A, 'alpha') },
    { key: B, value: containsRule(B, 'beta') },
  ]);
  const before = store.current;
  assert.deepEqual(matches(before, 'sh', 'alpha beta'), [A, B]);
  store.applyTopic([{ key: B, value: containsRule(B, 'gamma') }]);
  const after = store.current;
  assert.notEqual(after.version, before.version);
  assert.equal(ruleOf(after, A), ruleOf(before, A), 'the unchanged rule is reused, not compiled again');
  assert.notEqual(ruleOf(after, B), ruleOf(before, B));
  assert.deepEqual(matches(after, 'sh', 'alpha beta'), [A]);
  assert.deepEqual(matches(after, 'sh', 'gamma'), [B]);
  assert.deepEqual(matches(after, 'sh', 'alpha gamma'), [A, B]);
  // The snapshot held across the change is whole and unchanged.
  assert.deepEqual(matches(before, 'sh', 'alpha beta'), [A, B]);
  assert.deepEqual(matches(before, 'sh', 'gamma'), []);
});

test('a change in another log source keeps the candidate index of this one', () => {
  const store = new RuleStore({ log: quiet });
  store.applyTopic([
    { key: A, value: containsRule(A, 'alpha') },
    { key: W, value: windowsRule('one') },
  ]);
  assert.deepEqual(matches(store.current, 'alpha'), [A]);
  const route = store.current.engine.routes.get('linux|process_creation|');
  assert.ok(route?.index);
  store.applyTopic([{ key: W, value: windowsRule('two') }]);
  assert.deepEqual(matches(store.current, 'alpha'), [A]);
  assert.equal(store.current.engine.routes.get('linux|process_creation|'), route);
  // A change in this log source builds its index again, with the new rule in it.
  store.applyTopic([{ key: B, value: containsRule(B, 'beta') }]);
  assert.deepEqual(matches(store.current, 'alpha', 'beta'), [A, B]);
  assert.notEqual(store.current.engine.routes.get('linux|process_creation|'), route);
});

test('a filter applies after a change of another rule, and a changed filter applies at once', () => {
  const store = new RuleStore({ log: quiet });
  store.applyTopic([
    { key: A, value: containsRule(A, 'alpha') },
    { key: B, value: containsRule(B, 'beta') },
    { key: F, value: filterOf(A, 'quiet') },
  ]);
  assert.deepEqual(matches(store.current, 'alpha', 'quiet'), []);
  const filtered = ruleOf(store.current, A);
  store.applyTopic([{ key: B, value: containsRule(B, 'gamma') }]);
  assert.equal(
    ruleOf(store.current, A),
    filtered,
    'the filtered rule is reused while its filters are the same',
  );
  assert.deepEqual(matches(store.current, 'alpha', 'quiet'), []);
  assert.deepEqual(matches(store.current, 'alpha', 'loud'), [A]);
  store.applyTopic([{ key: F, value: filterOf(A, 'loud') }]);
  assert.deepEqual(matches(store.current, 'alpha', 'quiet'), [A]);
  assert.deepEqual(matches(store.current, 'alpha', 'loud'), []);
  store.applyTopic([{ key: F, value: null }]);
  assert.deepEqual(matches(store.current, 'alpha', 'loud'), [A]);
});

test('a changed file in the rule directory is parsed and compiled alone', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'edr-rs-reload-'));
  writeFileSync(path.join(dir, 'a.yml'), containsRule(A, 'alpha'));
  writeFileSync(path.join(dir, 'b.yml'), containsRule(B, 'beta'));
  const store = new RuleStore({ dir, log: quiet });
  store.refreshDir();
  const before = store.current;
  writeFileSync(path.join(dir, 'b.yml'), containsRule(B, 'gamma'));
  utimesSync(path.join(dir, 'b.yml'), new Date(), new Date(Date.now() + 5000)); // a distinct mtime, however fast
  assert.equal(store.refreshDir(), true);
  const after = store.current;
  assert.equal(ruleOf(after, A), ruleOf(before, A));
  assert.equal(ruleOf(after, A).doc, ruleOf(before, A).doc, 'the unchanged file is not parsed again');
  assert.deepEqual(matches(after, 'alpha', 'gamma'), [A, B]);
  assert.deepEqual(matches(after, 'beta'), []);
});

test('an evaluation thread is sent the changed document only and compiles it alone', () => {
  const store = new RuleStore({ log: quiet });
  store.applyTopic([
    { key: A, value: containsRule(A, 'alpha') },
    { key: B, value: containsRule(B, 'beta') },
  ]);
  const thread = new ThreadRules();
  const first = rulesMessage(store.current, 'd1', new Set());
  assert.equal(first.docs.length, 2);
  const one = thread.apply(structuredClone(first));
  assert.equal(thread.compiled, 2);
  store.applyTopic([{ key: B, value: containsRule(B, 'gamma') }]);
  const second = rulesMessage(store.current, 'd1', new Set(first.order));
  assert.deepEqual(
    second.docs.map((d) => d.doc.id),
    [B],
  );
  const two = thread.apply(structuredClone(second));
  assert.equal(thread.compiled, 1);
  assert.equal(two.version, store.current.version);
  assert.equal(
    two.rules.find((r) => r.id === A),
    one.rules.find((r) => r.id === A),
  );
  const ids = (set: typeof one, ...argv: string[]) =>
    evaluateExecve(set.engine, sampleEvent({ argv })).map((m) => m.rule.id);
  assert.deepEqual(ids(two, 'alpha', 'gamma'), [A, B]);
  assert.deepEqual(ids(two, 'beta'), []);
});
