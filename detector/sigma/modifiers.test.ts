import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EdrError } from '../../infra/errors.js';
import { EvalContext, jsonEvent } from './event-view.js';
import { base64Offsets, compileFieldItem, itemMatches, parseIp } from './modifiers.js';

/** Does `key: value` match an event whose fields are `event`? */
function matches(key: string, value: unknown, event: Record<string, unknown>, placeholders = {}): boolean {
  const item = compileFieldItem(key, value, { placeholders }, () => {});
  return itemMatches(item, new EvalContext().reset(jsonEvent(event, {})));
}

type Case = [key: string, value: unknown, field: unknown, expected: boolean];

const show = (v: unknown): string => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x));

function table(name: string, cases: Case[]): void {
  describe(name, () => {
    for (const [key, value, field, expected] of cases) {
      it(`${key}: ${show(value)} vs ${show(field)} → ${expected}`, () => {
        const f = key.split('|')[0] || 'F';
        assert.equal(matches(key.startsWith('|') ? key : key, value, { [f]: field }), expected);
      });
    }
  });
}

table('plain values', [
  ['F', 'abc', 'abc', true],
  ['F', 'abc', 'ABC', true], // case-insensitive by default
  ['F', 'abc', 'abcd', false], // exact, not contains
  ['F', '', '', true],
  ['F', '', 'x', false],
  ['F', ['a', 'b'], 'b', true], // list: OR
  ['F', ['a', 'b'], 'c', false],
  ['F', 0, '0', true], // YAML integer matches its string form (LogonId: 0)
  ['F', 0, 0, true],
  ['F', 0, '00', false], // strings compare as strings
  ['F', 1.5, 1.5, true],
  ['F', 10, 10n, true], // 64-bit event fields
  ['F', 0, '1', false],
  ['F', 42, 'x42', false],
  ['F', true, 'true', true],
  ['F', true, true, true],
  ['F', false, 'true', false],
  ['F', 'abc', ['x', 'ABC'], true], // list-valued event field: any element
]);

table('wildcards and escaping', [
  ['F', 'a*c', 'abbbc', true],
  ['F', 'a*c', 'ac', true],
  ['F', 'a*c', 'abcd', false],
  ['F', 'a?c', 'abc', true],
  ['F', 'a?c', 'ac', false],
  ['F', 'a?c', 'abbc', false],
  ['F', '*x*y*', 'zzxzzyzz', true],
  ['F', '*x*y*', 'zzyzzxzz', false],
  ['F', 'a*b?d*', 'a--b-d', true],
  ['F', 'a\\*c', 'a*c', true], // \* is a literal star
  ['F', 'a\\*c', 'abc', false],
  ['F', 'a\\?c', 'a?c', true],
  ['F', 'a\\?c', 'abc', false],
  ['F', 'C:\\Windows', 'c:\\windows', true], // a backslash before a plain char is literal
  ['F', 'a\\\\b', 'a\\b', true], // \\ is one backslash
  ['F', 'a\\\\*', 'a\\zzz', true], // escaped backslash, then a wildcard
  ['F', 'a\\\\\\*', 'a\\*', true], // escaped backslash, escaped star
  ['F', 'a\\\\\\*', 'a\\zz', false],
  ['F', 'a\\\\\\\\b', 'a\\\\b', true], // four backslashes: two
  ['F', 'end\\', 'end\\', true], // trailing backslash
]);

table('contains, startswith, endswith, all, cased', [
  ['F|contains', 'bin/sh', '/usr/bin/sh -c x', true],
  ['F|contains', 'BIN/SH', '/usr/bin/sh', true],
  ['F|contains', 'bin/zsh', '/usr/bin/sh', false],
  ['F|startswith', '/usr', '/usr/bin', true],
  ['F|startswith', '/usr', '/bin/usr', false],
  ['F|endswith', '/sh', '/bin/sh', true],
  ['F|endswith', '/sh', '/bin/sh2', false],
  ['F|contains', 'a*c', 'xxabbcxx', true], // inner wildcards still work
  ['F|contains|all', ['curl', '-o'], 'curl -o out http://x', true],
  ['F|contains|all', ['curl', '-O'], 'wget -O out', false],
  ['F|cased', 'Abc', 'Abc', true],
  ['F|cased', 'Abc', 'abc', false],
  ['F|contains|cased', 'Bin', '/usr/Bin/x', true],
  ['F|contains|cased', 'Bin', '/usr/bin/x', false],
]);

