import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import type { ReplayedExecEvent, SourceEvent } from '../source.js';
import { BootClock, Enricher } from './enrich.js';
import { ExecutableHashes } from './hasher.js';

const dir = mkdtempSync(path.join(tmpdir(), 'edr-enrich-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const passwd = path.join(dir, 'passwd');
writeFileSync(passwd, 'root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n');

const host = { hostId: 'h1', hostname: 'web-1', bootId: 'b1' };
const config = (hashing = false) => ({
  enrich: {
    passwdFile: passwd,
    passwdCheckIntervalMs: 1000,
    processTableMaxEntries: 100,
    commandLineMaxBytes: 256,
    ancestorsMax: 4,
    procDir: path.join(dir, 'noproc'),
    cgroupRoot: path.join(dir, 'nocgroup'),
  },
  hashing: { enabled: hashing, maxFileBytes: 1 << 20, cacheEntries: 16 },
});

const base = {
  tid: 0,
  euid: 1000,
  gid: 1000,
  loginUid: 1000,
  sessionId: 1,
  comm: 'x',
  cgroupId: 0n,
  startTimeNs: 10n,
  timeNs: 1_000_000_000n,
};
const exec = (pid: number, ppid: number, exePath: string, argv: string[], over = {}): SourceEvent => ({
  ...base,
  kind: 'exec',
  pid,
  ppid,
  uid: 1000,
  filename: exePath,
  exePath,
  argv,
  argvTruncated: false,
  argvBytes: 1,
  cwd: '/home/alice',
  cwdTruncated: false,
  filenameTruncated: false,
  exePathTruncated: false,
  readError: false,
  ...over,
});

it('turns execs into events and keeps the process table from fork, exec and exit', async () => {
  const e = new Enricher(host, config(), new BootClock(() => 0n));
  const out = await e.enrich([
    exec(10, 1, '/usr/bin/bash', ['bash']),
    { ...base, kind: 'fork', pid: 11, ppid: 10, uid: 1000 },
    exec(11, 10, '/usr/bin/curl', ['curl', 'x']),
    { ...base, kind: 'exit', pid: 11, ppid: 10, uid: 1000, exitCode: 0 },
    exec(12, 10, '', ['./script.sh'], { filename: '/home/alice/script.sh' }),
  ]);
  assert.equal(out.length, 3);
  const [bash, curl, script] = out;
  assert.deepEqual(
    { image: curl!.image, parentImage: curl!.parentImage, parentCommandLine: curl!.parentCommandLine },
    { image: '/usr/bin/curl', parentImage: '/usr/bin/bash', parentCommandLine: 'bash' },
  );
  assert.equal(curl!.userName, 'alice');
  assert.equal(curl!.hostId, 'h1');
  assert.equal(curl!.uid, 1000n);
  assert.equal(curl!.containerId, null);
  assert.equal(bash!.parentImage, null, 'pid 1 unknown here');
  assert.equal(script!.image, '/home/alice/script.sh', 'no exe path: the execve filename');
  assert.equal(script!.sha256, null);
  // Boot time to wall clock: about now.
  const wall = BigInt(Date.now()) * 1_000_000n;
  const now = process.hrtime.bigint();
  const converted = new BootClock(() => 0n).toWallNs(now);
  assert.ok(converted - wall < 50_000_000n && wall - converted < 50_000_000n, `${converted} vs ${wall}`);
});

it('keeps what a replayed event already knew and computes the rest', async () => {
  const e = new Enricher(host, config());
  const replayed: ReplayedExecEvent = {
    ...(exec(20, 1, '/bin/ls', ['ls']) as ReplayedExecEvent),
    given: { userName: 'eve', parentImage: null, wallTimeNs: 42n },
  };
  const [ev] = await e.enrich([replayed]);
  assert.equal(ev!.userName, 'eve');
  assert.equal(ev!.parentImage, null);
  assert.equal(ev!.timeNs, 42n);
  assert.deepEqual(ev!.ancestors, []);
});

it('hashes executables when enabled, cached by device, inode and mtime', async () => {
  const file = path.join(dir, 'tool');
  writeFileSync(file, 'one');
  const hashes = new ExecutableHashes(1 << 20, 16);
  const sha = (s: string) => createHash('sha256').update(s).digest('hex');
  assert.equal(await hashes.sha256(file), sha('one'));
  assert.equal(await hashes.sha256(file), sha('one'));
  assert.equal(hashes.hashed, 1, 'second lookup from the cache');
  writeFileSync(file, 'two');
  utimesSync(file, new Date(), new Date(Date.now() + 5000));
  assert.equal(await hashes.sha256(file), sha('two'), 'a new mtime is a new file');
  assert.equal(await hashes.sha256(path.join(dir, 'missing')), null);
  assert.equal(await hashes.sha256(dir), null, 'not a regular file');
  const small = new ExecutableHashes(2, 16);
  assert.equal(await small.sha256(file), null, 'too large');

  const e = new Enricher(host, config(true));
  const [ev] = await e.enrich([exec(30, 1, file, ['tool'])]);
  assert.equal(ev!.sha256, sha('two'));
});
