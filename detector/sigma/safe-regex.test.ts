import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setImmediate as turn } from 'node:timers/promises';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { caseSensitive, compileRegex, minMatchLength, requiredLiterals } from './safe-regex.js';

describe('requiredLiterals: what every match must contain', () => {
  const cases: [string, string[] | undefined][] = [
    ['abc', ['abc']],
    ['ABC', ['abc']],
    ['ab+c', ['ab']], // not "abc": "abbc" matches
    ['ab*cde', ['cde']],
    ['ab?cd', ['cd']],
    ['a{0,3}bcd', ['bcd']],
    ['xa{2}bcd', ['abcd']],
    ['-(W|R)\\s?x', ['-w', '-r']],
    ['(?i)net\\s+config', ['config']],
    ['foo|barbaz', ['foo', 'barbaz']],
    ['foo|.*', undefined],
    ['[Ww]get ', ['wget ']],
    ['[a-z]+', undefined],
    ['\\.exe$', ['.exe']],
    ['^/usr/bin/(python|perl) -c', ['/usr/bin/python -c', '/usr/bin/perl -c']],
    ['(a(b)c)xyz', ['xyz']],
    ['\\bcurl\\b', ['curl']],
    ['.*', undefined],
  ];
  for (const [src, want] of cases) {
    it(`/${src}/ → ${JSON.stringify(want)}`, () => assert.deepEqual(requiredLiterals(src), want));
  }
  it('keeps the case as written for case-sensitive patterns', () => {
    assert.deepEqual(requiredLiterals('-(W|R)\\s?x', true), ['-W', '-R']);
    assert.deepEqual(requiredLiterals('[Ww]get ', true), ['Wget ', 'wget ']);
    assert.deepEqual(requiredLiterals('ABC|dEf', true), ['ABC', 'dEf']);
    assert.equal(requiredLiterals('[a-z]+', true), undefined);
    assert.equal(caseSensitive('-(W|R)\\s?x', ''), true);
    assert.equal(caseSensitive('-(W|R)\\s?x', 'i'), false);
    assert.equal(caseSensitive('-(W|R)\\s?x', 'ms'), true);
    assert.equal(caseSensitive('(?i)net\\s+config', ''), false);
    assert.equal(caseSensitive('a(?i:B)c', ''), false);
    assert.equal(caseSensitive('a(?-i)B', ''), false);
    assert.equal(caseSensitive('(?s)a.b', ''), true);
    assert.equal(caseSensitive('(?:ab)+', ''), true);
    // Each case-sensitive sample contains one of its literals as written.
    const samples: [string, string][] = [
      ['-(W|R)\\s?x', 'run -R x'],
      ['[Ww]get http', 'Wget http://x'],
      ['ab+C', 'xxabbbCxx'],
    ];
    for (const [src, text] of samples) {
      assert.ok(compileRegex(src, '').test(text), `${src} matches ${text}`);
      assert.ok(
        (requiredLiterals(src, true) ?? []).some((l) => text.includes(l)),
        `${src}: ${text}`,
      );
    }
  });

  it('every literal set is necessary: matching samples contain one of them', () => {
    const samples: [string, string][] = [
      ['ab+c', 'xxabbbcxx'],
      ['xa{2}bcd', 'xaabcd'],
      ['-(W|R)\\s?x', 'run -R x'],
      ['^/usr/bin/(python|perl) -c', '/usr/bin/perl -c 1'],
      ['(?i)net\\s+config', 'NET   CONFIG'],
    ];
    for (const [src, text] of samples) {
      assert.ok(compileRegex(src, '').test(text), `${src} matches ${text}`);
      const lits = requiredLiterals(src) ?? [];
      assert.ok(
        lits.some((l) => text.toLowerCase().includes(l)),
        `${src}: ${text} contains one of ${lits}`,
      );
    }
  });
});

describe('minMatchLength: no match can be shorter', () => {
  const cases: [string, number][] = [
    ['abc', 3],
    ['a*bc', 2],
    ['a+bc', 3],
    ['a?b', 1],
    ['a{3}b', 4],
    ['a{2,5}', 2],
    ['(ab|c)d', 2],
    ['(?:ab)+', 2],
    ['(?i)abc', 3],
    ['(?i:ab)c', 3],
    ['(?P<n>ab)c', 3],
    ['\\s[a-f0-9]{64}\\s[a-f0-9]{16}', 82],
    ['^\\bfoo$', 3],
    ['x|yz', 1],
    ['\\x41\\p{L}', 2],
    ['a{,3}', 5], // not a repetition in RE2: literal text
  ];
  for (const [src, want] of cases) {
    it(`/${src}/ → ${want}`, () => assert.equal(minMatchLength(src), want));
  }
  it('agrees with the engine: the shortest matching inputs are not rejected', () => {
    for (const [src, text] of [
      ['a{3}b', 'aaab'],
      ['(ab|c)d', 'cd'],
      ['x|yz', 'x'],
    ] as const) {
      assert.equal(text.length >= minMatchLength(src), true);
      assert.ok(compileRegex(src, '').test(text));
    }
  });
});

describe('compiled expressions are freed', () => {
  it('compiling far more expressions than the WebAssembly memory holds at once keeps working once the old are dropped', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    // Without freeing, re2-wasm's 16 MiB fill up after about 4,000 of these and every later compile throws.
    for (let round = 0; round < 12; round++) {
      const batch = Array.from({ length: 500 }, (_, i) =>
        compileRegex(`r${round}x${i}[a-z]+(foo|bar)\\d{2,5}`, ''),
      );
      assert.equal(batch[0]!.test(`r${round}x0abcfoo123`), true);
      gc();
      await turn(); // finalizers run between turns of the event loop
    }
    assert.equal(compileRegex('still(works)?', '').test('still'), true);
  });
});