table('re (linear-time engine)', [
  ['F|re', 'ab+c', 'xxabbbcxx', true], // search, not full match
  ['F|re', '^ab+c$', 'xxabbbc', false],
  ['F|re', 'ABC', 'abc', false], // case-sensitive by default
  ['F|re|i', 'ABC', 'abc', true],
  ['F|re', '(?i)ABC', 'abc', true], // inline flag
  ['F|re', '^b', 'a\nb', false],
  ['F|re|m', '^b', 'a\nb', true],
  ['F|re', 'a.b', 'a\nb', false],
  ['F|re|s', 'a.b', 'a\nb', true],
  ['F|re', '(a+)+$', `${'a'.repeat(5000)}!`, false], // catastrophic for a backtracking engine: immediate here
  ['F|re', '[0-9]{1,3}\\.[0-9]{1,3}', 'ip 10.20 x', true],
]);

table('encodings', [
  ['F|base64', 'hello', 'aGVsbG8=', true],
  ['F|base64|contains', 'hello', 'x aGVsbG8= y', true],
  ['F|base64offset|contains', 'hello', Buffer.from('xhello').toString('base64'), true],
  ['F|base64offset|contains', 'hello', Buffer.from('xyhello').toString('base64'), true],
  ['F|base64offset|contains', 'hello', Buffer.from('xyzhello!').toString('base64'), true],
  ['F|base64offset|contains', 'hello', Buffer.from('xyzhellp!').toString('base64'), false],
  ['F|wide|base64offset|contains', 'cmd', Buffer.from('xcmd', 'utf16le').toString('base64'), true],
  ['F|utf16le|base64', 'cmd', Buffer.from('cmd', 'utf16le').toString('base64'), true],
  ['F|utf16be|base64', 'cmd', Buffer.from([0, 0x63, 0, 0x6d, 0, 0x64]).toString('base64'), true],
  ['F|utf16|base64', 'cmd', Buffer.from([0xff, 0xfe, 0x63, 0, 0x6d, 0, 0x64, 0]).toString('base64'), true],
  ['F|base64', 'hello', 'AGVSBG8=', false], // base64 text is case-sensitive
]);

table('windash', [
  ['F|windash|contains', '-enc', 'powershell /enc x', true],
  ['F|windash|contains', '-enc', 'powershell -enc x', true],
  ['F|windash|contains', '-enc', 'powershell \u2013enc x', true], // en dash
  ['F|windash|contains', '-enc', 'powershell \u2014enc x', true], // em dash
  ['F|windash|contains', '-enc', 'powershell \u2015enc x', true], // horizontal bar
  ['F|windash|contains', '-enc', 'powershell +enc x', false],
  ['F|contains|windash', '/c', 'cmd -c', true], // order does not matter
]);

table('cidr', [
  ['F|cidr', '10.0.0.0/8', '10.1.2.3', true],
  ['F|cidr', '10.0.0.0/8', '11.1.2.3', false],
  ['F|cidr', '192.168.1.0/24', '192.168.1.255', true],
  ['F|cidr', '192.168.1.0/25', '192.168.1.128', false],
  ['F|cidr', ['127.0.0.0/8', '::1/128'], '::1', true],
  ['F|cidr', 'fe80::/10', 'fe80::1:2', true],
  ['F|cidr', 'fe80::/10', 'fec0::1', false],
  ['F|cidr', '2001:db8::/32', '2001:0db8:ffff::1', true],
  ['F|cidr', '10.0.0.0/8', 'not an ip', false],
  ['F|cidr', '0.0.0.0/0', '8.8.8.8', true],
  ['F|cidr', '0.0.0.0/0', '::1', false], // v4 networks do not contain v6 addresses
]);

table('numbers and neq', [
  ['F|gt', 10, 11, true],
  ['F|gt', 10, '11', true],
  ['F|gt', 10, 10, false],
  ['F|gte', 10, 10, true],
  ['F|lt', 10, 9.5, true],
  ['F|lt', 10, 'abc', false],
  ['F|lte', 10, 10, true],
  ['F|lte', 10, 11, false],
  ['F|neq', 'x', 'y', true],
  ['F|neq', 'x', 'X', false],
  ['F|neq', ['x', 'y'], 'y', false], // different from every value
  ['F|neq', ['x', 'y'], 'z', true],
  ['F|neq', 5, 6, true],
  ['F|neq', 5, '5', false],
]);

