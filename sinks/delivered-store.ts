/**
 * What a sink instance has handled, kept on local disk: ids delivered (or parked as undeliverable), so a
 * restart does not deliver twice what Kafka redelivers (offsets commit after delivery, so a crash in between
 * redelivers), and alerts held in an open throttle window (see deliver.ts), with their original record, so they
 * are sent after a crash. An append-only journal fsynced before offsets commit: `<ms> <alertId>` for handled,
 * `H <ms> <json>` for held; rewritten without expired or settled entries when opened and when it has grown.
 *
 * Why local disk and not a Kafka topic: the sinks' peers (SMTP, Slack) have no idempotency keys, so dedup is
 * only as good as the record written right after the peer said yes; a local fsync is the shortest such window.
 * One process per sink instance and state directory (a lock file says so); run a sink instance's group members
 * on one host, or give them a shared state directory.
 */
import { closeSync, openSync, readFileSync, renameSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { type FileHandle, mkdir, open, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { EdrError } from '../infra/errors.js';
import type { Logger } from '../infra/log.js';

export interface DeliveredStoreOptions {
  dir: string;
  name: string;
  /** How long an id is remembered. Kafka redelivers within minutes; replays may come later. */
  windowMs: number;
  /**
   * How many ids are remembered at most (DEFAULT_MAX_DEDUP_ENTRIES): beyond it the oldest are forgotten before
   * their window ends, and counted (`evicted`). Held alerts are never forgotten: they are owed a delivery.
   */
  maxEntries?: number;
  log?: Logger;
  now?: () => number;
}

export const DEFAULT_MAX_DEDUP_ENTRIES = 1_000_000;

/** An alert held for a throttle window's summary: enough to send it, or park it, after a restart. */
export interface HeldEntry {
  id: string;
  /** Fold key (rule and host). */
  key: string;
  topic: string;
  partition: number;
  offset: number;
  /** Original record key and value, base64. */
  recordKey: string | null;
  value: string;
}

export class DeliveredStore {
  private readonly seen = new Map<string, number>();
  private readonly heldEntries = new Map<string, HeldEntry>();
  private appended = 0;
  /** Ids forgotten because of maxEntries (before their window ended). */
  evicted = 0;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly file: string,
    private readonly lockFile: string,
    private handle: FileHandle,
    private readonly windowMs: number,
    private readonly maxEntries: number,
    private readonly now: () => number,
    private readonly log: Logger | undefined,
  ) {}

  static async open(opts: DeliveredStoreOptions): Promise<DeliveredStore> {
    await mkdir(opts.dir, { recursive: true });
    const file = path.join(opts.dir, `${opts.name}.delivered`);
    const lockFile = path.join(opts.dir, `${opts.name}.lock`);
    takeLock(lockFile, opts.name);
    const now = opts.now ?? Date.now;
    const store = new DeliveredStore(
      file,
      lockFile,
      undefined as unknown as FileHandle,
      opts.windowMs,
      opts.maxEntries ?? DEFAULT_MAX_DEDUP_ENTRIES,
      now,
      opts.log,
    );
    let text = '';
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const oldest = now() - opts.windowMs;
    // A torn last line (killed mid-write) is dropped: its alert was not recorded, so it comes again.
    const complete = text.endsWith('\n') ? text : text.slice(0, text.lastIndexOf('\n') + 1);
    const held = new Map<string, [number, HeldEntry]>();
    for (const line of complete.split('\n')) {
      if (line.startsWith('H ')) {
        const sp = line.indexOf(' ', 2);
        try {
          const e = JSON.parse(line.slice(sp + 1)) as HeldEntry;
          held.set(e.id, [Number(line.slice(2, sp)), e]);
        } catch {}
        continue;
      }
      const sp = line.indexOf(' ');
      if (sp <= 0) continue;
      const at = Number(line.slice(0, sp));
      const id = line.slice(sp + 1);
      held.delete(id);
      if (Number.isFinite(at) && at >= oldest) store.seen.set(id, at);
    }
    // Held alerts never expire: they are owed a delivery.
    for (const [id, [at, e]] of held) {
      store.seen.set(id, at);
      store.heldEntries.set(id, e);
    }
    store.bound();
    await store.rewrite();
    return store;
  }

  /** Whether the alert was delivered, parked or is held. */
  has(id: string): boolean {
    return this.seen.has(id);
  }

  get size(): number {
    return this.seen.size;
  }

  isHeld(id: string): boolean {
    return this.heldEntries.has(id);
  }

  /** Alerts held when the previous run stopped, owed a delivery. */
  held(): HeldEntry[] {
    return [...this.heldEntries.values()];
  }

  /** Records ids as handled (delivered or parked); resolves when they are on disk. */
  add(ids: Iterable<string>): Promise<void> {
    const at = this.now();
    let text = '';
    for (const id of ids) {
      if (this.seen.has(id) && !this.heldEntries.has(id)) continue;
      this.heldEntries.delete(id);
      this.seen.set(id, at);
      text += `${at} ${id}\n`;
    }
    this.bound();
    return this.append(text);
  }

  /**
   * Forgets the oldest delivered ids beyond maxEntries (a fleet's alert storm must not grow memory, or the
   * journal, without bound). The map keeps insertion order, which is time order. The journal loses them at the
   * next rewrite.
   */
  private bound(): void {
    let over = this.seen.size - this.maxEntries;
    if (over <= 0) return;
    let n = 0;
    for (const id of this.seen.keys()) {
      if (over <= 0) break;
      if (this.heldEntries.has(id)) continue;
      this.seen.delete(id);
      over--;
      n++;
    }
    const before = this.evicted;
    this.evicted += n;
    // Logged the first time, then once per 10 000 forgotten (a storm is not a log flood).
    if (n > 0 && (before === 0 || Math.floor(before / 10_000) !== Math.floor(this.evicted / 10_000)))
      this.log?.warn('dedup journal at its bound: the oldest ids forgotten early', {
        maxEntries: this.maxEntries,
        evicted: this.evicted,
      });
  }

  /** Records alerts as held for a later summary; resolves when they are on disk. */
  hold(entries: Iterable<HeldEntry>): Promise<void> {
    const at = this.now();
    let text = '';
    for (const e of entries) {
      if (this.seen.has(e.id)) continue;
      this.seen.set(e.id, at);
      this.heldEntries.set(e.id, e);
      text += `H ${at} ${JSON.stringify(e)}\n`;
    }
    return this.append(text);
  }

  private append(text: string): Promise<void> {
    if (text === '') return this.queue.then(() => {});
    const run = async () => {
      await this.handle.appendFile(text);
      await this.handle.datasync();
      this.appended += 1;
      if (this.appended > 1000) await this.compact();
    };
    const r = this.queue.then(run, run);
    this.queue = r.catch(() => {});
    return r.catch((err: unknown) => {
      throw new EdrError('EDR_SINK_STATE_WRITE', `cannot record deliveries in ${this.file}: ${String(err)}`, {
        retryable: true,
        cause: err,
      });
    });
  }

  async close(): Promise<void> {
    await this.queue;
    await this.handle.close();
    try {
      unlinkSync(this.lockFile);
    } catch {}
  }

  private async compact(): Promise<void> {
    const oldest = this.now() - this.windowMs;
    for (const [id, at] of this.seen) if (at < oldest && !this.heldEntries.has(id)) this.seen.delete(id);
    await this.handle.close();
    await this.rewrite();
  }

  /** Writes the live entries to a new journal and swaps it in atomically. */
  private async rewrite(): Promise<void> {
    const tmp = `${this.file}.tmp`;
    let text = '';
    for (const [id, at] of this.seen) {
      const e = this.heldEntries.get(id);
      text += e === undefined ? `${at} ${id}\n` : `H ${at} ${JSON.stringify(e)}\n`;
    }
    await writeFile(tmp, text, { flush: true });
    await rename(tmp, this.file);
    this.handle = await open(this.file, 'a');
    this.appended = 0;
  }
}

/** One process per sink instance: a lock file holding the pid; a dead holder's lock is taken over. */
function takeLock(lockFile: string, name: string): void {
  try {
    const fd = openSync(lockFile, 'wx');
    writeSync(fd, String(process.pid));
    closeSync(fd);
    return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const pid = Number(readFileSync(lockFile, 'utf8').trim());
  if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
    throw new EdrError(
      'EDR_SINK_STATE_LOCKED',
      `sink ${name}: state in ${path.dirname(lockFile)} is in use by process ${pid}`,
    );
  }
  // Stale (its process died): replace it atomically.
  writeFileSync(`${lockFile}.${process.pid}`, String(process.pid));
  renameSync(`${lockFile}.${process.pid}`, lockFile);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
