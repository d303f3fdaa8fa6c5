/**
 * The bounded on-disk spool that holds records while the broker is unreachable.
 *
 * Layout: `<dir>/<16-digit index>.seg` segment files of records framed as `u32 length | u32 CRC-32 | payload`
 * (little-endian), and `<dir>/cursor`, the position up to which records were acknowledged by the broker.
 * Writes only ever append to the newest segment, and each process run starts a new one, so a torn record
 * (a crash mid-write) can only be the tail of an older segment.
 *
 * Delivery: `read` hands out records after the read position without moving the committed cursor; `commit`
 * moves it once the broker acknowledged them (written to a temporary file and renamed over `cursor`). A crash
 * between the two re-reads the unacknowledged records on the next start: nothing is lost, and only records that
 * were not yet acknowledged are sent twice.
 *
 * Full: an append that would take the spool past `maxBytes` is refused and counted in `dropped`.
 * Disk full or failing (ENOSPC, EIO, ...): a write that fails keeps the records written whole before it, cuts the
 * segment back to the last of them (ftruncate, so no torn record sits in front of later appends), and counts the
 * rest in `dropped` and `writeErrors`; the next append tries again, so the spool resumes once there is space. An
 * fsync or cursor write that fails is counted (`syncErrors`, `cursorErrors`) and the spool goes on: the data is
 * still readable by this process, only its durability across a crash is in doubt. Each kind of failure is reported
 * once through `onError` until that operation succeeds again.
 * Corruption: a record whose checksum or length does not hold ends its segment (the lengths after it cannot be
 * trusted): counted in `corruptSegments`, the reader moves on to the next segment.
 */
import {
  closeSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';
import * as zlib from 'node:zlib';
import { EdrError } from '../infra/errors.js';

export type FsyncPolicy = 'always' | 'interval' | 'never';

export interface SpoolOptions {
  dir: string;
  maxBytes: number;
  segmentBytes: number;
  fsync: FsyncPolicy;
  fsyncIntervalMs?: number;
  /** A write, fsync or cursor failure began (called once until that operation succeeds again). */
  onError?: (err: EdrError) => void;
  /** The fsync call (a seam for tests: tmpfs cannot be made to fail an fsync). */
  fsync_?: (fd: number) => void;
}

type Failure = 'write' | 'sync' | 'cursor';

export interface SpoolPosition {
  segment: number;
  offset: number;
}

export interface SpoolRead {
  payloads: Buffer[];
  /** Pass to `commit` once these payloads are acknowledged. */
  end: SpoolPosition;
}

// zlib.crc32 exists from Node 20.15; the table version keeps 20.10+ working (the spool is only written in outages).
const CRC_TABLE = Int32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});
const crc32: (data: Buffer) => number =
  (zlib as { crc32?: (data: Buffer) => number }).crc32 ??
  ((data) => {
    let c = -1;
    for (const b of data) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
    return (c ^ -1) >>> 0;
  });

const HEADER = 8;
const MAX_RECORD = 64 * 1024 * 1024;
const SEGMENT = /^(\d{16})\.seg$/;

const segName = (index: number): string => `${String(index).padStart(16, '0')}.seg`;

export class Spool {
  readonly #opts: Required<Omit<SpoolOptions, 'onError' | 'fsync_'>>;
  readonly #onError: (err: EdrError) => void;
  readonly #fsync: (fd: number) => void;
  /** Failures reported and not yet followed by a success of the same operation. */
  readonly #failing = new Set<Failure>();
  /** Indexes of the segments on disk, ascending; the last one is being written. */
  #segments: number[] = [];
  #sizes = new Map<number, number>();
  #writeFd = -1;
  #readFd = -1;
  #readFdSegment = -1;
  #committed: SpoolPosition;
  #read: SpoolPosition;
  #dirty = false;
  #timer: NodeJS.Timeout | undefined;
  /** Payloads refused because the spool was full (maxBytes) or its disk refused the write. */
  dropped = 0;
  /** Appends cut short by a failed write (disk full, I/O error). */
  writeErrors = 0;
  /** fsync calls that failed. */
  syncErrors = 0;
  /** Cursor writes that failed (the cursor on disk lags: a restart re-sends, never loses). */
  cursorErrors = 0;
  /** Segments cut short by a record whose checksum or length did not hold. */
  corruptSegments = 0;
  appended = 0;