table('time parts', [
  ['F|hour', 13, '2026-11-26T13:05:00Z', true],
  ['F|hour', 13, '2026-11-26T14:05:00Z', false],
  ['F|minute', 5, '2026-11-26T13:05:00Z', true],
  ['F|day', 26, '2026-11-26T13:05:00Z', true],
  ['F|month', 11, '2026-11-26T13:05:00Z', true],
  ['F|year', 2026, '2026-11-26T13:05:00Z', true],
  ['F|week', 48, '2026-11-26T13:05:00Z', true],
  ['F|hour|gte', 20, '2026-11-26T22:00:00Z', true],
  ['F|hour|gte', 20, '2026-11-26T08:00:00Z', false],
  ['F|hour', 0, 'not a date', false],
]);

describe('null, exists, fieldref, expand', () => {
  const cases: [string, unknown, Record<string, unknown>, boolean][] = [
    ['F', null, {}, true],
    ['F', null, { F: null }, true],
    ['F', null, { F: '' }, false],
    ['F', null, { F: 'x' }, false],
    ['F|exists', true, { F: '' }, true],
    ['F|exists', true, {}, false],
    ['F|exists', false, {}, true],
    ['F|exists', false, { F: 'x' }, false],
    ['F|fieldref', 'G', { F: 'Same', G: 'same' }, true],
    ['F|fieldref', 'G', { F: 'a', G: 'b' }, false],
    ['F|fieldref', 'G', { F: 'a' }, false],
    ['F|fieldref|cased', 'G', { F: 'Same', G: 'same' }, false],
    ['F|fieldref|startswith', 'G', { F: '/home/u/x', G: '/home/u' }, true],
    ['F|fieldref|neq', 'G', { F: 'a', G: 'b' }, true],
    ['F|fieldref|neq', 'G', { F: 'a', G: 'a' }, false],
    ['F|expand', '%admins%', { F: 'root' }, true],
    ['F|expand', '%admins%', { F: 'bob' }, false],
    ['F|expand|startswith', '%admins%_x', { F: 'adm_john_x' }, true], // placeholder values keep wildcards
    ['F|expand|startswith', '%admins%_x', { F: 'bob_x' }, false],
    ['F|expand', 'x\\%admins%', { F: 'x%admins%' }, true], // \% is a plain percent
    ['F', '%admins%', { F: '%admins%' }, true], // no expand: literal
    ['a.b', 'x', { a: { b: 'x' } }, true], // nested field by dotted name
  ];
  for (const [key, value, event, expected] of cases) {
    it(`${key}: ${JSON.stringify(value)} vs ${JSON.stringify(event)} → ${expected}`, () => {
      assert.equal(matches(key, value, event, { admins: ['root', 'adm_*'] }), expected);
    });
  }

  it('an expand placeholder without configured values matches nothing and warns', () => {
    const warnings: string[] = [];
    const item = compileFieldItem('F|expand', '%nope%', {}, (m) => warnings.push(m));
    assert.equal(itemMatches(item, new EvalContext().reset(jsonEvent({ F: '%nope%' }, {}))), false);
    assert.match(warnings[0] ?? '', /%nope%/);
  });
});

describe('keywords', () => {
  const cases: [unknown, Record<string, unknown>, boolean][] = [
    ['evil', { a: 'x', b: 'an EVIL thing' }, true],
    ['evil', { a: 'x', b: 'good' }, false],
    [['good', 'evil'], { b: 'good' }, true],
    ['ev*il', { b: 'xxevXXilxx' }, true],
    [1337, { b: 'port 1337 open' }, true],
    ['deep', { a: { b: ['x', 'deep one'] } }, true],
  ];
  for (const [value, event, expected] of cases) {
    it(`${JSON.stringify(value)} in ${JSON.stringify(event)} → ${expected}`, () => {
      assert.equal(matches('', value, event), expected);
    });
  }
  it("'|all' keywords must all be present", () => {
    assert.equal(matches('|all', ['a1', 'b2'], { x: 'a1 b2' }), true);
    assert.equal(matches('|all', ['a1', 'b2'], { x: 'a1' }), false);
  });
});

