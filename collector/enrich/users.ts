/**
 * uid → user name from /etc/passwd, re-read when the file changes. Changes are noticed by stat (inode, size,
 * mtime) at most once per check interval: fs.watch misses the rename that `useradd`/`vipw` use to replace it.
 */
import { readFileSync, statSync } from 'node:fs';

/** Parses passwd lines `name:x:uid:gid:...`; malformed lines and comments are skipped. First entry wins. */
export function parsePasswd(text: string): Map<number, string> {
  const users = new Map<number, string>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const parts = line.split(':');
    if (parts.length < 4) continue;
    const [name, , uidText] = parts;
    if (!name || !uidText || !/^\d+$/.test(uidText)) continue;
    const uid = Number(uidText);
    if (!users.has(uid)) users.set(uid, name);
  }
  return users;
}

export class UserNames {
  #users = new Map<number, string>();
  #stamp = '';
  #checkedAt = Number.NEGATIVE_INFINITY;
  /** Times the file was (re-)read. */
  reloads = 0;

  constructor(
    private readonly file: string,
    private readonly checkIntervalMs: number,
    private readonly now: () => number = Date.now,
  ) {
    this.#refresh();
  }

  /** The name of `uid`, or null when /etc/passwd does not know it (LDAP users, removed users). */
  name(uid: number): string | null {
    if (this.now() - this.#checkedAt >= this.checkIntervalMs) this.#refresh();
    return this.#users.get(uid) ?? null;
  }

  #refresh(): void {
    this.#checkedAt = this.now();
    let stamp: string;
    try {
      const st = statSync(this.file);
      stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
    } catch {
      stamp = 'missing';
    }
    if (stamp === this.#stamp) return;
    this.#stamp = stamp;
    try {
      this.#users = parsePasswd(readFileSync(this.file, 'utf8'));
    } catch {
      this.#users = new Map();
    }
    this.reloads++;
  }
}
