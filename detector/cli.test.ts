import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import { repoRoot } from '../infra/paths.js';

const CLI = join(repoRoot, 'dist', 'cli', 'edr.js');

function edr(args: string[], input?: string) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', input });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const GOOD = `title: Whoami Run
id: 5b0b0f8e-0000-4000-8000-000000000001
author: edr tests
level: low
logsource: {product: linux, category: process_creation}
detection:
  selection:
    Image|endswith: /whoami
  condition: selection
`;
const BAD = `title: Broken Rule
id: 5b0b0f8e-0000-4000-8000-000000000002
logsource: {product: linux, category: process_creation}
detection:
  selection:
    Image|endswithh: /id
  condition: selection
`;

const made: string[] = [];
after(() => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

function ruleDir(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'edr-rules-'));
  made.push(dir);
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return dir;
}

describe('edr rules check', () => {
  it('prints a verdict per rule and exits 0 when all compile', () => {
    const r = edr(['rules', 'check', ruleDir({ 'a/good.yml': GOOD })]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^ok {4}a\/good\.yml:1 {2}5b0b0f8e-0000-4000-8000-000000000001 {2}Whoami Run$/m);
    assert.match(r.stdout, /1 rules, 0 filters, 0 correlations compiled; 0 failed/);
  });
  it('names the failing rule with file, line and reason, still checks the others, exits 1', () => {
    const r = edr(['rules', 'check', ruleDir({ 'good.yml': GOOD, 'sub/bad.yml': BAD })]);
    assert.equal(r.code, 1);
    assert.match(
      r.stdout,
      /^FAIL {2}sub\/bad\.yml:6 .*Broken Rule: 'Image\|endswithh': unknown modifier 'endswithh'/m,
    );
    assert.match(r.stdout, /^ok {4}good\.yml:1/m);
    assert.match(r.stdout, /1 rules, .* 1 failed/);
  });
  it('rejects a missing directory and unknown subcommands', () => {
    assert.equal(edr(['rules', 'check', '/nonexistent/rules']).code, 1);
    assert.equal(edr(['rules', 'frobnicate']).code, 2);
    assert.equal(edr(['rules']).code, 2);
  });
  it("applies a detector config's rules.limits with --config, the built-in ones without", () => {
    const two = GOOD.replace('Image|endswith: /whoami', 'Image|endswith: [/whoami, /id]');
    const dir = ruleDir({ 'two.yml': two });
    const config = join(ruleDir({}), 'detector.yaml'); // beside the rules, not among them
    writeFileSync(
      config,
      'kafka: { brokers: [127.0.0.1:9092] }\nrules: { topic: false, limits: { maxValues: 1 } }\n',
    );
    assert.equal(edr(['rules', 'check', dir]).code, 0);
    const r = edr(['rules', 'check', dir, '--config', config]);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /^FAIL {2}two\.yml:8 .*more than 1 values .*\[EDR_SIGMA_LIMIT\]$/m);
  });
  it('exits 0 on the SigmaHQ rules/ tree', () => {
    const r = edr(['rules', 'check', '-q', resolve(repoRoot, '..', 'shared', 'sigma', 'rules')]);
    assert.equal(r.code, 0, r.stdout.slice(-2000));
    assert.match(r.stdout, /; 0 failed;/);
  });
});

describe('edr hunt', () => {
  const rules = ruleDir({ 'good.yml': GOOD });
  const events = join(rules, 'events.jsonl');
  writeFileSync(
    events,
    [
      JSON.stringify({
        logsource: { product: 'linux', category: 'process_creation' },
        Image: '/usr/bin/whoami',
      }),
      '{not json',
      JSON.stringify({ Image: '/usr/bin/whoami' }),
      JSON.stringify({ logsource: { product: 'linux', category: 'process_creation' }, Image: '/usr/bin/id' }),
      JSON.stringify({ logsource: { product: 'linux', category: 'process_creation' }, Image: '/bin/whoami' }),
    ].join('\n'),
  );
  it('prints one JSON line per match, reports bad lines by number and evaluates the rest', () => {
    const r = edr(['hunt', '--rules', rules, '--events', events]);
    assert.equal(r.code, 1); // some lines were skipped
    const out = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.equal(out.length, 2);
    assert.deepEqual(Object.keys(out[0]).sort(), [
      'author',
      'event',
      'level',
      'logsource',
      'matchedFields',
      'ruleId',
      'title',
    ]);
    assert.equal(out[0].ruleId, '5b0b0f8e-0000-4000-8000-000000000001');
    assert.equal(out[0].author, 'edr tests');
    assert.deepEqual(out[1].matchedFields, [{ field: 'Image', value: '/bin/whoami' }]);
    assert.match(r.stderr, /events\.jsonl:2: not JSON/);
    assert.match(r.stderr, /events\.jsonl:3: no log source/);
    assert.match(r.stderr, /3 events evaluated, 2 lines skipped; 2 matches from 1 rules/);
  });
  it('takes the log source from a flag and reads nested fields by dotted name', () => {
    const nested = `title: Nested
logsource: {product: demo}
detection:
  s:
    process.name: evil
  condition: s
`;
    const dir = ruleDir({ 'n.yml': nested });
    const r = edr(
      ['hunt', '--rules', dir, '--events', '-', '--logsource', 'product=demo'],
      '{"process":{"name":"EVIL"}}\n',
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).title, 'Nested');
  });
  it('evaluates ExecveEvent records as process_creation and auditd', () => {
    const audit = `title: Auditd Whoami
logsource: {product: linux, service: auditd}
detection:
  s:
    type: EXECVE
    a0: whoami
  condition: s
`;
    const dir = ruleDir({ 'a.yml': audit, 'g.yml': GOOD });
    const ev = { image: '/usr/bin/whoami', argv: ['whoami'], loginUid: '1000', cwd: '/' };
    const r = edr(['hunt', '--rules', dir, '--events', '-', '--execve'], `${JSON.stringify(ev)}\n`);
    assert.equal(r.code, 0, r.stderr);
    const titles = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l).title)
      .sort();
    assert.deepEqual(titles, ['Auditd Whoami', 'Whoami Run']);
  });
  it('fails clearly on an unreadable events file', () => {
    const r = edr(['hunt', '--rules', rules, '--events', join(rules, 'missing.jsonl')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cannot read events .*missing\.jsonl.*\[EDR_HUNT_READ\]/);
  });
});

describe('edr replay', () => {
  it('rejects an unknown --min-level before connecting anywhere', () => {
    const r = edr([
      'replay',
      '--rules',
      '.',
      '--from',
      '0',
      '--brokers',
      'localhost:1',
      '--min-level',
      'severe',
    ]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--min-level must be one of informational, low, medium, high, critical/);
  });
});
