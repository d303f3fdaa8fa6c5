import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { generateEvents, sampleEvent } from '../../test/fixtures/events.js';
import { CandidateIndex } from './candidate-index.js';
import { parseCondition } from './conditions.js';
import { compileDocs, createEngine, evaluate, evaluateExecve } from './engine.js';
import { EvalContext, jsonEvent } from './event-view.js';
import { parseRuleText } from './parse.js';

function rules(yaml: string, opts = {}) {
  const { docs, problems } = parseRuleText(yaml, 'test.yml');
  const set = compileDocs(docs, opts);
  set.problems.unshift(...problems);
  return set;
}

function rule(detection: string, logsource = 'product: test'): string {
  return `title: t\nid: r1\nlogsource: {${logsource}}\ndetection:\n${detection}\n`;
}

/** One rule set of several detections (`rule`), with ids r0, r1, … in order. */
function numbered(...detections: string[]) {
  return rules(detections.map((d, i) => rule(d).replace('id: r1', `id: r${i}`)).join('---\n'));
}

/** Titles of the rules matching a JSON event (log source product: test). */
function fire(yaml: string, event: Record<string, unknown>): boolean {
  const set = rules(yaml);
  assert.deepEqual(set.problems, []);
  return evaluate(createEngine(set.rules), jsonEvent(event, { product: 'test' })).length > 0;
}

describe('conditions', () => {
  const sels = `  a:\n    A: 1\n  b:\n    B: 1\n  c:\n    C: 1\n  _d:\n    D: 1\n`;
  const cases: [string, Record<string, unknown>, boolean][] = [
    ['a and b', { A: 1, B: 1 }, true],
    ['a and b', { A: 1 }, false],
    ['a or b', { B: 1 }, true],
    ['not a', {}, true],
    ['not a', { A: 1 }, false],
    ['a or b and c', { A: 1 }, true], // and binds tighter than or
    ['a or b and c', { B: 1 }, false],
    ['(a or b) and c', { A: 1 }, false],
    ['(a or b) and c', { A: 1, C: 1 }, true],
    ['not a and b', { B: 1 }, true], // not binds tighter than and
    ['not a and b', { A: 1, B: 1 }, false],
    ['not (a and b)', { A: 1, B: 1 }, false],
    ['not not a', { A: 1 }, true],
    ['1 of them', { C: 1 }, true],
    ['1 of them', { D: 1 }, false], // _d is not part of "them"
    ['all of them', { A: 1, B: 1, C: 1 }, true],
    ['all of them', { A: 1, B: 1 }, false],
    ['all of them', { A: 1, B: 1, C: 1, D: 0 }, true],
    ['1 of _*', { D: 1 }, true], // but a pattern can name it
    ['all of ?', {}, false],
    ['2 of them', { A: 1, C: 1 }, true],
    ['2 of them', { A: 1 }, false],
    ['1 of a* and not 1 of b*', { A: 1 }, true],
    ['1 of a* and not 1 of b*', { A: 1, B: 1 }, false],
    ['a AND b', { A: 1, B: 1 }, true], // keywords are case-insensitive
  ];
  for (const [cond, event, expected] of cases) {
    it(`${cond} on ${JSON.stringify(event)} → ${expected}`, () => {
      if (cond === 'all of ?') {
        assert.throws(() => parseCondition(cond, ['a']), /matches no selection/);
        return;
      }
      assert.equal(fire(rule(`${sels}  condition: ${cond}`), event), expected);
    });
  }

  it('a list of conditions is an OR', () => {
    const y = rule(`${sels}  condition:\n    - a and b\n    - c`);
    assert.equal(fire(y, { C: 1 }), true);
    assert.equal(fire(y, { A: 1 }), false);
  });

  const errors: [string, RegExp][] = [
    ['a and', /unexpected end/],
    ['a b', /unexpected 'b'/],
    ['(a or b', /missing '\)'/],
    ['x', /unknown selection 'x'/],
    ['1 of zz*', /'zz\*' matches no selection/],
    ['a | count() > 5', /Sigma 1 syntax/],
    ['a near b', /unexpected 'near'|Sigma 1/],
    ['', /empty condition/],
    ['0 of them', /at least 1/],
  ];
  for (const [cond, reason] of errors) {
    it(`rejects '${cond}'`, () => assert.throws(() => parseCondition(cond, ['a', 'b']), reason));
  }
});

