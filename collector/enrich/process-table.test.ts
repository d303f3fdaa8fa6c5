import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import { commandLine, ProcessTable } from './process-table.js';

const options = { maxEntries: 100, commandLineMaxBytes: 64, ancestorsMax: 4 };

it('gives an exec its parent image and command line and the ancestry, nearest first', () => {
  const t = new ProcessTable(options);
  t.exec(1, 0, '/sbin/init', ['/sbin/init']);
  t.fork(100, 1);
  t.exec(100, 1, '/usr/sbin/sshd', ['sshd: alice']);
  t.fork(200, 100);
  t.exec(200, 100, '/usr/bin/bash', ['-bash']);
  t.fork(300, 200);
  const lineage = t.exec(300, 200, '/usr/bin/curl', ['curl', 'https://example.org']);
  assert.deepEqual(lineage, {
    parentImage: '/usr/bin/bash',
    parentCommandLine: '-bash',
    ancestors: ['/usr/sbin/sshd', '/sbin/init'],
  });
  // A forked child runs its parent's image until it execs.
  t.fork(301, 300);
  assert.equal(t.lineage(301).parentImage, '/usr/bin/curl');
  assert.equal(t.get(301)?.image, '/usr/bin/curl');
});

it('stops the ancestry at the configured depth, at unknown processes and at cycles', () => {
  const t = new ProcessTable({ ...options, ancestorsMax: 2 });
  for (let pid = 1; pid <= 6; pid++) t.exec(pid, pid - 1, `/bin/p${pid}`, [`p${pid}`]);
  assert.deepEqual(t.lineage(6).ancestors, ['/bin/p5', '/bin/p4']);
  const u = new ProcessTable(options);
  u.exec(10, 99, '/bin/a', ['a']); // parent 99 unknown
  assert.deepEqual(u.lineage(10), { parentImage: '/bin/a', parentCommandLine: 'a', ancestors: [] });
  assert.deepEqual(u.lineage(12345), { parentImage: null, parentCommandLine: null, ancestors: [] });
  const c = new ProcessTable(options);
  c.exec(20, 21, '/bin/x', ['x']);
  c.exec(21, 20, '/bin/y', ['y']);
  assert.deepEqual(c.lineage(20).ancestors, ['/bin/y']);
});

it('stays bounded under a fork storm, evicting the least recently used, and keeps a busy parent', () => {
  const t = new ProcessTable(options);
  t.exec(1, 0, '/sbin/init', ['init']);
  t.exec(50, 1, '/usr/bin/bash', ['bash']);
  for (let pid = 1000; pid < 11000; pid++) {
    t.fork(pid, 50);
    t.exec(pid, 50, '/bin/true', ['true']);
  }
  assert.ok(t.size <= options.maxEntries, `size ${t.size}`);
  assert.ok(t.evictions >= 10000 - options.maxEntries);
  // bash is looked up as the parent of every exec: it stayed.
  assert.equal(t.get(50)?.image, '/usr/bin/bash');
  assert.equal(t.get(1000), undefined, 'the oldest children were evicted');
  assert.equal(t.get(10999)?.image, '/bin/true');
});

it('forgets exited processes after a grace period, unless their pid was reused', () => {
  const t = new ProcessTable({ ...options, exitGraceNs: 1000n });
  t.exec(10, 1, '/bin/a', ['a']);
  t.exec(11, 1, '/bin/b', ['b']);
  t.exit(10, 5000n);
  assert.equal(t.get(10)?.image, '/bin/a', 'still there during the grace period');
  t.exit(11, 5500n);
  t.fork(11, 1); // pid 11 reused before the grace period ended
  t.exec(11, 1, '/bin/c', ['c']);
  t.exit(999, 7000n); // any later exit purges
  assert.equal(t.get(10), undefined);
  assert.equal(t.get(11)?.image, '/bin/c');
});

it('cuts long command lines to the byte budget without splitting a character', () => {
  assert.equal(commandLine(['a', 'b c'], 64), 'a b c');
  const long = commandLine(['x'.repeat(100)], 64);
  assert.equal(long.length, 64);
  const utf = commandLine(['é'.repeat(40)], 63);
  assert.ok(Buffer.byteLength(utf) <= 63 && !utf.includes('\uFFFD'), utf);
});

const procDir = mkdtempSync(path.join(tmpdir(), 'edr-proc-'));
after(() => rmSync(procDir, { recursive: true, force: true }));

it('seeds from /proc: image, command line and parent of each process', () => {
  const proc = (pid: number, ppid: number, comm: string, exe: string | null, argv: string[]) => {
    const d = path.join(procDir, String(pid));
    mkdirSync(d);
    writeFileSync(path.join(d, 'stat'), `${pid} (${comm}) S ${ppid} ${pid} ${pid} 0 -1 4194560 0 0`);
    writeFileSync(path.join(d, 'cmdline'), argv.length ? `${argv.join('\0')}\0` : '');
    if (exe) symlinkSync(exe, path.join(d, 'exe'));
  };
  proc(1, 0, 'systemd', '/usr/lib/systemd/systemd', ['/sbin/init']);
  proc(2, 0, 'kthreadd', null, []);
  proc(700, 1, 'my (odd) name', '/usr/bin/python3.11 (deleted)', ['python3', 'app.py']);
  mkdirSync(path.join(procDir, 'self'));
  const t = new ProcessTable(options);
  assert.equal(t.seedFromProc(procDir), 3);
  assert.deepEqual(t.get(700), {
    pid: 700,
    ppid: 1,
    image: '/usr/bin/python3.11',
    commandLine: 'python3 app.py',
  });
  assert.deepEqual(t.get(2), { pid: 2, ppid: 0, image: null, commandLine: null });
  const lineage = t.exec(800, 700, '/bin/sh', ['sh']);
  assert.deepEqual(lineage.ancestors, ['/usr/lib/systemd/systemd']);
});
