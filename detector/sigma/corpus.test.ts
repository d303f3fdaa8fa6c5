/**
 * The SigmaHQ corpus (../shared/sigma beside the repository; never copied into it): every active rule must
 * compile, the old-syntax ones must fail cleanly, and each linux process_creation rule must fire on an event
 * built from its own detection and stay silent on a near miss of that event.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseAllDocuments } from 'yaml';
import type { ExecveEvent } from '../../schemas/types.js';
import { generateEvents, prng, sampleEvent } from '../../test/fixtures/events.js';
import { ACTIVE, SIGMA } from '../../test/fixtures/sigma-corpus.js';
import type { Condition } from './conditions.js';
import { type CompiledRule, createEngine, evaluateExecve, loadRules } from './engine.js';
import { parseSigmaString } from './modifiers.js';
import { ruleFiles } from './parse.js';
import { closingParen, compileRegex, minMatchLength, splitTop } from './safe-regex.js';

describe('SigmaHQ corpus', () => {
  it('is present beside the repository', () => {
    assert.ok(existsSync(join(SIGMA, 'rules')), `expected the SigmaHQ corpus at ${SIGMA}`);
  });

  // Without the corpus only the test above fails, with where it looked (not a crash of the whole suite).
  const present = existsSync(join(SIGMA, 'rules'));
  const sets = present ? ACTIVE.map((d) => ({ dir: d, set: loadRules(join(SIGMA, d)) })) : [];

  it('compiles every active rule (3,780), naming each that does not', () => {
    const failed = sets.flatMap(({ dir, set }) =>
      set.problems.map((p) => `${dir}/${p.file}:${p.line}: ${p.message}`),
    );
    assert.deepEqual(failed, []);
    const total = sets.reduce(
      (n, { set }) => n + set.rules.length + set.correlations.length + set.filters.length,
      0,
    );
    assert.equal(total, 3780);
  });

  for (const dir of ['deprecated', 'unsupported']) {
    it(`loads ${dir}/ without crashing; each failure has a file, a line and a reason`, () => {
      const set = loadRules(join(SIGMA, dir));
      assert.ok(set.rules.length > 0);
      for (const p of set.problems) {
        assert.ok(p.file.endsWith('.yml') && p.line > 0 && p.message.length > 10, JSON.stringify(p));
        assert.notEqual(p.code, 'EDR_SIGMA_INTERNAL', `${p.file}:${p.line}: ${p.message}`);
      }
    });
  }

  const all = sets.flatMap(({ dir, set }) => set.rules.map((r) => ({ dir, rule: r })));
  const linuxPc = all.filter(
    ({ rule: r }) => r.logsource.product === 'linux' && r.logsource.category === 'process_creation',
  );
  it('has the 144 linux process_creation rules', () => assert.equal(linuxPc.length, 144));

  it('the candidate index finds what evaluating all 3,780 rules finds (routing off)', () => {
    const rules = all.map((x) => x.rule);
    const fast = createEngine(rules, { routing: false });
    const naive = createEngine(rules, { routing: false, index: false });
    let matches = 0;
    for (const e of generateEvents(150, 11, 0.3)) {
      const a = evaluateExecve(fast, e).map((m) => m.rule.id);
      assert.deepEqual(
        a,
        evaluateExecve(naive, e).map((m) => m.rule.id),
        e.argv.join(' '),
      );
      matches += a.length;
    }
    assert.ok(matches > 150, `the rules match the events (${matches} matches)`);
  });

  const auditdExecve = all.filter(({ dir, rule: r }) =>
    `${dir}/${r.doc.file}`.startsWith('rules/linux/auditd/execve/'),
  );
  it('has the 28 auditd execve rules', () => assert.equal(auditdExecve.length, 28));

  it("runs all 231 '|re' values (active rules and unsupported/) on the linear-time engine, (?i) included", () => {
    const res: { src: string; flags: string }[] = [];
    const walk = (v: unknown, key: string): void => {
      if (Array.isArray(v)) for (const x of v) walk(x, key);
      else if (v !== null && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(x, k);
      else if (key.split('|').includes('re')) {
        const flags = key.split('|').filter((m) => m === 'i' || m === 'm' || m === 's');
        res.push({ src: String(v), flags: flags.join('') });
      }
    };
    for (const { rule } of all) walk(rule.doc.detection, '');
    // unsupported/ holds old-syntax files that do not compile: read their YAML as data.
    for (const file of ruleFiles(join(SIGMA, 'unsupported'))) {
      for (const doc of parseAllDocuments(readFileSync(file, 'utf8'))) {
        const data = doc.toJS() as Record<string, unknown> | null;
        if (data !== null && typeof data === 'object') walk(data['detection'], '');
      }
    }
    assert.equal(res.length, 231);
    const inline = res.filter((r) => r.src.startsWith('(?i)'));
    assert.equal(inline.length, 18);
    let checked = 0;
    let sampled = 0;
    for (const { src, flags } of res) {
      const re = compileRegex(src, flags);
      // The length bound that lets short inputs skip the engine must never exceed a real match.
      const minimal = sampleRegex(src);
      if (jsMatches(src, flags, minimal)) {
        const min = minMatchLength(src);
        assert.ok(minimal.length >= min, `/${src}/ matches ${JSON.stringify(minimal)}, shorter than ${min}`);
        sampled++;
      }
      if (!src.startsWith('(?i)')) continue;
      const sample = sampleRegex(src.slice(4));
      if (!re.test(sample)) continue; // the sampler is best effort; the count below keeps it honest
      const swapped = [...sample]
        .map((c) => (c === c.toLowerCase() ? c.toUpperCase() : c.toLowerCase()))
        .join('');
      assert.ok(re.test(swapped), `/${src}/ should match ${JSON.stringify(swapped)} regardless of case`);
      checked++;
    }
    assert.ok(checked >= 12, `only ${checked} inline-flag patterns could be sampled`);
    assert.ok(sampled >= 150, `only ${sampled} patterns could be sampled for their length bound`);
  });

  const engine = createEngine([...linuxPc, ...auditdExecve].map((x) => x.rule));
  const suites: [string, typeof linuxPc][] = [
    ['each linux process_creation rule fires on a matching event and not on a near miss', linuxPc],
    [
      'each auditd execve rule fires on the auditd view of a matching event and not on a near miss',
      auditdExecve,
    ],
  ];
  for (const [name, rules] of suites) {
    describe(name, () => {
      for (const { dir, rule } of rules) {
        it(`${rule.title} (${dir}/${rule.doc.file})`, () => {
          const fires = (e: ExecveEvent) => evaluateExecve(engine, e).some((m) => m.rule === rule);
          const found = findMatchingEvent(rule, fires);
          assert.ok(found, `no generated event makes '${rule.title}' fire`);
          const miss = findNearMiss(found, fires);
          assert.ok(miss, `every near miss of the matching event still fires '${rule.title}'`);
        });
      }
    });
  }
});

// ---- building events from a rule's detection ---------------------------------------------------------------

/** Pseudo-field of keyword fragments: they go anywhere in the event (here, as extra arguments). */
const KEYWORD = '*';