describe('selections', () => {
  it('a map is an AND of fields, a list of maps an OR', () => {
    const y = rule(`  s:\n    - A: 1\n      B: 2\n    - C: 3\n  condition: s`);
    assert.equal(fire(y, { A: 1, B: 2 }), true);
    assert.equal(fire(y, { A: 1 }), false);
    assert.equal(fire(y, { C: '3' }), true);
  });
  it('null matches an absent field', () => {
    const y = rule(`  s:\n    A: x\n    B: null\n  condition: s`);
    assert.equal(fire(y, { A: 'x' }), true);
    assert.equal(fire(y, { A: 'x', B: 'y' }), false);
  });
  it('keyword lists search every value', () => {
    const y = rule(`  keywords:\n    - 'mimikatz'\n    - 'sekurlsa'\n  condition: keywords`);
    assert.equal(fire(y, { msg: 'run SEKURLSA::logonpasswords' }), true);
    assert.equal(fire(y, { msg: 'fine' }), false);
  });
  it('a list mixing keywords and maps ORs them', () => {
    const y = rule(`  s:\n    - A: 1\n    - 'needle'\n  condition: s`);
    assert.equal(fire(y, { B: 'a needle' }), true);
    assert.equal(fire(y, { A: 1 }), true);
    assert.equal(fire(y, { B: 'hay' }), false);
  });
});

describe('loading: every bad document reported with file and line, the others load', () => {
  const text = `title: good one
id: 11111111-0000-0000-0000-000000000001
logsource: {product: test}
detection:
  s: {A: 1}
  condition: s
---
title: bad modifier
id: 11111111-0000-0000-0000-000000000002
logsource: {product: test}
detection:
  s:
    A|nope: 1
  condition: s
---
title: bad condition
id: 11111111-0000-0000-0000-000000000003
logsource: {product: test}
detection:
  s: {A: 1}
  condition: s and t
---
logsource: {product: test}
detection:
  s: {A: 1}
  condition: s
---
title: bad regex
logsource: {product: test}
detection:
  s:
    A|re: '(a)\\1'
  condition: s
---
title: good two
logsource: {product: test}
detection:
  s: {B: 1}
  condition: s
`;
  const set = rules(text);
  it('compiles the good rules', () => {
    assert.deepEqual(
      set.rules.map((r) => r.title),
      ['good one', 'good two'],
    );
  });
  it('reports each bad one at its line', () => {
    const got = set.problems.map((p) => `${p.file}:${p.line} ${p.code}`);
    assert.deepEqual(got.sort(), [
      'test.yml:13 EDR_SIGMA_MODIFIER',
      'test.yml:21 EDR_SIGMA_CONDITION',
      'test.yml:23 EDR_SIGMA_PARSE',
      'test.yml:32 EDR_SIGMA_REGEX',
    ]);
    assert.match(set.problems.find((p) => p.line === 23)!.message, /missing required key 'title'/);
  });
  it('reports YAML syntax errors with their line', () => {
    const r = rules('title: x\nlogsource: {product: test}\ndetection:\n  s: [a\n  condition: s\n');
    assert.equal(r.rules.length, 0);
    assert.equal(r.problems[0]?.code, 'EDR_SIGMA_YAML');
    assert.ok((r.problems[0]?.line ?? 0) >= 4);
  });
  it('rejects missing detection, condition, logsource and bad level', () => {
    const cases: [string, RegExp][] = [
      ['title: x\nlogsource: {product: a}\n', /'detection'/],
      ['title: x\nlogsource: {product: a}\ndetection:\n  s: {A: 1}\n', /'condition'/],
      ['title: x\ndetection:\n  s: {A: 1}\n  condition: s\n', /'logsource'/],
      [
        'title: x\nlevel: extreme\nlogsource: {product: a}\ndetection:\n  s: {A: 1}\n  condition: s\n',
        /unknown level/,
      ],
    ];
    for (const [y, reason] of cases) {
      const r = rules(y);
      assert.equal(r.rules.length, 0, y);
      assert.match(r.problems[0]?.message ?? '', reason);
    }
  });
  it('tolerates unknown keys', () => {
    const r = rules(`${rule('  s: {A: 1}\n  condition: s')}custom_key: {x: 1}\n`);
    assert.equal(r.rules.length, 1);
  });
  it('reports duplicate ids', () => {
    const r = rules(`${rule('  s: {A: 1}\n  condition: s')}---\n${rule('  s: {A: 1}\n  condition: s')}`);
    assert.equal(r.rules.length, 1);
    assert.equal(r.problems[0]?.code, 'EDR_SIGMA_DUPLICATE');
  });
});

