import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { autoThreads, HostPeers } from './host-peers.js';

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
  // A directory it cannot write: this process still counts itself.
  const file = path.join(tmpdir(), `edr-peers-file-${process.pid}`);
  writeFileSync(file, '');
  const nowhere = new HostPeers(path.join(file, 'sub')); // a directory under a file: ENOTDIR
  assert.equal(nowhere.register(), false);
  assert.equal(nowhere.count(), 1);
  nowhere.unregister();
  rmSync(file, { force: true });
  assert.equal(autoThreads(2, 1), 1);
  assert.equal(autoThreads(2, 2), 0);
  assert.equal(autoThreads(8, 3), 1);
});