interface Fragment {
  field: string;
  kind: 'exact' | 'starts' | 'ends' | 'contains';
  text: string;
}

/** A string the regular expression matches (first alternative, minimal repetitions), good enough to try. */
function sampleRegex(src: string): string {
  const alts = splitTop(src);
  let s = alts[0] ?? '';
  if (s.startsWith('(?i)')) s = s.slice(4);
  let out = '';
  let last = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    let atom: string;
    if (c === '(') {
      const end = closingParen(s, i);
      let inner = s.slice(i + 1, end);
      if (inner.startsWith('?:') || inner.startsWith('?i')) inner = inner.slice(2);
      atom = sampleRegex(inner);
      i = end;
    } else if (c === '[') {
      let j = i + 1;
      const neg = s[j] === '^';
      if (neg) j++;
      let end = j + 1;
      while (end < s.length && s[end] !== ']') end += s[end] === '\\' ? 2 : 1;
      const body = s.slice(j, end);
      atom = neg
        ? body.includes('Q')
          ? '%'
          : 'Q'
        : body.startsWith('\\')
          ? escapeSample(body[1]!)
          : body[0]!;
      i = end;
    } else if (c === '\\') {
      atom = escapeSample(s[i + 1]!);
      i++;
    } else if (c === '.') atom = 'a';
    else if (c === '^' || c === '$') atom = '';
    else if (c === '*' || c === '?') {
      out = out.slice(0, out.length - last.length);
      last = '';
      if (s[i + 1] === '?') i++;
      continue;
    } else if (c === '+') {
      if (s[i + 1] === '?') i++;
      continue;
    } else if (c === '{') {
      const end = s.indexOf('}', i);
      const n = Number(s.slice(i + 1, end).split(',')[0]);
      out = out.slice(0, out.length - last.length) + last.repeat(n);
      i = end;
      continue;
    } else atom = c;
    out += atom;
    last = atom;
  }
  return out;
}

