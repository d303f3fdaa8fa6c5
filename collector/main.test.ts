import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import { repoRoot } from '../infra/paths.js';

const dir = mkdtempSync(path.join(tmpdir(), 'edr-collector-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const cli = (...args: string[]) =>
  spawnSync(process.execPath, [path.join(repoRoot, 'dist', 'cli', 'edr.js'), 'collector', ...args], {
    encoding: 'utf8',
  });

it('edr collector needs --config, and --help says what it does', () => {
  const r = cli();
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--config FILE is required/);
  const h = cli('--help');
  assert.equal(h.status, 0);
  assert.match(h.stdout, /usage: edr collector --config FILE/);
});

it('edr collector reports an unreadable or invalid config with its code, every problem at once', () => {
  const missing = cli('--config', path.join(dir, 'missing.yaml'));
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /EDR_CONFIG_UNREADABLE/);
  const file = path.join(dir, 'bad.yaml');
  writeFileSync(file, 'kafka: { brokers: [nope] }\nsource: { type: pcap }\nspool: { fsync: sometimes }\n');
  const bad = cli('--config', file);
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /EDR_CONFIG_INVALID/);
  assert.match(bad.stderr, /3 problem/);
});
