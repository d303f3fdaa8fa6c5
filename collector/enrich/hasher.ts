/**
 * Optional SHA-256 of executables, cached by device, inode and mtime (a replaced binary gets a new inode or
 * mtime, so it is hashed again). The file is hashed when the event is enriched, not at exec: a file replaced
 * in between is hashed as it is then. Bounded cache, oldest entry evicted.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';

export class ExecutableHashes {
  readonly #cache = new Map<string, Promise<string | null>>();
  hashed = 0;
  failures = 0;

  constructor(
    private readonly maxFileBytes: number,
    private readonly maxEntries: number,
  ) {}

  /** Hex SHA-256 of the file, or null when it cannot be read, is not a regular file, or is too large. */
  async sha256(file: string): Promise<string | null> {
    let key: string;
    let size: number;
    try {
      const st = await stat(file, { bigint: true });
      if (!st.isFile()) return null;
      key = `${st.dev}:${st.ino}:${st.mtimeNs}`;
      size = Number(st.size);
    } catch {
      this.failures++;
      return null;
    }
    const hit = this.#cache.get(key);
    if (hit !== undefined) return hit;
    if (size > this.maxFileBytes) return null;
    const pending = this.#hash(file);
    if (this.#cache.size >= this.maxEntries) this.#cache.delete(this.#cache.keys().next().value!);
    this.#cache.set(key, pending);
    return pending;
  }

  async #hash(file: string): Promise<string | null> {
    try {
      const h = createHash('sha256');
      for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
      this.hashed++;
      return h.digest('hex');
    } catch {
      this.failures++;
      return null;
    }
  }
}