/** The same pattern on JavaScript's engine (no length shortcut), when it can read it; false otherwise. */
function jsMatches(src: string, flags: string, text: string): boolean {
  const inline = src.startsWith('(?i)');
  const all = new Set([...flags, ...(inline ? 'i' : '')]);
  try {
    return new RegExp(inline ? src.slice(4) : src, [...all].join('')).test(text);
  } catch {
    return false;
  }
}

function escapeSample(c: string): string {
  return (
    ({ d: '1', w: 'a', s: ' ', b: '', S: 'a', W: ' ', D: 'a', t: '\t', n: '\n' } as Record<string, string>)[
      c
    ] ?? c
  );
}

function plain(value: unknown): string {
  return parseSigmaString(String(value))
    .map((p) => (p.t === 'lit' ? p.s : p.t === 'one' ? 'x' : ''))
    .join('');
}

function fragmentsOf(key: string, value: unknown, rnd: () => number): Fragment[] | undefined {
  const [field = '', ...mods] = key.split('|');
  if (value === null) return [];
  const values = Array.isArray(value) ? value : [value];
  const chosen = mods.includes('all') ? values : [values[Math.floor(rnd() * values.length)]];
  if (field === '') return chosen.map((v) => ({ field: KEYWORD, kind: 'contains', text: plain(v) }));
  const kind: Fragment['kind'] = mods.includes('contains')
    ? 'contains'
    : mods.includes('startswith')
      ? 'starts'
      : mods.includes('endswith')
        ? 'ends'
        : 'exact';
  return chosen.map((v) => {
    if (mods.includes('re')) {
      const src = String(v);
      const text = sampleRegex(src);
      return { field, kind: src.startsWith('^') ? 'starts' : 'contains', text };
    }
    if (mods.includes('base64offset') || mods.includes('base64')) {
      return { field, kind, text: Buffer.from(plain(v)).toString('base64') };
    }
    return { field, kind, text: plain(v) };
  });
}

/** Picks which selections are true and which false so the condition holds (random among the choices). */
function plan(c: Condition, want: boolean, rnd: () => number, out: Map<string, boolean>): boolean {
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const set = (name: string, v: boolean): boolean => {
    if (out.has(name) && out.get(name) !== v) return false;
    out.set(name, v);
    return true;
  };
  switch (c.t) {
    case 'sel':
      return set(c.name, want);
    case 'not':
      return plan(c.e, !want, rnd, out);
    case 'and':
      return want ? c.a.every((x) => plan(x, true, rnd, out)) : plan(pick(c.a), false, rnd, out);
    case 'or':
      return want ? plan(pick(c.a), true, rnd, out) : c.a.every((x) => plan(x, false, rnd, out));
    case 'of': {
      const names = [...c.names].sort(() => rnd() - 0.5);
      return want
        ? names.slice(0, c.min).every((n) => set(n, true))
        : names.slice(0, names.length - c.min + 1).every((n) => set(n, false));
    }
  }
}

interface Candidate {
  fragments: Fragment[];
  event: ExecveEvent;
}

