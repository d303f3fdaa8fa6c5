import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { createLogger } from '../../infra/log.js';
import { RuleStore } from '../rule-store.js';
import { loadRules } from './engine.js';
import { DEFAULT_RULE_LIMITS, type RuleLimits } from './limits.js';

const small: RuleLimits = { maxFileBytes: 300, maxValues: 5, maxRegexLength: 10, maxAliasCount: 100 };

/** A rule whose detection is `body` (indented under `detection:`), with its header on lines 1-6. */
function rule(id: string, body: string): string {
  return `title: Rule ${id}
id: ${id}
logsource:
  product: linux
  category: process_creation
level: high
detection:
${body}
  condition: sel
`;
}

const good = rule('good', '  sel:\n    CommandLine|contains: needle');

function ruleDir(files: Record<string, string>): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'edr-limits-'));
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, name), text);
  return dir;
}

/** `file:line code` of each problem, and the ids that loaded. */
function outcome(dir: string, limits?: RuleLimits) {
  const set = loadRules(dir, limits === undefined ? {} : { limits });
  return {
    problems: set.problems.map((p) => `${p.file}:${p.line} ${p.code}`),
    loaded: set.rules.map((r) => r.id),
    messages: set.problems.map((p) => p.message),
  };
}

// Ten comment lines of 30 bytes, then the rule: byte 300 (the first over a 300-byte limit) starts line 11.
const padded = `${'#'.repeat(29)}\n`.repeat(10) + good;

const billionLaughs = `title: Bomb
id: bomb
logsource: { product: linux, category: process_creation }
l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]
l1: &l1 [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]
l2: &l2 [*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1]
l3: &l3 [*l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2]
l4: &l4 [*l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3]
l5: &l5 [*l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4]
l6: &l6 [*l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5]
l7: &l7 [*l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6]
l8: &l8 [*l7, *l7, *l7, *l7, *l7, *l7, *l7, *l7, *l7]
detection:
  sel:
    CommandLine|contains: *l8
  condition: sel
`;

describe('rule limits: a rule over a limit is rejected at its file and line, the others load', () => {
  it('a file over maxFileBytes, at the line where it passes the limit', () => {
    const dir = ruleDir({ 'a-good.yml': good, 'big.yml': padded });
    const r = outcome(dir, small);
    assert.deepEqual(r.problems, ['big.yml:11 EDR_SIGMA_LIMIT']);
    assert.match(r.messages[0]!, /larger than 300 bytes \(rules\.limits\.maxFileBytes\)/);
    assert.deepEqual(r.loaded, ['good']);
  });

  it('a detection with more than maxValues values, at the first value over, aliases expanded', () => {
    const values = ['a', 'b', 'c', 'd', 'e', 'f'].map((v) => `      - ${v}`).join('\n');
    const aliased = `title: Aliased
id: aliased
logsource: { product: linux, category: process_creation }
vals: &v [a, b, c]
detection:
  sel:
    CommandLine|contains: *v
    Image|endswith: *v
  condition: sel
`;
    const dir = ruleDir({
      'a-good.yml': good,
      'many.yml': rule('many', `  sel:\n    CommandLine|contains:\n${values}`),
      'aliased.yml': aliased,
      'five.yml': rule(
        'five',
        `  sel:\n    CommandLine|contains:\n${values.split('\n').slice(0, 4).join('\n')}`,
      ),
    });
    const r = outcome(dir, small);
    // many.yml: the sixth value is on line 15; aliased.yml: the second use of the alias (three more values).
    assert.deepEqual(r.problems, ['aliased.yml:8 EDR_SIGMA_LIMIT', 'many.yml:15 EDR_SIGMA_LIMIT']);
    assert.match(r.messages[0]!, /more than 5 values in the detection \(rules\.limits\.maxValues\)/);
    assert.deepEqual(r.loaded.sort(), ['five', 'good']);
  });

  it('a regular expression over maxRegexLength, and one RE2 refuses, each at the line of its value', () => {
    const dir = ruleDir({
      'a-good.yml': good,
      'long.yml': rule('long', "  sel:\n    CommandLine|re:\n      - 'short'\n      - 'abcdefghijk'"),
      'refused.yml': rule('refused', "  sel:\n    CommandLine|re:\n      - 'ok'\n      - '(a)\\1'"),
    });
    const r = outcome(dir, small);
    assert.deepEqual(r.problems, ['long.yml:11 EDR_SIGMA_LIMIT', 'refused.yml:11 EDR_SIGMA_REGEX']);
    assert.match(r.messages[0]!, /11 characters, over the limit of 10 \(rules\.limits\.maxRegexLength\)/);
    assert.match(r.messages[1]!, /backreferences need backtracking/);
    assert.deepEqual(r.loaded, ['good']);
  });

  it('a YAML alias bomb ("billion laughs") is refused at its first alias, quickly, with the default limits', () => {
    const dir = ruleDir({ 'a-good.yml': good, 'bomb.yml': billionLaughs });
    const start = performance.now();
    const r = outcome(dir);
    assert.ok(performance.now() - start < 5000);
    assert.deepEqual(r.problems, ['bomb.yml:5 EDR_SIGMA_LIMIT']);
    assert.match(r.messages[0]!, /YAML aliases expand beyond 100 \(rules\.limits\.maxAliasCount\)/);
    assert.deepEqual(r.loaded, ['good']);
  });

  it('the defaults apply to rules check and hunt (loadRules without limits) and are those documented', () => {
    assert.deepEqual(DEFAULT_RULE_LIMITS, {
      maxFileBytes: 512 * 1024,
      maxValues: 10_000,
      maxRegexLength: 2048,
      maxAliasCount: 100,
    });
    const values = Array.from({ length: 10_001 }, (_, i) => `      - v${i}`).join('\n');
    const dir = ruleDir({
      'a-good.yml': good,
      'many.yml': rule('many', `  sel:\n    CommandLine|contains:\n${values}`),
    });
    assert.deepEqual(outcome(dir).problems, [`many.yml:${10 + 10_000} EDR_SIGMA_LIMIT`]);
  });
});

describe('rule limits on the rules topic: the record is named by its key', () => {
  const quiet = createLogger({}, 'error');

  it('rejects a record over a limit with rules-topic:<key> and line, and applies the others', () => {
    const store = new RuleStore({ log: quiet, limits: small });
    store.applyTopic([
      { key: 'good', value: good },
      { key: 'big', value: padded },
      { key: 'long', value: rule('long', "  sel:\n    CommandLine|re: 'abcdefghijk'") },
    ]);
    assert.deepEqual(
      store.current.problems.map((p) => `${p.file}:${p.line} ${p.code}`),
      ['rules-topic:big:11 EDR_SIGMA_LIMIT', 'rules-topic:long:9 EDR_SIGMA_LIMIT'],
    );
    assert.deepEqual(
      store.current.rules.map((r) => r.id),
      ['good'],
    );
  });

  it('a record whose YAML refers to itself is rejected at the alias, not a crash of every later update', () => {
    const store = new RuleStore({ log: quiet });
    const self = `${rule('self', '  sel:\n    CommandLine|contains: x')}extra: &s [1, *s]\n`;
    store.applyTopic([
      { key: 'good', value: good },
      { key: 'self', value: self },
    ]);
    assert.deepEqual(
      store.current.problems.map((p) => `${p.file}:${p.line} ${p.code}`),
      ['rules-topic:self:11 EDR_SIGMA_LIMIT'],
    );
    assert.deepEqual(
      store.current.rules.map((r) => r.id),
      ['good'],
    );
  });
});
