import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  type CompiledCorrelation,
  type CorrelationState,
  emptyCorrelationState,
  parseTimespan,
  stepCorrelation,
} from './correlations.js';
import { compileDocs } from './engine.js';
import { parseRuleText } from './parse.js';

function correlation(body: string): CompiledCorrelation {
  const { docs, problems } = parseRuleText(`title: corr\nid: c1\n${body}`, 'c.yml');
  assert.deepEqual(problems, []);
  const set = compileDocs(docs);
  assert.deepEqual(set.problems, []);
  return set.correlations[0]!;
}

function problem(body: string): string {
  const { docs } = parseRuleText(`title: corr\n${body}`, 'c.yml');
  const set = compileDocs(docs);
  assert.equal(set.correlations.length, 0);
  const p = set.problems[0]!;
  return `${p.line}: ${p.message}`;
}

/** Feeds (time s, rule, fields) inputs in order; returns the aggregate of each match, by input index. */
function run(
  c: CompiledCorrelation,
  inputs: [number, string, Record<string, unknown>][],
): [number, number][] {
  let state: CorrelationState = emptyCorrelationState();
  const out: [number, number][] = [];
  inputs.forEach(([t, rule, fields], i) => {
    const before = state;
    const r = stepCorrelation(c, state, { timeMs: t * 1000, rule, get: (f) => fields[f] });
    if (c.rules.includes(rule)) assert.notEqual(r.state, before, 'a step returns a new state');
    else assert.equal(r.state, before, 'an unrelated rule leaves the state as it was');
    state = r.state;
    for (const m of r.matches) out.push([i, m.value]);
  });
  return out;
}

describe('correlations: parse and validate', () => {
  it('reads all seven types', () => {
    for (const type of ['event_count', 'value_count', 'value_sum', 'value_avg', 'value_percentile']) {
      const field = type === 'event_count' ? '' : '\n    field: bytes';
      const c = correlation(
        `correlation:\n  type: ${type}\n  rules: [r1]\n  group-by: [host]\n  timespan: 5m\n  condition:\n    gte: 3${field}\n`,
      );
      assert.equal(c.type, type);
      assert.equal(c.timespanMs, 300_000);
    }
    for (const type of ['temporal', 'temporal_ordered']) {
      const c = correlation(
        `correlation:\n  type: ${type}\n  rules: [a, b]\n  group-by: [host]\n  timespan: 1h\n`,
      );
      assert.deepEqual(c.condition, { gte: 2 }); // default: all the rules
    }
  });
  it('warns about referenced rules that are not loaded, and resolves ids and names', () => {
    const { docs } = parseRuleText(
      `title: base\nid: b1\nname: base_rule\nlogsource: {product: x}\ndetection:\n  s: {A: 1}\n  condition: s\n---\n` +
        `title: corr\ncorrelation:\n  type: event_count\n  rules: [b1, base_rule, ghost]\n  timespan: 1m\n  condition: {gte: 2}\n`,
      'c.yml',
    );
    const set = compileDocs(docs);
    assert.equal(set.correlations.length, 1);
    assert.deepEqual(
      set.warnings.map((w) => `${w.line}: ${w.message}`),
      ['9: correlation refers to rules that are not loaded: ghost'],
    );
  });
  it('parses timespans', () => {
    assert.deepEqual(['30s', '5m', '2h', '1d', '1w', '5', 'm', '1y'].map(parseTimespan), [
      30_000,
      300_000,
      7_200_000,
      86_400_000,
      604_800_000,
      undefined,
      undefined,
      undefined,
    ]);
  });
  const bad: [string, RegExp][] = [
    [
      'correlation:\n  type: event_sum\n  rules: [r]\n  timespan: 5m\n  condition: {gte: 1}\n',
      /^3: correlation type must be one of/,
    ],
    ['correlation:\n  type: event_count\n  timespan: 5m\n  condition: {gte: 1}\n', /'correlation.rules'/],
    [
      'correlation:\n  type: event_count\n  rules: [r]\n  timespan: 5 minutes\n  condition: {gte: 1}\n',
      /^5: .*timespan/,
    ],
    ['correlation:\n  type: event_count\n  rules: [r]\n  timespan: 5m\n', /needs a condition/],
    [
      'correlation:\n  type: value_count\n  rules: [r]\n  timespan: 5m\n  condition: {gte: 1}\n',
      /needs 'condition.field'/,
    ],
    [
      'correlation:\n  type: event_count\n  rules: [r]\n  timespan: 5m\n  condition: {more: 1}\n',
      /unknown condition 'more'/,
    ],
    ['correlation:\n  type: temporal\n  rules: [r]\n  timespan: 5m\n', /at least two rules/],
    [
      'correlation:\n  type: event_count\n  rules: [r]\n  timespan: 5m\n  condition: {gte: many}\n',
      /must be a number/,
    ],
  ];
  for (const [body, reason] of bad) {
    it(`rejects ${reason}`, () => assert.match(problem(body), reason));
  }
});