  constructor(options: SpoolOptions) {
    const { onError, fsync_, ...rest } = options;
    this.#opts = { fsyncIntervalMs: 1000, ...rest };
    this.#onError = onError ?? (() => {});
    this.#fsync = fsync_ ?? fsyncSync;
    const dir = this.#opts.dir;
    try {
      mkdirSync(dir, { recursive: true });
      this.#segments = readdirSync(dir)
        .map((f) => SEGMENT.exec(f)?.[1])
        .filter((x): x is string => x !== undefined)
        .map(Number)
        .sort((a, b) => a - b);
    } catch (err) {
      throw new EdrError('EDR_COLLECTOR_SPOOL_OPEN', `cannot open spool ${dir}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    for (const s of this.#segments) this.#sizes.set(s, statSync(this.#file(s)).size);
    this.#committed = this.#loadCursor();
    // Segments before the cursor were delivered; a crash may have left them behind.
    for (const s of this.#segments.filter((x) => x < this.#committed.segment)) this.#remove(s);
    this.#read = { ...this.#committed };
    try {
      this.#startSegment((this.#segments[this.#segments.length - 1] ?? this.#committed.segment - 1) + 1);
    } catch (err) {
      throw new EdrError('EDR_COLLECTOR_SPOOL_OPEN', `cannot open spool ${dir}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    if (this.#segments.length === 1)
      this.#read = this.#committed = { segment: this.#segments[0]!, offset: 0 };
    if (this.#opts.fsync === 'interval') {
      this.#timer = setInterval(() => this.sync(), this.#opts.fsyncIntervalMs);
      this.#timer.unref();
    }
  }

  /** Bytes on disk in segments not yet fully acknowledged. */
  get bytes(): number {
    let n = 0;
    for (const s of this.#segments) n += this.#sizes.get(s) ?? 0;
    return n - (this.#segments[0] === this.#committed.segment ? this.#committed.offset : 0);
  }

  /** Nothing left to read after the read position. */
  get drained(): boolean {
    const last = this.#segments[this.#segments.length - 1]!;
    return this.#read.segment === last && this.#read.offset >= (this.#sizes.get(last) ?? 0);
  }

  /** Nothing on disk that was not acknowledged. */
  get empty(): boolean {
    const last = this.#segments[this.#segments.length - 1]!;
    return this.#committed.segment === last && this.#committed.offset >= (this.#sizes.get(last) ?? 0);
  }

  /**
   * Appends in order; returns how many were stored. Once one does not fit, it and the rest are dropped and
   * counted, so what is stored is always a prefix (order kept).
   */
  append(payloads: readonly Buffer[]): number {
    let stored = 0;
    let used = this.bytes;
    // One write per segment touched, not per record: an outage under an exec storm appends thousands a second.
    let frames: Buffer[] = [];
    let segmentSize = this.#sizes.get(this.#segments[this.#segments.length - 1]!) ?? 0;
    // Records of `frames` before the one that failed to write are stored; `pending` is how many are in `frames`.
    let pending = 0;
    let failed = false;
    const flush = (): void => {
      const written = this.#writeRecords(frames, pending);
      stored += written;
      if (written < pending) failed = true;
      frames = [];
      pending = 0;
    };
    for (const p of payloads) {
      const size = HEADER + p.length;
      if (used + size > this.#opts.maxBytes || p.length > MAX_RECORD) break;
      if (segmentSize >= this.#opts.segmentBytes) {
        flush();
        if (failed || !this.#tryStartSegment(this.#segments[this.#segments.length - 1]! + 1)) break;
        segmentSize = 0;
      }
      const header = Buffer.allocUnsafe(HEADER);
      header.writeUInt32LE(p.length, 0);
      header.writeUInt32LE(crc32(p), 4);
      frames.push(header, p);
      segmentSize += size;
      used += size;
      pending++;
    }
    if (!failed && pending > 0) flush();
    this.appended += stored;
    this.dropped += payloads.length - stored;
    if (stored > 0) {
      this.#dirty = true;
      if (this.#opts.fsync === 'always') this.sync();
    }
    return stored;
  }

  /** Up to `max` records after the read position (which moves past them); the committed cursor stays. */
  read(max: number): SpoolRead {
    const payloads: Buffer[] = [];
    const header = Buffer.allocUnsafe(HEADER);
    while (payloads.length < max) {
      const seg = this.#read.segment;
      const size = this.#sizes.get(seg) ?? 0;
      const last = this.#segments[this.#segments.length - 1]!;
      if (this.#read.offset + HEADER > size) {
        if (seg === last) break;
        if (this.#read.offset !== size) this.corruptSegments++; // torn tail of an older segment
        this.#read = { segment: this.#nextSegment(seg), offset: 0 };
        continue;
      }
      const fd = this.#readFdFor(seg);
      readSync(fd, header, 0, HEADER, this.#read.offset);
      const length = header.readUInt32LE(0);
      const sum = header.readUInt32LE(4);
      const start = this.#read.offset + HEADER;
      let payload: Buffer | undefined;
      if (length <= MAX_RECORD && start + length <= size) {
        payload = Buffer.allocUnsafe(length);
        readSync(fd, payload, 0, length, start);
        if (crc32(payload) !== sum) payload = undefined;
      }
      if (payload === undefined) {
        this.corruptSegments++;
        if (seg === last) {
          // Cannot happen to records this process wrote whole; refuse to read past it rather than loop.
          this.#read = { segment: seg, offset: size };
          break;
        }
        this.#read = { segment: this.#nextSegment(seg), offset: 0 };
        continue;
      }
      payloads.push(payload);
      this.#read = { segment: seg, offset: start + length };
    }
    return { payloads, end: { ...this.#read } };
  }

  /** The broker has everything up to `end`: persist the cursor, delete segments behind it. */
  commit(end: SpoolPosition): void {
    this.#committed = { ...end };
    const last = this.#segments[this.#segments.length - 1]!;
    if (
      end.segment === last &&
      end.offset >= (this.#sizes.get(last) ?? 0) &&
      end.offset > 0 &&
      this.#tryStartSegment(last + 1)
    ) {
      // Everything delivered: start an empty segment so the space is given back.
      this.#committed = { segment: last + 1, offset: 0 };
      if (this.#read.segment === last) this.#read = { ...this.#committed };
    }
    // Delivered segments go first, so a full disk has room for the cursor. A crash in between is safe: a cursor
    // naming a removed segment starts at the next one (re-sending part of it, losing nothing).
    for (const s of this.#segments.filter((x) => x < this.#committed.segment)) this.#remove(s);
    this.#saveCursor();
  }

  /** Forgets what was read but not committed: the next read starts at the committed cursor again. */
  rewind(): void {
    this.#read = { ...this.#committed };
  }

  /** fsyncs what was appended; a failure is counted and reported, never thrown (the interval timer calls it). */
  sync(): void {
    if (!this.#dirty || this.#writeFd < 0) return;
    try {
      this.#fsync(this.#writeFd);
      this.#dirty = false;
      this.#recovered('sync');
    } catch (err) {
      this.syncErrors++;
      this.#failed('sync', 'EDR_COLLECTOR_SPOOL_SYNC', 'cannot fsync the spool', err);
    }
  }

  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    if (this.#writeFd >= 0) {
      if (this.#opts.fsync !== 'never') this.sync();
      closeSync(this.#writeFd);
      this.#writeFd = -1;
    }
    this.#closeReadFd();
  }

  #failed(kind: Failure, code: string, what: string, err: unknown): void {
    if (this.#failing.has(kind)) return;
    this.#failing.add(kind);
    const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    this.#onError(
      new EdrError(code, `${what} in ${this.#opts.dir}: ${reason}`, { retryable: true, cause: err }),
    );
  }

  #recovered(kind: Failure): void {
    this.#failing.delete(kind);
  }

  #file(index: number): string {
    return path.join(this.#opts.dir, segName(index));
  }

  /** #startSegment, a failure (no inode or space for the file) counted as a failed write. */
  #tryStartSegment(index: number): boolean {
    try {
      this.#startSegment(index);
      return true;
    } catch (err) {
      this.writeErrors++;
      this.#failed('write', 'EDR_COLLECTOR_SPOOL_WRITE', 'cannot start a spool segment', err);
      return false;
    }
  }

  /** Opens the new segment before closing the old one: a failure leaves the old one the one written. */
  #startSegment(index: number): void {
    const fd = openSync(this.#file(index), 'a');
    if (this.#writeFd >= 0) {
      if (this.#opts.fsync !== 'never') this.sync();
      closeSync(this.#writeFd);
    }
    this.#writeFd = fd;
    this.#segments.push(index);
    this.#sizes.set(index, fstatSync(fd).size);
  }

  /**
   * Writes `count` records (header and payload buffers, in pairs) to the newest segment; returns how many are on
   * disk whole. A write that fails (ENOSPC after a partial write, say) is undone back to the last whole record,
   * so the segment never holds a torn record that later appends would follow.
   */
  #writeRecords(frames: Buffer[], count: number): number {
    if (count === 0) return 0;
    const last = this.#segments[this.#segments.length - 1]!;
    const base = this.#sizes.get(last) ?? 0;
    const data = Buffer.concat(frames);
    let off = 0;
    try {
      while (off < data.length) off += writeSync(this.#writeFd, data, off, data.length - off);
      this.#sizes.set(last, base + data.length);
      this.#recovered('write');
      return count;
    } catch (err) {
      this.writeErrors++;
      // Whole records among the bytes that made it.
      let whole = 0;
      let good = 0;
      for (let i = 0; i < count; i++) {
        const next = good + frames[2 * i]!.length + frames[2 * i + 1]!.length;
        if (next > off) break;
        good = next;
        whole++;
      }
      try {
        ftruncateSync(this.#writeFd, base + good);
        this.#sizes.set(last, base + good);
      } catch (truncErr) {
        // The torn bytes stay: write on in a new segment, and read this one only up to its last whole record.
        this.#sizes.set(last, base + good);
        this.#tryStartSegment(last + 1);
        this.#failed('write', 'EDR_COLLECTOR_SPOOL_WRITE', 'cannot cut a torn spool record', truncErr);
      }
      this.#failed('write', 'EDR_COLLECTOR_SPOOL_WRITE', 'cannot write to the spool', err);
      return whole;
    }
  }

  #nextSegment(seg: number): number {
    return this.#segments.find((s) => s > seg) ?? seg + 1;
  }

  #readFdFor(seg: number): number {
    if (this.#readFdSegment !== seg) {
      this.#closeReadFd();
      this.#readFd = openSync(this.#file(seg), 'r');
      this.#readFdSegment = seg;
    }
    return this.#readFd;
  }

  #closeReadFd(): void {
    if (this.#readFd >= 0) closeSync(this.#readFd);
    this.#readFd = -1;
    this.#readFdSegment = -1;
  }

  #remove(index: number): void {
    if (this.#readFdSegment === index) this.#closeReadFd();
    rmSync(this.#file(index), { force: true });
    this.#segments = this.#segments.filter((s) => s !== index);
    this.#sizes.delete(index);
  }

  #loadCursor(): SpoolPosition {
    const first = this.#segments[0];
    try {
      const c = JSON.parse(readFileSync(path.join(this.#opts.dir, 'cursor'), 'utf8')) as SpoolPosition;
      if (Number.isInteger(c.segment) && Number.isInteger(c.offset)) {
        // The cursor's segment may be gone (fully delivered and removed): start at the next one there is.
        if (!this.#segments.includes(c.segment)) {
          const next = this.#segments.find((s) => s > c.segment);
          return next === undefined ? { segment: c.segment + 1, offset: 0 } : { segment: next, offset: 0 };
        }
        return c;
      }
    } catch {
      // no cursor yet: everything on disk is unacknowledged
    }
    return { segment: first ?? 0, offset: 0 };
  }

  /** A cursor that cannot be written (disk full) leaves the older one: a restart re-sends, and loses nothing. */
  #saveCursor(): void {
    const file = path.join(this.#opts.dir, 'cursor');
    const tmp = `${file}.tmp`;
    try {
      writeFileSync(tmp, JSON.stringify(this.#committed));
      if (this.#opts.fsync === 'always') {
        const fd = openSync(tmp, 'r');
        try {
          this.#fsync(fd);
        } finally {
          closeSync(fd);
        }
      }
      renameSync(tmp, file);
      this.#recovered('cursor');
    } catch (err) {
      this.cursorErrors++;
      rmSync(tmp, { force: true });
      this.#failed('cursor', 'EDR_COLLECTOR_SPOOL_CURSOR', 'cannot save the spool cursor', err);
    }
  }
}
