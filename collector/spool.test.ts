import assert from 'node:assert/strict';
import {
  closeSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import { drainSpool } from '../test/harness/collector-fixtures.js';
import { Spool, type SpoolOptions } from './spool.js';

const root = mkdtempSync(path.join(tmpdir(), 'edr-spool-'));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const options = (over: Partial<SpoolOptions> = {}): SpoolOptions => ({
  dir: path.join(root, String(n++)),
  maxBytes: 1024 * 1024,
  segmentBytes: 1000,
  fsync: 'never',
  ...over,
});
const rec = (i: number): Buffer => Buffer.from(`record-${i}-${'x'.repeat(i % 50)}`);
const texts = (bufs: Buffer[]): string[] => bufs.map((b) => b.toString());
const segments = (dir: string): string[] => readdirSync(dir).filter((f) => f.endsWith('.seg'));

it('reads back in order across segments, and gives the space back once committed', () => {
  const o = options();
  const s = new Spool(o);
  assert.equal(s.empty, true);
  assert.equal(s.append(Array.from({ length: 100 }, (_, i) => rec(i))), 100);
  assert.ok(segments(o.dir).length > 3, 'rolled over into several segments');
  assert.equal(s.empty, false);
  const got = drainSpool(s);
  assert.deepEqual(texts(got), texts(Array.from({ length: 100 }, (_, i) => rec(i))));
  assert.equal(s.empty, true);
  assert.equal(s.bytes, 0);
  assert.deepEqual(
    segments(o.dir).map((f) => statSync(path.join(o.dir, f)).size),
    [0],
    'one empty segment left',
  );
  // Appends after a full drain are read next.
  s.append([rec(1000)]);
  assert.deepEqual(texts(s.read(10).payloads), [rec(1000).toString()]);
  s.close();
});

it('interleaves appends and reads: records appended while draining come after the older ones', () => {
  const s = new Spool(options());
  s.append([rec(1), rec(2)]);
  const first = s.read(1);
  s.append([rec(3)]);
  s.commit(first.end);
  const rest = s.read(10);
  assert.deepEqual(texts(rest.payloads), texts([rec(2), rec(3)]));
  s.commit(rest.end);
  assert.equal(s.drained, true);
  s.close();
});

it('a crash mid-drain loses nothing and repeats only what was not committed', () => {
  const o = options();
  const a = new Spool(o);
  a.append(Array.from({ length: 50 }, (_, i) => rec(i)));
  const acked = a.read(20);
  a.commit(acked.end);
  const inFlight = a.read(10); // sent, never acknowledged: the process dies here
  assert.equal(inFlight.payloads.length, 10);
  // No close(): reopen the directory as a restarted collector would.
  const b = new Spool(o);
  const rest: Buffer[] = [];
  for (let r = b.read(8); r.payloads.length > 0; r = b.read(8)) {
    rest.push(...r.payloads);
    b.commit(r.end);
  }
  assert.deepEqual(texts(rest), texts(Array.from({ length: 30 }, (_, i) => rec(20 + i))));
  assert.equal(b.empty, true);
  b.close();
  a.close();
});

it('rewind re-reads from the committed cursor (a failed publish)', () => {
  const s = new Spool(options());
  s.append([rec(1), rec(2), rec(3)]);
  s.commit(s.read(1).end);
  s.read(2);
  s.rewind();
  assert.deepEqual(texts(s.read(10).payloads), texts([rec(2), rec(3)]));
  s.close();
});

it('detects a corrupt record by its checksum, counts it and skips the rest of its segment', () => {
  const o = options({ segmentBytes: 200 });
  const a = new Spool(o);
  a.append(Array.from({ length: 20 }, (_, i) => rec(i)));
  a.close();
  const files = segments(o.dir).sort();
  // Flip one payload byte of the second record of the first segment.
  const first = path.join(o.dir, files[0]!);
  const fd = openSync(first, 'r+');
  const len = Buffer.alloc(4);
  readSync(fd, len, 0, 4, 0);
  const secondPayload = 8 + len.readUInt32LE(0) + 8;
  writeSync(fd, Buffer.from('#'), 0, 1, secondPayload + 2);
  closeSync(fd);
  const b = new Spool(o);
  const got: Buffer[] = [];
  for (let r = b.read(5); r.payloads.length > 0; r = b.read(5)) {
    got.push(...r.payloads);
    b.commit(r.end);
  }
  assert.equal(b.corruptSegments, 1);
  assert.equal(got[0]!.toString(), rec(0).toString());
  assert.ok(!texts(got).includes(rec(1).toString()), 'the corrupt record is not handed out');
  assert.equal(got[got.length - 1]!.toString(), rec(19).toString(), 'later segments still read');
  b.close();
});

it('treats a torn record at the end of an older segment (crash mid-write) as the end of that segment', () => {
  const o = options({ segmentBytes: 1 << 20 });
  const a = new Spool(o);
  a.append([rec(1), rec(2)]);
  a.close();
  const file = path.join(o.dir, segments(o.dir)[0]!);
  const fd = openSync(file, 'a');
  writeSync(fd, Buffer.from([200, 0, 0, 0, 1, 2, 3, 4, 5])); // a header promising 200 bytes, then the crash
  closeSync(fd);
  const b = new Spool(o);
  b.append([rec(3)]);
  assert.deepEqual(texts(b.read(10).payloads), texts([rec(1), rec(2), rec(3)]));
  assert.equal(b.corruptSegments, 1);
  b.close();
});

it('when full, refuses what does not fit, keeps the prefix in order and counts the drops', () => {
  const s = new Spool(options({ maxBytes: 65536, segmentBytes: 8192 }));
  const big = (i: number) => Buffer.alloc(1000, i);
  const stored = s.append(Array.from({ length: 100 }, (_, i) => big(i)));
  assert.ok(stored > 50 && stored < 66, `stored ${stored}`);
  assert.equal(s.dropped, 100 - stored);
  assert.ok(s.bytes <= 65536);
  assert.equal(s.append([big(200)]), 0);
  assert.equal(s.dropped, 101 - stored);
  // Draining makes room again.
  let r = s.read(1000);
  assert.equal(r.payloads.length, stored);
  assert.deepEqual(r.payloads[stored - 1], big(stored - 1));
  s.commit(r.end);
  assert.equal(s.append([big(201)]), 1);
  r = s.read(10);
  assert.deepEqual(r.payloads, [big(201)]);
  s.close();
});

it('fsync always: every append is synced; the cursor survives a reopen', () => {
  const o = options({ fsync: 'always' });
  const a = new Spool(o);
  a.append([rec(1), rec(2)]);
  a.commit(a.read(1).end);
  a.close();
  const b = new Spool(o);
  assert.deepEqual(texts(b.read(10).payloads), [rec(2).toString()]);
  b.close();
});