describe('long value lists share one matcher', () => {
  const ten = (f: (i: number) => string) => Array.from({ length: 10 }, (_, i) => f(i));
  const cases: [string, unknown, unknown, boolean][] = [
    ['F', ten((i) => `Exact${i}`), 'exact7', true],
    ['F', ten((i) => `Exact${i}`), 'exact77', false],
    ['F|endswith', ten((i) => `/bin/tool${i}`), '/USR/BIN/TOOL3', true],
    ['F|endswith', ten((i) => `/bin/tool${i}`), '/usr/bin/tool3x', false],
    ['F|startswith', ten((i) => `pre${i}-`), 'PRE9-rest', true],
    ['F|startswith', ten((i) => `pre${i}-`), 'xpre9-rest', false],
    ['F|contains', ten((i) => `needle${i}`), 'hay NEEDLE5 hay', true],
    ['F|contains', ten((i) => `needle${i}`), 'hay needle hay', false],
    ['F', [...ten((i) => `x${i}`), '*.sh', 'run*', '*mid*'], 'a.SH', true], // mixed kinds
    ['F', [...ten((i) => `x${i}`), '*.sh', 'run*', '*mid*'], 'RUNNER', true],
    ['F', [...ten((i) => `x${i}`), '*.sh', 'run*', '*mid*'], 'amidst', true],
    ['F', [...ten((i) => `x${i}`), '*.sh', 'run*', '*mid*'], 'nothing', false],
    ['F', [...ten((i) => `x${i}`), 'a?c'], 'abc', true], // a wildcard value: not combined, still right
    ['F|cased', ten((i) => `Exact${i}`), 'exact7', false],
    ['F|cased', ten((i) => `Exact${i}`), 'Exact7', true],
    ['F|endswith', ten((i) => `/t${i}`), ['a', 'b/t4'], true], // list-valued field
  ];
  for (const [key, value, field, expected] of cases) {
    it(`${key}: ${JSON.stringify(value).slice(0, 40)}… vs ${JSON.stringify(field)} → ${expected}`, () => {
      assert.equal(matches(key, value, { F: field }), expected);
    });
  }
  it('combines simple case-insensitive values into one test', () => {
    assert.equal(
      compileFieldItem(
        'F|endswith',
        ten((i) => `/t${i}`),
        {},
        () => {},
      ).tests.length,
      1,
    );
    assert.equal(
      compileFieldItem(
        'F|cased',
        ten((i) => `T${i}`),
        {},
        () => {},
      ).tests.length,
      10,
    );
    assert.equal(
      compileFieldItem(
        'F|contains|all',
        ten((i) => `t${i}`),
        {},
        () => {},
      ).tests.length,
      10,
    );
  });
});

describe('invalid modifiers and values are rejected with a reason', () => {
  const cases: [string, unknown, RegExp][] = [
    ['F|nope', 'x', /unknown modifier 'nope'/],
    ['F|contains|startswith', 'x', /cannot be combined/],
    ['F|fieldref|gte', 'G', /'fieldref' and 'gte' cannot be combined/],
    ['F|cidr|re', 'x', /'cidr' and 're' cannot be combined/],
    ['F|re|contains', 'x', /'re' cannot be combined/],
    ['F|i', 'x', /sub-modifier of 're'/],
    ['F|re', '(a)\\1', /backreferences/],
    ['F|re', 'a(?=b)', /lookaround/],
    ['F|re', 'a(', /rejected/],
    ['F|cidr', '10.0.0.0/33', /not a CIDR/],
    ['F|gt', 'abc', /compares numbers/],
    ['F|exists', 'yes', /true or false/],
    ['F|all', 'x', /needs a list/],
    ['F', [], /empty list/],
    ['F', { a: 1 }, /not a list or map/],
    ['F|base64', 'a*', /cannot encode a value with wildcards/],
  ];
  for (const [key, value, reason] of cases) {
    it(`${key}: ${JSON.stringify(value)}`, () => {
      assert.throws(
        () => compileFieldItem(key, value, {}, () => {}),
        (err: unknown) =>
          err instanceof EdrError && err.code.startsWith('EDR_SIGMA_') && reason.test(err.message),
      );
    });
  }
});

describe('helpers', () => {
  it('base64Offsets gives the three position-independent forms', () => {
    assert.deepEqual(base64Offsets('hello'), ['aGVsbG', 'hlbGxv', 'oZWxsb']);
  });
  it('parseIp reads v4, v6 and v4-in-v6', () => {
    assert.deepEqual([...(parseIp('1.2.3.4') ?? [])].slice(10), [0xff, 0xff, 1, 2, 3, 4]);
    assert.equal(parseIp('::ffff:1.2.3.4')?.[15], 4);
    assert.equal(parseIp('1.2.3.256'), undefined);
    assert.equal(parseIp('1::2::3'), undefined);
  });
});