describe('correlations: stepCorrelation', () => {
  it('event_count counts per group inside the time span, then starts afresh', () => {
    const c = correlation(
      'correlation:\n  type: event_count\n  rules: [r1]\n  group-by: [host]\n  timespan: 1m\n  condition:\n    gte: 3\n',
    );
    const got = run(c, [
      [0, 'r1', { host: 'a' }],
      [10, 'r1', { host: 'b' }],
      [20, 'r1', { host: 'a' }],
      [30, 'other', { host: 'a' }], // not one of the rules: ignored
      [40, 'r1', { host: 'a' }], // third for a within 60 s
      [50, 'r1', { host: 'a' }],
      [200, 'r1', { host: 'a' }], // window moved on: the earlier one expired
      [205, 'r1', { host: 'a' }],
    ]);
    assert.deepEqual(got, [[4, 3]]);
  });
  it('value_count counts distinct values', () => {
    const c = correlation(
      'correlation:\n  type: value_count\n  rules: [r1]\n  group-by: [host]\n  timespan: 1h\n  condition:\n    field: user\n    gt: 2\n',
    );
    const got = run(c, [
      [0, 'r1', { host: 'a', user: 'x' }],
      [1, 'r1', { host: 'a', user: 'x' }],
      [2, 'r1', { host: 'a', user: 'y' }],
      [3, 'r1', { host: 'a', user: 'z' }],
    ]);
    assert.deepEqual(got, [[3, 3]]);
  });
  it('value_sum and value_avg aggregate a numeric field; a range is two bounds', () => {
    const sum = correlation(
      'correlation:\n  type: value_sum\n  rules: [r1]\n  timespan: 1h\n  condition:\n    field: bytes\n    gt: 100\n    lte: 200\n',
    );
    assert.deepEqual(
      run(sum, [
        [0, 'r1', { bytes: 60 }],
        [1, 'r1', { bytes: '50' }],
      ]),
      [[1, 110]],
    );
    const avg = correlation(
      'correlation:\n  type: value_avg\n  rules: [r1]\n  timespan: 1h\n  condition:\n    field: ms\n    gte: 10\n',
    );
    assert.deepEqual(
      run(avg, [
        [0, 'r1', { ms: 2 }],
        [1, 'r1', { ms: 30 }],
      ]),
      [[1, 16]],
    );
  });
  it('value_percentile: how rare the current value is in the window', () => {
    const c = correlation(
      'correlation:\n  type: value_percentile\n  rules: [r1]\n  timespan: 1d\n  condition:\n    field: image\n    lte: 10\n',
    );
    const inputs: [number, string, Record<string, unknown>][] = [];
    for (let i = 0; i < 19; i++) inputs.push([i, 'r1', { image: '/usr/bin/ls' }]);
    inputs.push([20, 'r1', { image: '/tmp/x' }]); // 1 of 20: 5 %
    assert.deepEqual(run(c, inputs), [[19, 5]]);
  });
  it('temporal needs every rule in the span, in any order, per group', () => {
    const c = correlation(
      'correlation:\n  type: temporal\n  rules: [a, b, c]\n  group-by: [user]\n  timespan: 5m\n',
    );
    const got = run(c, [
      [0, 'c', { user: 'u' }],
      [1, 'a', { user: 'u' }],
      [2, 'b', { user: 'v' }], // other group
      [3, 'b', { user: 'u' }],
    ]);
    assert.deepEqual(got, [[3, 3]]);
  });
  it('temporal_ordered needs them in the given order', () => {
    const c = correlation('correlation:\n  type: temporal_ordered\n  rules: [a, b]\n  timespan: 5m\n');
    assert.deepEqual(
      run(c, [
        [0, 'b', {}],
        [1, 'a', {}],
      ]),
      [],
    );
    assert.deepEqual(
      run(c, [
        [0, 'a', {}],
        [1, 'b', {}],
      ]),
      [[1, 2]],
    );
  });
  it('aliases map one group-by name to different fields per rule', () => {
    const c = correlation(
      'correlation:\n  type: temporal\n  rules: [conn, err]\n  group-by: [ip]\n  timespan: 10s\n  aliases:\n    ip:\n      conn: source.ip\n      err: dest.ip\n',
    );
    const got = run(c, [
      [0, 'conn', { 'source.ip': '10.0.0.1' }],
      [1, 'err', { 'dest.ip': '10.0.0.2' }],
      [2, 'err', { 'dest.ip': '10.0.0.1' }],
    ]);
    assert.deepEqual(got, [[2, 2]]);
  });
  it('does not change the state it is given', () => {
    const c = correlation(
      'correlation:\n  type: event_count\n  rules: [r1]\n  timespan: 1m\n  condition:\n    gte: 2\n',
    );
    const s0 = emptyCorrelationState();
    const s1 = stepCorrelation(c, s0, { timeMs: 0, rule: 'r1', get: () => undefined }).state;
    assert.equal(s0.groups.size, 0);
    const a = stepCorrelation(c, s1, { timeMs: 1, rule: 'r1', get: () => undefined });
    const b = stepCorrelation(c, s1, { timeMs: 1, rule: 'r1', get: () => undefined });
    assert.equal(a.matches.length, 1);
    assert.equal(b.matches.length, 1); // same input, same state: same result
  });
});