function build(fragments: readonly Fragment[]): ExecveEvent | undefined {
  const by = new Map<string, Fragment[]>();
  for (const f of fragments) by.set(f.field, [...(by.get(f.field) ?? []), f]);
  const values: Record<string, string> = {
    Image: '/opt/neutral/app',
    CommandLine: 'app --run',
    ParentImage: '/opt/neutral/parent',
    ParentCommandLine: 'parent',
    CurrentDirectory: '/opt/neutral',
    User: 'neutral',
    LogonId: '1000',
  };
  const args: string[] = [];
  const keywords: string[] = [];
  for (const [field, fs] of by) {
    const exact = fs.find((f) => f.kind === 'exact');
    let value: string;
    if (exact) value = exact.text;
    else {
      const starts = fs.filter((f) => f.kind === 'starts').map((f) => f.text);
      const ends = fs.filter((f) => f.kind === 'ends').map((f) => f.text);
      const mid = fs.filter((f) => f.kind === 'contains').map((f) => f.text);
      value = [...starts, ...mid, ...ends].join(' ');
    }
    const arg = /^a(\d+)$/.exec(field);
    if (arg) args[Number(arg[1])] = value;
    else if (field === KEYWORD) keywords.push(...fs.map((f) => f.text));
    else if (field === 'type') {
      if (value.toUpperCase() !== 'EXECVE') return undefined; // not something an execve event can be
    } else if (field in values) values[field] = value;
    else return undefined; // a field our events do not have
  }
  if (!/^\d+$/.test(values['LogonId']!)) return undefined;
  // auditd rules read argv positionally; process_creation rules read the command line.
  const argv = args.length > 0 ? Array.from(args, (a) => a ?? 'x') : values['CommandLine']!.split(' ');
  argv.push(...keywords);
  return sampleEvent({
    image: values['Image']!,
    argv,
    parentImage: values['ParentImage']!,
    parentCommandLine: values['ParentCommandLine']!,
    cwd: values['CurrentDirectory']!,
    userName: values['User']!,
    loginUid: BigInt(values['LogonId']!),
  });
}

/** Tries random plans until an event built from the rule's positive selections makes it fire. */
function findMatchingEvent(rule: CompiledRule, fires: (e: ExecveEvent) => boolean): Candidate | undefined {
  const rnd = prng(42);
  const detection = rule.doc.detection;
  for (let attempt = 0; attempt < 300; attempt++) {
    const truth = new Map<string, boolean>();
    if (!plan(rule.condition, true, rnd, truth)) continue;
    const fragments: Fragment[] = [];
    let ok = true;
    for (const [name, want] of truth) {
      if (!want) continue;
      const sel = detection[name];
      const groups = Array.isArray(sel) ? sel : [sel];
      const group = groups[Math.floor(rnd() * groups.length)];
      if (typeof group === 'string' || typeof group === 'number') {
        fragments.push({ field: KEYWORD, kind: 'contains', text: plain(group) }); // keyword: anywhere in the event
        continue;
      }
      if (typeof group !== 'object' || group === null) {
        ok = false;
        break;
      }
      for (const [k, v] of Object.entries(group)) {
        const fs = fragmentsOf(k, v, rnd);
        if (fs === undefined) ok = false;
        else fragments.push(...fs);
      }
    }
    if (!ok) continue;
    const event = build(fragments);
    if (event !== undefined && fires(event)) return { fragments, event };
  }
  return undefined;
}

/** The text with one letter or digit changed (case-insensitively different), or undefined if it has none. */
function corrupt(text: string): string | undefined {
  const i = text.search(/[A-Za-z0-9]/);
  if (i < 0) return undefined;
  const c = text[i]!;
  const r = /[0-9]/.test(c) ? String((Number(c) + 1) % 10) : c.toLowerCase() === 'q' ? 'z' : 'q';
  return text.slice(0, i) + r + text.slice(i + 1);
}

/** The matching event with one required literal (or, failing that, all of them) corrupted, if that stops the rule. */
function findNearMiss(found: Candidate, fires: (e: ExecveEvent) => boolean): ExecveEvent | undefined {
  const { fragments } = found;
  const variants: Fragment[][] = fragments.map((_, i) =>
    fragments.map((f, j) => (i === j ? { ...f, text: corrupt(f.text) ?? f.text } : f)),
  );
  variants.push(fragments.map((f) => ({ ...f, text: corrupt(f.text) ?? f.text })));
  for (const v of variants) {
    const e = build(v);
    if (e !== undefined && !fires(e)) return e;
  }
  return undefined;
}
