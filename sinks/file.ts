/**
 * File sink: JSON lines, one alert per line, the full event (no redaction), appended to one file in the
 * configured directory, fsynced per policy, rotated by size and age (`alerts.jsonl` → `alerts.jsonl.1` → …) with
 * a retention count. Paths are confined to the directory: checked in config, and again at open time against
 * symlinks. Every open refuses a symlink as the file itself (O_NOFOLLOW, no window between a check and the open),
 * and a file the sink creates is 0600: alerts carry full command lines.
 */
import { constants } from 'node:fs';
import { type FileHandle, mkdir, open, realpath, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { EdrError } from '../infra/errors.js';
import type { Alert } from '../schemas/types.js';
import {
  alertsOf,
  jsonReplacer,
  type Message,
  type Sink,
  type SinkContext,
  type SinkDefaults,
} from './sink.js';

export const configSchema = z.strictObject({
  /** Absolute directory every file of this sink lives in. */
  directory: z
    .string()
    .min(1)
    .refine((d) => path.isAbsolute(d), 'must be an absolute path'),
  /** File name, relative to `directory`. */
  file: z.string().min(1).default('alerts.jsonl'),
  /** always: fdatasync before an alert counts as delivered; interval: every fsyncIntervalMs; never: the OS decides. */
  fsync: z.enum(['always', 'interval', 'never']).default('always'),
  fsyncIntervalMs: z.number().int().positive().default(1000),
  rotate: z
    .strictObject({
      maxBytes: z
        .number()
        .int()
        .positive()
        .default(100 * 1024 * 1024),
      /** Rotate a file this old even if small. */
      maxAgeMs: z.number().int().positive().optional(),
      /** Rotated files kept; older ones are deleted. */
      keep: z.number().int().min(0).default(10),
    })
    .prefault({}),
  /**
   * Bytes of the current file read at start-up for the alert ids it holds (its tail): the dedup journal holds the
   * earlier ones. Must exceed the longest alert line. Hitting it is logged with the bytes skipped.
   */
  startupReadBytes: z
    .number()
    .int()
    .min(1 << 20)
    .default(16 << 20),
});
export type FileConfig = z.output<typeof configSchema>;

export const defaults: SinkDefaults = {
  fold: false,
  redact: false,
  oneMessagePerBatch: true,
  messagesPerSecond: 0,
  startFrom: 'earliest',
};

/** Config-time check: `file` must stay inside `directory`. */
export function check(
  c: { directory: string; file: string },
  issue: (path: string, message: string) => void,
) {
  if (!insideDir(c.directory, c.file)) issue('file', `path outside its directory ${c.directory}`);
}

export function insideDir(dir: string, file: string): boolean {
  if (path.isAbsolute(file)) return false;
  const rel = path.relative(path.resolve(dir), path.resolve(dir, file));
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
}

/** The payload: one JSON line per alert. */
export function fileLines(alerts: readonly Alert[]): string {
  let out = '';
  for (const a of alerts) out += `${JSON.stringify(a, jsonReplacer)}\n`;
  return out;
}

/** Whether the current file must be rotated before `incomingBytes` are appended. */
export function rotationDue(
  state: { size: number; openedAtMs: number },
  incomingBytes: number,
  nowMs: number,
  rotate: { maxBytes: number; maxAgeMs?: number | undefined },
): boolean {
  if (state.size === 0) return false;
  if (state.size + incomingBytes > rotate.maxBytes) return true;
  return rotate.maxAgeMs !== undefined && nowMs - state.openedAtMs >= rotate.maxAgeMs;
}

class FileSink implements Sink {
  private handle: FileHandle | undefined;
  private size = 0;
  private openedAtMs = 0;
  private timer: NodeJS.Timeout | undefined;
  private dirty = false;
  private readonly target: string;

  constructor(
    private readonly config: FileConfig,
    private readonly ctx: SinkContext,
  ) {
    this.target = path.resolve(config.directory, config.file);
    if (config.fsync === 'interval') {
      this.timer = setInterval(() => void this.sync(), config.fsyncIntervalMs);
      this.timer.unref();
    }
  }

  async send(message: Message): Promise<void> {
    const text = fileLines(alertsOf(message));
    const bytes = Buffer.byteLength(text);
    try {
      await this.ensureOpen();
      if (
        rotationDue({ size: this.size, openedAtMs: this.openedAtMs }, bytes, Date.now(), this.config.rotate)
      ) {
        await this.rotate();
        await this.ensureOpen();
      }
      await this.handle!.appendFile(text);
      this.size += bytes;
      this.dirty = true;
      if (this.config.fsync === 'always') await this.sync();
    } catch (err) {
      throw fileError(err, this.target);
    }
  }

  /**
   * The alert ids in the current file. Only the current file: the last write before a crash is always there
   * (rotation happens before a write), and every earlier one was journalled before the next began.
   */
  async delivered(): Promise<Iterable<string>> {
    const ids: string[] = [];
    let handle: FileHandle;
    try {
      // Through a handle opened without following a symlink: cutting a torn line must never cut another file.
      handle = await open(this.target, constants.O_RDWR | constants.O_NOFOLLOW);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return ids;
      throw fileError(err, this.target);
    }
    let text: string;
    try {
      // Only the file's tail is read (startupReadBytes): the last write before a crash is at its end, and a file
      // grown past its rotation size (by hand, or a lowered maxBytes) must not be read whole into memory.
      const size = (await handle.stat()).size;
      const from = Math.max(0, size - this.config.startupReadBytes);
      const buf = Buffer.alloc(size - from);
      for (let got = 0; got < buf.length; ) {
        const { bytesRead } = await handle.read(buf, got, buf.length - got, from + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      const lastNl = buf.lastIndexOf(10);
      let end = buf.length;
      if (buf.length > 0 && buf[buf.length - 1] !== 10 && (lastNl >= 0 || from === 0)) {
        // A line torn by a kill mid-write: cut it, its alert was not recorded and comes again.
        end = lastNl + 1;
        await handle.truncate(from + end);
        this.ctx.log.warn('cut a torn last line', { file: this.target });
      }
      // Reading from the middle of a line: that first partial line is not an alert.
      const start = from === 0 ? 0 : buf.indexOf(10) + 1;
      if (from > 0)
        this.ctx.log.warn('start-up read bounded: alert ids before the file tail are not read', {
          file: this.target,
          skippedBytes: from + start,
          startupReadBytes: this.config.startupReadBytes,
        });
      // No line end at all in a tail read: one partial line, no alert id to learn.
      text = from > 0 && start === 0 ? '' : buf.toString('utf8', start, end);
    } catch (err) {
      throw fileError(err, this.target);
    } finally {
      await handle.close();
    }
    const prefix = '{"alertId":"';
    for (const line of text.split('\n')) {
      if (line === '') continue;
      // Lines start with the alert id (the schema's first field): no need to parse megabytes of JSON.
      const close = line.startsWith(prefix) ? line.indexOf('"', prefix.length) : -1;
      if (close > 0 && !line.slice(prefix.length, close).includes('\\')) {
        ids.push(line.slice(prefix.length, close));
        continue;
      }
      try {
        const id = (JSON.parse(line) as { alertId?: unknown }).alertId;
        if (typeof id === 'string') ids.push(id);
      } catch {
        // Not ours (edited by hand): nothing to learn from it.
      }
    }
    return ids;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.sync();
    await this.handle?.close();
    this.handle = undefined;
  }

  private async sync(): Promise<void> {
    if (!this.dirty || this.handle === undefined) return;
    this.dirty = false;
    await this.handle.datasync();
  }

  private async ensureOpen(): Promise<void> {
    if (this.handle !== undefined) return;
    await mkdir(this.config.directory, { recursive: true });
    // The directory may itself be a symlink (allowed: the operator chose it); the file may not lead out of it.
    const dir = await realpath(this.config.directory);
    await mkdir(path.dirname(this.target), { recursive: true });
    const parent = await realpath(path.dirname(this.target));
    if (parent !== dir && !insideDir(dir, path.relative(dir, parent))) {
      throw new EdrError('EDR_SINK_FILE_PATH', `${this.target} leads outside ${this.config.directory}`);
    }
    this.handle = await openAppend(this.target);
    const stat = await this.handle.stat();
    if (!stat.isFile()) {
      await this.handle.close();
      this.handle = undefined;
      throw new EdrError('EDR_SINK_FILE_PATH', `${this.target} is not a regular file`);
    }
    this.size = stat.size;
    this.openedAtMs = stat.size === 0 ? Date.now() : stat.birthtimeMs || stat.mtimeMs;
  }

  private async rotate(): Promise<void> {
    await this.sync();
    await this.handle?.close();
    this.handle = undefined;
    const keep = this.config.rotate.keep;
    await rm(`${this.target}.${keep + 1}`, { force: true });
    if (keep === 0) {
      await rm(this.target, { force: true });
      return;
    }
    await rm(`${this.target}.${keep}`, { force: true });
    for (let i = keep - 1; i >= 1; i--) {
      await rename(`${this.target}.${i}`, `${this.target}.${i + 1}`).catch(ignoreMissing);
    }
    await rename(this.target, `${this.target}.1`);
    this.ctx.log.info('rotated', { file: this.target });
  }
}

const APPEND = constants.O_WRONLY | constants.O_APPEND | constants.O_NOFOLLOW;

/**
 * Opens `file` for appending, never through a symlink. A new file is created exclusively and set to 0600 on its
 * handle (the umask only narrows a mode, and a racing creator makes O_EXCL fail rather than hand us its file); an
 * existing file keeps the mode its operator gave it.
 */
async function openAppend(file: string): Promise<FileHandle> {
  for (let attempt = 0; ; attempt++) {
    try {
      const handle = await open(file, APPEND | constants.O_CREAT | constants.O_EXCL, 0o600);
      await handle.chmod(0o600);
      return handle;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    try {
      return await open(file, APPEND);
    } catch (err) {
      // Removed between the two opens (rotation by hand, say): create it after all, once.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt > 0) throw err;
    }
  }
}

function ignoreMissing(err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
}

/** A full disk may clear; a path or permission problem will not. */
function fileError(err: unknown, file: string): EdrError {
  if (err instanceof EdrError) return err;
  const code = (err as NodeJS.ErrnoException).code;
  // O_NOFOLLOW met a symlink: a path problem, permanent, the link's target untouched.
  if (code === 'ELOOP')
    return new EdrError('EDR_SINK_FILE_PATH', `${file} is a symlink; the file sink does not follow it`, {
      cause: err,
    });
  const retryable = code === 'ENOSPC' || code === 'EAGAIN' || code === 'EIO' || code === 'EMFILE';
  return new EdrError('EDR_SINK_FILE_WRITE', `cannot write ${file}: ${(err as Error).message}`, {
    retryable,
    cause: err,
  });
}

export function create(config: FileConfig, ctx: SinkContext): Sink {
  return new FileSink(config, ctx);
}
