/**
 * The spool on a disk that fills up: a small tmpfs mounted as the spool directory (needs root, as CI runs the
 * tests; skipped otherwise unless EDR_E2E_REQUIRED=1, where it fails). A filler file takes most of the space and
 * is deleted to give it back.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../infra/config.js';
import type { EdrError } from '../infra/errors.js';
import { createLogger } from '../infra/log.js';
import { decodeAudit, drainSpool, execEvent } from '../test/harness/collector-fixtures.js';
import { FlakyTransport, readAll } from '../test/harness/flaky-transport.js';
import { Collector } from './collector.js';
import { collectorConfigSchema } from './config.js';
import type { Source, SourceEvent } from './source.js';
import { Spool } from './spool.js';

const isRoot = process.getuid?.() === 0;
const required = process.env.EDR_E2E_REQUIRED === '1';
const log = createLogger({}, 'error');
const until = async (what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

if (!isRoot) {
  it('spool on a full disk (needs root to mount a tmpfs)', {
    skip: required ? false : 'needs root to mount a tmpfs (EDR_E2E_REQUIRED=1 makes this a failure)',
  }, () => {
    assert.fail('EDR_E2E_REQUIRED=1 but not root: mounting the tmpfs under the spool needs root');
  });
}

describe('spool on a full disk', { skip: !isRoot }, () => {
  let root: string;
  const mounts: string[] = [];

  /** A fresh tmpfs of `bytes`, with a filler file leaving `free` bytes; returns its spool dir and the filler. */
  function smallDisk(bytes: number, free: number): { dir: string; filler: string } {
    const mnt = path.join(root, `m${mounts.length}`);
    mkdirSync(mnt);
    const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', mnt], { encoding: 'utf8' });
    assert.equal(r.status, 0, `mount: ${r.stderr}`);
    mounts.push(mnt);
    const filler = path.join(mnt, 'filler');
    writeFileSync(filler, Buffer.alloc(bytes - free));
    return { dir: path.join(mnt, 'spool'), filler };
  }

  before(() => {
    root = mkdtempSync(path.join(tmpdir(), 'edr-diskfull-'));
  });
  after(() => {
    // Lazy: a spool a failed test left open must not keep the mount (and the directory) behind.
    for (const m of mounts) spawnSync('umount', ['-l', m]);
    rmSync(root, { recursive: true, force: true });
  });

  it('a write cut short by ENOSPC is truncated to its last whole record; appends resume once space returns', () => {
    const { dir, filler } = smallDisk(128 * 1024, 32 * 1024);
    const errors: EdrError[] = [];
    const s = new Spool({
      dir,
      maxBytes: 1 << 20,
      segmentBytes: 1 << 20,
      fsync: 'never',
      onError: (e) => errors.push(e),
    });
    const rec = (i: number): Buffer => Buffer.concat([Buffer.from(`r${i}:`), Buffer.alloc(1000, i % 251)]);
    // One append of ~50 KiB into ~32 KiB free: a single write that the disk cuts short mid-record.
    const first = Array.from({ length: 50 }, (_, i) => rec(i));
    const stored = s.append(first);
    assert.ok(stored > 0 && stored < 50, `some stored, the rest refused (stored ${stored})`);
    assert.equal(s.dropped, 50 - stored);
    assert.equal(s.writeErrors, 1);
    const seg = readdirSync(dir).filter((f) => f.endsWith('.seg'));
    const onDisk = seg.reduce((n, f) => n + statSync(path.join(dir, f)).size, 0);
    assert.equal(
      onDisk,
      first.slice(0, stored).reduce((n, b) => n + 8 + b.length, 0),
      'no torn record left',
    );
    // Still full: refused and counted, reported once only.
    assert.equal(s.append([rec(100)]), 0);
    assert.equal(errors.length, 1, errors.map((e) => e.message).join('\n'));
    assert.equal(errors[0]!.code, 'EDR_COLLECTOR_SPOOL_WRITE');
    assert.match(errors[0]!.message, /ENOSPC/);

    rmSync(filler);
    const later = Array.from({ length: 20 }, (_, i) => rec(200 + i));
    assert.equal(s.append(later), 20, 'space is back: appends are stored again');
    const got = drainSpool(s);
    assert.equal(s.corruptSegments, 0, 'nothing read as corrupt');
    assert.deepEqual(got, [...first.slice(0, stored), ...later], 'everything stored, in order');
    console.log(`disk full: ${stored}/50 stored, ${s.dropped} dropped, then 20/20 after space returned`);
    s.close();
  });

  it('a cursor that cannot be saved on a full disk is counted; delivered segments still give space back', () => {
    const { dir } = smallDisk(64 * 1024, 40 * 1024);
    const errors: EdrError[] = [];
    const o = { dir, maxBytes: 1 << 20, segmentBytes: 4096, fsync: 'never' as const };
    const s = new Spool({ ...o, onError: (e) => errors.push(e) });
    const rec = (i: number): Buffer => Buffer.concat([Buffer.from(`c${i}:`), Buffer.alloc(1000, 7)]);
    let stored = 0;
    while (s.append([rec(stored)]) === 1) stored++;
    assert.ok(stored > 8, `filled the disk with ${stored} records`);
    // Mid-segment: no segment can go, and the cursor file needs a page the disk does not have.
    const first = s.read(2);
    s.commit(first.end);
    assert.equal(s.cursorErrors, 1);
    assert.deepEqual(
      errors.map((e) => e.code),
      ['EDR_COLLECTOR_SPOOL_WRITE', 'EDR_COLLECTOR_SPOOL_CURSOR'],
    );
    // The rest, read and committed: whole segments are deleted, the space comes back, the cursor is saved.
    const rest = drainSpool(s, 3);
    assert.equal(first.payloads.length + rest.length, stored, 'everything stored is read back');
    assert.equal(s.empty, true);
    // Saving needs a page for the new cursor beside the old one: commits fail (counted) until two pages are free.
    assert.ok(s.cursorErrors >= 1);
    console.log(`full disk: ${stored} records drained, ${s.cursorErrors} cursor saves refused on the way`);
    s.close();
    const reopened = new Spool(o);
    assert.deepEqual(reopened.read(100).payloads, [], 'the saved cursor says everything was delivered');
    reopened.close();
  });

  it('fsync errors from the interval timer are counted and reported once, never thrown', async () => {
    // tmpfs's fsync cannot fail: the fsync call is injected (the spool's seam for it).
    const { dir } = smallDisk(64 * 1024, 60 * 1024);
    const errors: EdrError[] = [];
    let calls = 0;
    const s = new Spool({
      dir,
      maxBytes: 1 << 20,
      segmentBytes: 1 << 20,
      fsync: 'interval',
      fsyncIntervalMs: 5,
      onError: (e) => errors.push(e),
      fsync_: () => {
        calls++;
        throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
      },
    });
    s.append([Buffer.from('a')]);
    await until('three failed fsyncs', () => s.syncErrors >= 3);
    assert.equal(errors.length, 1, 'reported once');
    assert.equal(errors[0]!.code, 'EDR_COLLECTOR_SPOOL_SYNC');
    assert.deepEqual(
      s.read(10).payloads.map((b) => b.toString()),
      ['a'],
    );
    s.close();
    assert.ok(calls >= 3);
  });

  it('the collector keeps running on a full disk, reports the drops in LOSS, delivers what it spooled in order', async () => {
    const { dir, filler } = smallDisk(256 * 1024, 64 * 1024);
    const unhandled: unknown[] = [];
    const onUnhandled = (err: unknown) => unhandled.push(err);
    process.on('unhandledRejection', onUnhandled);
    const transport = new FlakyTransport();
    transport.down = true;
    await transport.createTopics(
      ['raw', 'audit', 'schemas'].map((t) => ({ name: `df.${t}`, partitions: 1 })),
    );
    let phase = 0;
    let firstAfterSpace = 0;
    let waiting = false;
    let pid = 1000;
    let total = 0;
    const batch = (): SourceEvent[] => {
      total += 10;
      return Array.from({ length: 10 }, () => execEvent(pid++, ['true', 'x'.repeat(2000)]));
    };
    // Phase 0 floods until the disk is full; phase 1 (space back, broker still down) is 5 batches (~100 KiB);
    // the source ends at phase 2.
    const source: Source = {
      name: 'flood',
      counters: () => ({
        kernelSeen: total,
        kernelDrops: 0,
        kernelTruncated: 0,
        kernelReadErrors: 0,
        queueDrops: 0,
      }),
      async *[Symbol.asyncIterator]() {
        while (phase === 0) {
          yield batch();
          await new Promise((r) => setTimeout(r, 1));
        }
        firstAfterSpace = pid;
        for (let i = 0; i < 5; i++) yield batch();
        waiting = true;
        while (phase < 2) await new Promise((r) => setTimeout(r, 5));
      },
    };
    const config = parseConfig(collectorConfigSchema, {
      kafka: { brokers: ['127.0.0.1:1'] },
      topics: { raw: 'df.raw', audit: 'df.audit', schemas: 'df.schemas' },
      spool: { dir, maxBytes: 1 << 24, segmentBytes: 16384, fsync: 'interval', fsyncIntervalMs: 10 },
      host: { id: 'host-df', hostname: 'df' },
      publish: { lossCheckIntervalMs: 20, retryIntervalMs: 20, timeoutMs: 500 },
    });
    const collector = new Collector({ config, transport, log, source: () => source });
    const running = collector.run();
    let failed: unknown;
    running.catch((err: unknown) => {
      failed = err;
    });
    await until('the disk to fill', () => collector.counters().publish.spoolDropped > 100);
    const droppedWhileFull = collector.counters().publish.spoolDropped;
    assert.ok(collector.counters().publish.spoolWriteErrors > 0);
    assert.equal(failed, undefined, 'still running');

    rmSync(filler);
    phase = 1;
    await until('the batches after space returned', () => waiting && collector.counters().events === total);
    const droppedAfterSpace = collector.counters().publish.spoolDropped;
    transport.down = false;
    await until('the spool to drain', () => collector.counters().publish.mode === 'online');
    phase = 2;
    await running;
    process.off('unhandledRejection', onUnhandled);

    const c = collector.counters();
    assert.equal(c.publish.spoolDropped, droppedAfterSpace, 'nothing dropped once space returned');
    assert.ok(droppedAfterSpace >= droppedWhileFull);
    const { events, records } = decodeAudit((await readAll(transport, 'df.audit', 1)).map((r) => r.value!));
    const seqs = events.map((e) => e.seq);
    assert.deepEqual(
      seqs,
      [...seqs].sort((a, b) => (a < b ? -1 : 1)),
      'in order',
    );
    assert.equal(new Set(seqs).size, seqs.length, 'no duplicates (no publish failed mid-flight)');
    assert.equal(
      events.length + c.publish.spoolDropped,
      c.events,
      'every event delivered or counted as dropped',
    );
    assert.equal(c.events, total);
    const loss = records.filter((r) => r.kind === 'LOSS').pop();
    assert.deepEqual(
      events.filter((e) => e.pid >= firstAfterSpace).map((e) => e.pid),
      Array.from({ length: 50 }, (_, i) => firstAfterSpace + i),
      'every event after space returned delivered',
    );
    assert.equal(loss?.losses?.spoolDropped, BigInt(c.publish.spoolDropped), 'the LOSS record has the count');
    assert.equal(records[records.length - 1]!.kind, 'STOPPED');
    assert.deepEqual(unhandled, []);
    console.log(
      `collector on a full disk: ${c.events} events, ${events.length} delivered in order, ` +
        `${c.publish.spoolDropped} dropped (LOSS reports ${loss?.losses?.spoolDropped}), ` +
        `${c.publish.spoolWriteErrors} failed writes`,
    );
    await transport.close();
  });
});