describe('filters', () => {
  const base = `title: whoami
id: 22222222-0000-0000-0000-000000000001
name: whoami_rule
logsource: {product: linux, category: process_creation}
detection:
  s:
    Image|endswith: /whoami
  condition: s
`;
  const filter = (rulesRef: string, ls = 'product: linux') => `---
title: not for root
logsource: {${ls}}
filter:
  rules:
    - ${rulesRef}
  root:
    User: root
  condition: not root
`;
  const ev = (user: string) => sampleEvent({ image: '/usr/bin/whoami', argv: ['whoami'], userName: user });
  const fired = (yaml: string, user: string) =>
    evaluateExecve(createEngine(rules(yaml).rules), ev(user)).some((m) => m.rule.title === 'whoami');
  it('without a filter the rule fires for every user', () => {
    assert.equal(fired(base, 'root'), true);
  });
  it('a filter naming the rule by id adds its condition', () => {
    const y = base + filter('22222222-0000-0000-0000-000000000001');
    assert.equal(fired(y, 'root'), false);
    assert.equal(fired(y, 'alice'), true);
  });
  it('a filter can name the rule by its name', () => {
    assert.equal(fired(base + filter('whoami_rule'), 'root'), false);
  });
  it('a filter for another log source does not apply', () => {
    assert.equal(fired(base + filter('whoami_rule', 'product: windows'), 'root'), true);
  });
  it('a filter naming no loaded rule is a warning, not an error', () => {
    const set = rules(base + filter('nope'));
    assert.equal(set.problems.length, 0);
    assert.match(set.warnings[0]?.message ?? '', /nope/);
  });
});

describe('execve events: log source routing and the auditd view', () => {
  const y = `title: pc
logsource: {product: linux, category: process_creation}
detection:
  s:
    Image|endswith: /curl
    CommandLine|contains: ' -d @'
    LogonId: 0
  condition: s
---
title: auditd
logsource: {product: linux, service: auditd}
detection:
  s:
    type: EXECVE
    a0: curl
    a1: -d
  condition: s
---
title: windows
logsource: {product: windows, category: process_creation}
detection:
  s:
    CommandLine|contains: curl
  condition: s
`;
  const set = rules(y);
  const e = sampleEvent({ image: '/usr/bin/curl', argv: ['curl', '-d', '@/etc/passwd', 'x'], loginUid: 0n });
  it('routes each view to its rules only', () => {
    const m = evaluateExecve(createEngine(set.rules), e);
    assert.deepEqual(m.map((x) => x.rule.title).sort(), ['auditd', 'pc']);
  });
  it('reports the fields that matched', () => {
    const m = evaluateExecve(createEngine(set.rules), e).find((x) => x.rule.title === 'pc')!;
    assert.deepEqual(m.fields, [
      { field: 'Image', value: '/usr/bin/curl' },
      { field: 'CommandLine', value: 'curl -d @/etc/passwd x' },
      { field: 'LogonId', value: '0' },
    ]);
  });
  it('with routing off every rule sees the event', () => {
    const m = evaluateExecve(createEngine(set.rules, { routing: false }), e);
    assert.ok(m.some((x) => x.rule.title === 'windows'));
  });
  it('a near miss does not fire', () => {
    const miss = sampleEvent({
      image: '/usr/bin/curl',
      argv: ['curl', '-d', '@/etc/passwd'],
      loginUid: 1000n,
    });
    assert.deepEqual(
      evaluateExecve(createEngine(set.rules), miss).map((x) => x.rule.title),
      ['auditd'],
    );
  });
});

