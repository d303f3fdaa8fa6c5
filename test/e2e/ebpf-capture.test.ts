/**
 * End to end: the real eBPF programs see real commands. Needs root (CAP_BPF + CAP_PERFMON) and the built
 * addon (npm run build:native). Skipped when not root, unless EDR_E2E_REQUIRED=1 (CI), where it fails.
 */
import assert from 'node:assert/strict';
import { type SpawnSyncReturns, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  ARGV_MAX_BYTES,
  type ExecCapture,
  type KernelEvent,
  type KernelExecEvent,
  openExecCapture,
  reconcile,
} from '../../native/index.js';
import { type StormResult, storm } from '../harness/exec-storm.js';

const required = process.env.EDR_E2E_REQUIRED === '1';
const isRoot = process.getuid?.() === 0;

/** A token no other process on the machine uses, so events of this run are told apart. */
const marker = `edr-e2e-${process.pid}-${Date.now().toString(36)}`;

function run(
  file: string,
  args: string[],
  options: Parameters<typeof spawnSync>[2] = {},
): SpawnSyncReturns<Buffer> {
  const result = spawnSync(file, args, { stdio: 'ignore', ...options }) as SpawnSyncReturns<Buffer>;
  assert.equal(result.error, undefined, `${file}: ${String(result.error)}`);
  return result;
}

if (!isRoot) {
  // One visible test: skipped on a developer's machine, failed (with the reason) where CI requires it.
  it('eBPF exec capture (needs root)', {
    skip: required ? false : 'needs root for eBPF (EDR_E2E_REQUIRED=1 makes this a failure)',
  }, () => {
    assert.fail(
      'EDR_E2E_REQUIRED=1 but this test is not running as root: the eBPF capture needs root ' +
        '(or CAP_BPF + CAP_PERFMON); run the test suite as root in CI',
    );
  });
}

