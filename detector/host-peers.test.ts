import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { EdrError } from '../infra/errors.js';
import { autoThreads, HostPeers } from './host-peers.js';

const refused = (what: RegExp) => (err: unknown) =>
  err instanceof EdrError && err.code === 'EDR_DETECTOR_PEERS_DIR' && what.test(err.message);

test('host peers: live registered processes count, dead ones are removed; auto threads need a spare core', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'edr-peers-'));
  const me = new HostPeers(dir);
  me.register();
  assert.equal(me.count(), 1);
  const dead = spawnSync(process.execPath, ['-e', '']).pid!;
  writeFileSync(path.join(dir, String(dead)), '');
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
  try {
    writeFileSync(path.join(dir, String(child.pid)), '');
    assert.equal(me.count(), 2);
    assert.equal(existsSync(path.join(dir, String(dead))), false);
  } finally {
    child.kill();
  }
  await new Promise((r) => child.once('exit', r));
  assert.equal(me.count(), 1);
  me.unregister();
  assert.equal(existsSync(path.join(dir, String(process.pid))), false);
  rmSync(dir, { recursive: true, force: true });
  // A directory it cannot create: refused, and this process still counts itself.
  const file = path.join(tmpdir(), `edr-peers-file-${process.pid}`);
  writeFileSync(file, '');
  const nowhere = new HostPeers(path.join(file, 'sub')); // a directory under a file: ENOTDIR
  assert.throws(() => nowhere.register(), refused(/cannot be created/));
  assert.equal(nowhere.count(), 1);
  nowhere.unregister();
  rmSync(file, { force: true });
  assert.equal(autoThreads(2, 1), 1);
  assert.equal(autoThreads(2, 2), 0);
  assert.equal(autoThreads(8, 3), 1);
});

test('host peers: creates its directory 0700 and refuses one that others can write', () => {
  const base = mkdtempSync(path.join(tmpdir(), 'edr-peers-'));
  const old = process.umask(0);
  try {
    const fresh = new HostPeers(path.join(base, 'fresh'));
    fresh.register();
    assert.equal(lstatSync(fresh.dir).mode & 0o777, 0o700);
    fresh.unregister();
  } finally {
    process.umask(old);
  }
  const open = path.join(base, 'open');
  mkdirSync(open);
  chmodSync(open, 0o1777);
  assert.throws(() => new HostPeers(open).register(), refused(/writable by others/));
  assert.deepEqual(readdirSync(open), []);
  rmSync(base, { recursive: true, force: true });
});

test('host peers: a symlink planted at the directory is refused, its target untouched', () => {
  const base = mkdtempSync(path.join(tmpdir(), 'edr-peers-'));
  const elsewhere = path.join(base, 'elsewhere');
  mkdirSync(elsewhere, { mode: 0o700 });
  // A stale-looking pid file in the link's target: counting must not clean the target either.
  const dead = spawnSync(process.execPath, ['-e', '']).pid!;
  writeFileSync(path.join(elsewhere, String(dead)), 'keep');
  const linkedDir = path.join(base, 'edr-detectors');
  symlinkSync(elsewhere, linkedDir);
  const viaLink = new HostPeers(linkedDir);
  assert.throws(() => viaLink.register(), refused(/symlink/));
  assert.equal(viaLink.count(), 1);
  assert.deepEqual(readdirSync(elsewhere), [String(dead)]);
  rmSync(base, { recursive: true, force: true });
});

test('host peers: a symlink planted at the pid file is replaced, its target untouched', () => {
  const base = mkdtempSync(path.join(tmpdir(), 'edr-peers-'));
  const dir = path.join(base, 'own');
  mkdirSync(dir, { mode: 0o700 });
  const precious = path.join(base, 'precious');
  writeFileSync(precious, 'do not truncate');
  symlinkSync(precious, path.join(dir, String(process.pid)));
  const me = new HostPeers(dir);
  me.register();
  assert.equal(readFileSync(precious, 'utf8'), 'do not truncate');
  const pidFile = lstatSync(path.join(dir, String(process.pid)));
  assert.ok(pidFile.isFile() && !pidFile.isSymbolicLink());
  assert.equal(pidFile.mode & 0o777, 0o600);
  me.unregister();
  assert.equal(readFileSync(precious, 'utf8'), 'do not truncate');
  rmSync(base, { recursive: true, force: true });
});