describe('candidate index', () => {
  it('keys rules by literal, exact value or field presence; only negations are left for every event', () => {
    const set = numbered(
      '  s:\n    A|contains: needle\n  condition: s',
      '  s:\n    A: Exact\n  condition: s',
      '  s:\n    B|cidr: 10.0.0.0/8\n  condition: s',
      '  s:\n    A: x\n  condition: not s',
    );
    const index = new CandidateIndex(set.rules);
    assert.deepEqual(index.always, [3]);
    const ctx = new EvalContext();
    const cands = (e: Record<string, unknown>) => {
      const ev = jsonEvent(e, { product: 'test' });
      return [...index.candidates(ctx.reset(ev), ev.fieldNames())].sort();
    };
    assert.deepEqual(cands({ A: 'a NEEDLE here' }), [0, 3]);
    assert.deepEqual(cands({ A: 'exact' }), [1, 3]);
    assert.deepEqual(cands({ A: 'exactly' }), [3]);
    assert.deepEqual(cands({ B: '192.168.1.1' }), [2, 3]);
    assert.deepEqual(cands({ B: null }), [3]);
  });

  it('also requires the other operands of an AND, on fields it reads anyway', () => {
    const set = numbered(
      '  a:\n    A|contains: alpha\n  b:\n    B|contains: beta\n  condition: a and b',
      '  s:\n    A|endswith: /vim\n    B|contains: " -c"\n  condition: s',
      '  a:\n    A|contains: alpha\n  b:\n    B|contains: beta\n  condition: a or b',
      '  a:\n    A|contains: alphabetical\n  b:\n    C|contains: ga\n  condition: all of them',
      '  a:\n    A|contains: alpha\n  b:\n    B|contains: beta\n  condition: a and not b',
    );
    assert.deepEqual(set.problems, []);
    const atoms = (i: number) =>
      set.rules[i]!.alsoRequired?.map((req) => req.map((a) => `${a.field}~${a.literal}`));
    assert.equal(atoms(0)!.length, 1);
    assert.equal(atoms(1)!.length, 1);
    assert.equal(atoms(2), undefined); // an OR needs either side only
    assert.deepEqual(atoms(3)!.length, 1);
    assert.equal(atoms(4), undefined); // what `not b` needs is not a literal
    const index = new CandidateIndex(set.rules);
    const ctx = new EvalContext();
    const cands = (e: Record<string, unknown>) => {
      const ev = jsonEvent(e, { product: 'test' });
      return [...index.candidates(ctx.reset(ev), ev.fieldNames())].sort();
    };
    assert.deepEqual(cands({ A: 'alpha', B: 'beta' }), [0, 2, 4]);
    assert.deepEqual(cands({ A: 'alpha', B: 'x' }), [2, 4]);
    assert.deepEqual(cands({ A: 'x', B: 'beta' }), [2]);
    assert.deepEqual(cands({ A: '/usr/bin/vim', B: 'vim -c :!/bin/sh' }), [1]);
    assert.deepEqual(cands({ A: '/usr/bin/vim', B: 'vim file' }), []);
    // C is read by no rule's own requirement: its literal is not required (reading C for every event costs
    // more than it saves), so rule 3 stays a candidate on its A literal alone.
    assert.deepEqual(cands({ A: 'alphabetical', C: 'other' }), [2, 3, 4]);
    const engine = createEngine(set.rules);
    const fired = (e: Record<string, unknown>) =>
      evaluate(engine, jsonEvent(e, { product: 'test' })).map((m) => m.rule.id);
    assert.deepEqual(fired({ A: 'alpha', B: 'beta' }), ['r0', 'r2']);
    assert.deepEqual(fired({ A: 'alphabetical', C: 'gamma' }), ['r2', 'r3', 'r4']);
    assert.deepEqual(fired({ A: 'alphabetical', C: 'other' }), ['r2', 'r4']);
  });

  it('finds exactly what evaluating every rule finds', () => {
    const y = [
      rule('  s:\n    CommandLine|contains: -la\n  condition: s'),
      rule('  s:\n    Image|endswith: /git\n  f:\n    CommandLine|contains: fetch\n  condition: s and not f'),
      rule('  s:\n    CommandLine|re: "^(git|make) "\n  condition: s'),
      rule('  f:\n    User: root\n  condition: not f'),
      rule('  s:\n    - apt-get\n    - dpkg\n  condition: s'),
      rule(
        '  a:\n    CommandLine|contains|all: [tar, -czf]\n  b:\n    CurrentDirectory: /srv\n  condition: all of them',
      ),
      rule('  s:\n    CommandLine|re: "[0-9]{4}"\n  condition: s'), // no literal: the field must be present
      rule('  s:\n    ParentProcessId|gt: 1\n    Image|fieldref: ParentImage\n  condition: s'),
      rule('  s:\n    DestinationIp|cidr: 10.0.0.0/8\n  condition: s'), // a field our events never have
      rule(
        '  a:\n    Image|endswith: /bash\n  b:\n    CommandLine|contains: /dev/tcp/\n  condition: a and b',
      ),
      rule(
        '  s:\n    Image|endswith: [/nc, /ncat]\n    CommandLine|contains: [" -e ", " -c "]\n  condition: s',
      ),
      rule('  a:\n    Image|endswith: /git\n  b:\n    User: root\n  condition: all of them'),
    ]
      .map((r, i) =>
        r
          .replace('id: r1', `id: r${i}`)
          .replace('product: test', 'product: linux, category: process_creation'),
      )
      .join('---\n');
    const set = rules(y);
    assert.deepEqual(set.problems, []);
    const fast = createEngine(set.rules);
    const naive = createEngine(set.rules, { index: false });
    let total = 0;
    for (const e of [...generateEvents(2000, 7), ...generateEvents(2000, 8, 0.3)]) {
      const a = evaluateExecve(fast, e).map((m) => m.rule.id);
      const b = evaluateExecve(naive, e).map((m) => m.rule.id);
      assert.deepEqual(a, b);
      total += a.length;
    }
    assert.ok(total > 100, 'the rules match some of the generated events');
  });
});