describe('eBPF exec capture', { skip: !isRoot }, () => {
  let capture: ExecCapture;
  const events: KernelEvent[] = [];
  let pump: Promise<void>;
  let dir: string;

  before(() => {
    capture = openExecCapture({ pollTimeoutMs: 20 });
    pump = (async () => {
      for await (const batch of capture) events.push(...batch);
    })();
    dir = realpathSync(mkdtempSync(path.join(tmpdir(), 'edr-e2e-')));
  });

  after(async () => {
    await capture?.close();
    await pump;
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const execs = (): KernelExecEvent[] => events.filter((e): e is KernelExecEvent => e.kind === 'exec');

  async function waitFor<T>(what: string, find: () => T | undefined, timeoutMs = 10_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = find();
      if (found !== undefined) return found;
      if (Date.now() > deadline)
        assert.fail(`no ${what} within ${timeoutMs} ms (${events.length} events seen)`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  const execWith = (tag: string) => () => execs().find((e) => e.argv.includes(`${marker}-${tag}`));

  it('captures filename, argv, ppid, cwd and uid of a command', async () => {
    const child = run('/bin/echo', [`${marker}-plain`, 'a b', ''], { cwd: dir });
    const ev = await waitFor('exec of /bin/echo', execWith('plain'));
    assert.equal(ev.filename, '/bin/echo');
    assert.equal(ev.exePath, realpathSync('/bin/echo'));
    assert.deepEqual(ev.argv, ['/bin/echo', `${marker}-plain`, 'a b', '']);
    assert.equal(ev.argvTruncated, false);
    assert.equal(ev.argvBytes, Buffer.byteLength(`/bin/echo\0${marker}-plain\0a b\0\0`));
    assert.equal(ev.cwd, dir);
    assert.equal(ev.ppid, process.pid);
    assert.equal(ev.pid, child.pid);
    assert.equal(ev.uid, 0);
    assert.equal(ev.comm, 'echo');
    assert.ok(ev.cgroupId > 0n && ev.startTimeNs > 0n && ev.timeNs >= ev.startTimeNs);
  });

  it('flags argv longer than the buffer and keeps its full length', async () => {
    const args = [`${marker}-long`];
    for (let i = 0; i < 300; i++) args.push(`argument-${i}-${'x'.repeat(30)}`);
    run('/bin/true', args);
    const ev = await waitFor('exec with long argv', execWith('long'));
    const full = ['/bin/true', ...args].reduce((n, a) => n + Buffer.byteLength(a) + 1, 0);
    assert.ok(full > ARGV_MAX_BYTES);
    assert.equal(ev.argvTruncated, true);
    assert.equal(ev.argvBytes, full);
    // Every complete argument is there, in order; the last one read may be cut.
    const complete = ev.argv.slice(0, -1);
    assert.deepEqual(complete, ['/bin/true', ...args].slice(0, complete.length));
    assert.ok(complete.length > 150, `only ${complete.length} arguments kept`);
  });

  it('reports the cwd of another directory and resolves a relative filename against it', async () => {
    const sub = path.join(dir, 'deep', 'er');
    mkdirSync(sub, { recursive: true });
    run('/bin/true', [`${marker}-cwd`], { cwd: sub });
    const ev = await waitFor('exec in another cwd', execWith('cwd'));
    assert.equal(ev.cwd, sub);
    run('./true', [`${marker}-relative`], { cwd: '/usr/bin' });
    const rel = await waitFor('exec of ./true', execWith('relative'));
    assert.equal(rel.cwd, '/usr/bin');
    assert.equal(rel.filename, '/usr/bin/true');
    assert.equal(rel.exePath, realpathSync('/usr/bin/true'));
  });

  it('keeps the deepest components of a cwd too deep to walk, as a relative path', async () => {
    const deep = path.join(dir, ...Array.from({ length: 80 }, (_, i) => `d${i}`));
    mkdirSync(deep, { recursive: true });
    run('/bin/true', [`${marker}-deep`], { cwd: deep });
    const ev = await waitFor('exec in a deep cwd', execWith('deep'));
    assert.equal(ev.cwdTruncated, true);
    assert.ok(!ev.cwd.startsWith('/'), ev.cwd);
    assert.ok(deep.endsWith(`/${ev.cwd}`), `${ev.cwd} is not a suffix of ${deep}`);
    assert.ok(ev.cwd.split('/').length >= 60, ev.cwd);
  });

  it('reports a script by its path and its interpreter as exePath', async () => {
    const script = path.join(dir, 'script.sh');
    writeFileSync(script, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    run(script, [`${marker}-script`]);
    const ev = await waitFor('exec of a script', execWith('script'));
    assert.equal(ev.filename, script);
    assert.equal(ev.exePath, realpathSync('/bin/sh'));
    assert.deepEqual(ev.argv, ['/bin/sh', script, `${marker}-script`]);
  });

  it('gives a grandchild its parent as ppid, with fork and exit events', async () => {
    // `; exit 7` keeps the shell from exec'ing the last command in place: true is the shell's child.
    const sh = run('/bin/sh', ['-c', `/bin/true ${marker}-grandchild; exit 7`]);
    assert.equal(sh.status, 7);
    const shell = await waitFor('exec of the shell', () =>
      execs().find((e) => e.pid === sh.pid && e.filename === '/bin/sh'),
    );
    assert.equal(shell.ppid, process.pid);
    const grandchild = await waitFor('exec of the grandchild', execWith('grandchild'));
    assert.equal(grandchild.ppid, sh.pid);
    const fork = await waitFor('fork of the grandchild', () =>
      events.find((e) => e.kind === 'fork' && e.pid === grandchild.pid),
    );
    assert.equal(fork.ppid, sh.pid);
    const exit = await waitFor('exit of the shell', () =>
      events.find((e) => e.kind === 'exit' && e.pid === sh.pid),
    );
    assert.equal(exit.kind === 'exit' && exit.exitCode, 7 << 8);
  });

  it('captures a process that exits within a millisecond, and another uid', async () => {
    const started = process.hrtime.bigint();
    const child = spawn('/bin/true', [`${marker}-short`], { stdio: 'ignore', uid: 65534, gid: 65534 });
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    assert.equal(code, 0);
    const ev = await waitFor('exec of a short-lived process', execWith('short'));
    assert.equal(ev.pid, child.pid);
    assert.equal(ev.uid, 65534);
    assert.equal(ev.euid, 65534);
    assert.equal(ev.gid, 65534);
    const exit = await waitFor('exit of the short-lived process', () =>
      events.find((e) => e.kind === 'exit' && e.pid === child.pid),
    );
    assert.ok(exit.timeNs - ev.timeNs < 1_000_000_000n, 'exit follows exec');
    assert.ok(process.hrtime.bigint() - started < 10_000_000_000n);
  });

  it('delivers a lone event promptly when every record wakes the drain (wakeupBytes 0)', async () => {
    const eager = openExecCapture({ wakeupBytes: 0, pollTimeoutMs: 1000 });
    const seen: KernelEvent[] = [];
    const eagerPump = (async () => {
      for await (const batch of eager) seen.push(...batch);
    })();
    try {
      run('/bin/true', [`${marker}-eager`]);
      const started = Date.now();
      await waitFor('exec on the eager capture', () =>
        seen.find((e) => e.kind === 'exec' && e.argv.includes(`${marker}-eager`)),
      );
      // Well under the 1 s poll timeout: the record itself woke the drain thread.
      assert.ok(Date.now() - started < 500, `took ${Date.now() - started} ms`);
    } finally {
      await eager.close();
      await eagerPump;
    }
    const stats = eager.stats();
    assert.deepEqual(reconcile(stats), { kernel: 0, queue: 0 }, JSON.stringify(stats));
    assert.equal(stats.delivered, seen.length);
  });

  it('keeps draining while JavaScript is blocked, counts queue drops, and still reconciles', async () => {
    const small = openExecCapture({ queueMaxEvents: 50, ringBufferBytes: 16 * 1024 });
    let delivered = 0;
    try {
      // spawnSync blocks this thread (as a long GC pause would) while 300 processes run.
      spawnSync('/bin/sh', ['-c', `for i in $(seq 300); do /bin/true ${marker}-blocked; done`], {
        stdio: 'ignore',
      });
      await new Promise((r) => setTimeout(r, 300)); // let the drain thread read the tail
      const during = small.stats();
      assert.ok(during.received >= 900, `drain thread read ${during.received} records while JS was blocked`);
      assert.ok(during.queueDrops > 0, 'a full queue drops and counts');
      assert.ok(during.queued <= 50);
    } finally {
      await small.close();
    }
    for await (const batch of small) delivered += batch.length;
    const stats = small.stats();
    assert.equal(stats.delivered, delivered);
    assert.deepEqual(reconcile(stats), { kernel: 0, queue: 0 }, JSON.stringify(stats));
    assert.equal(stats.seen, stats.delivered + stats.ringDrops + stats.queueDrops);
  });

  it('counts exactly under an exec storm on every CPU that overflows a one-page ring', async () => {
    // Every CPU runs the programs at once and the ring overflows, so `seen`, the per-kind counts and
    // `ring_drops` are all updated concurrently: a lost increment breaks one of the equalities below.
    // One page of ring, drained every 200 ms (no record asks for a wake-up before 64 KiB): it overflows.
    const small = openExecCapture({ ringBufferBytes: 4096, queueMaxEvents: 1 << 20, pollTimeoutMs: 200 });
    let marked = 0;
    const pumping = (async () => {
      for await (const batch of small)
        for (const e of batch) if (e.kind === 'exec' && e.argv.includes(`${marker}-storm`)) marked++;
    })();
    let result: StormResult;
    try {
      result = await storm(2000, `${marker}-storm`);
    } finally {
      await small.close();
      await pumping;
    }
    const s = small.stats();
    console.log(
      `storm: ${result.execs} execs on ${result.workers} workers; seen ${s.seen} = received ${s.received} + ` +
        `ring drops ${s.ringDrops}; exec ${s.execSeen} + fork ${s.forkSeen} + exit ${s.exitSeen}; ` +
        `storm execs delivered ${marked}, kernel misses ${s.kernelMisses}`,
    );
    assert.equal(result.failedWorkers, 0);
    // Not asserted: how often the drain thread catches up depends on the machine's load (it usually drops some).
    assert.deepEqual(reconcile(s), { kernel: 0, queue: 0 }, JSON.stringify(s));
    assert.equal(s.execSeen + s.forkSeen + s.exitSeen, s.seen, JSON.stringify(s));
    // Other processes on the machine only add to these.
    assert.ok(s.execSeen >= result.execs, `execSeen ${s.execSeen} < ${result.execs} execs`);
    assert.ok(s.forkSeen >= result.execs && s.exitSeen >= result.execs, JSON.stringify(s));
    assert.ok(
      marked <= result.execs + 1,
      'the storm execs (and the generator itself, whose argv has the marker)',
    );
  });

  it('reconciles the counters after close: seen == delivered + drops', async () => {
    await capture.close();
    await pump;
    const stats = capture.stats();
    assert.equal(stats.closed, true);
    assert.deepEqual(reconcile(stats), { kernel: 0, queue: 0 }, JSON.stringify(stats));
    assert.equal(stats.queued, 0);
    assert.equal(stats.delivered, events.length);
    assert.equal(stats.seen, stats.delivered + stats.ringDrops + stats.queueDrops, JSON.stringify(stats));
    assert.equal(stats.execSeen + stats.forkSeen + stats.exitSeen, stats.seen);
    assert.equal(stats.ringDrops, 0);
    assert.equal(stats.queueDrops, 0);
    assert.equal(stats.decodeDrops, 0);
    assert.ok(stats.argvTruncated >= 1);
    assert.ok(stats.pathTruncated >= 1);
    const kinds = new Set(events.map((e) => e.kind));
    assert.deepEqual([...kinds].sort(), ['exec', 'exit', 'fork']);
  });
});
