/**
 * The processes of this host as the collector knows them: image, command line and parent, for the parent image,
 * parent command line and ancestry of each exec. Seeded from /proc at start, then kept from the kernel's fork,
 * exec and exit events (the /proc way misses short-lived processes).
 *
 * Memory is bounded under a fork storm: at most `maxEntries` processes, the least recently used evicted first
 * (a fork, an exec, or being looked up as a parent counts as use), command lines cut at `commandLineMaxBytes`,
 * and a forked child shares its parent's strings until it execs. An exited process stays for `exitGraceNs` of
 * kernel time, since events from different CPUs can arrive slightly out of order.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';

export interface ProcessEntry {
  pid: number;
  ppid: number;
  /** Resolved executable path; null when unknown (kernel threads, processes seeded without access). */
  image: string | null;
  commandLine: string | null;
}

export interface ProcessTableOptions {
  maxEntries: number;
  commandLineMaxBytes: number;
  ancestorsMax: number;
  exitGraceNs?: bigint;
}

export interface Lineage {
  parentImage: string | null;
  parentCommandLine: string | null;
  /** Images of the grandparent and further up, nearest first (unknown ones skipped, the walk stops there). */
  ancestors: string[];
}

/** argv as a command line: joined by spaces, as Sigma's CommandLine, cut to a byte budget. */
export function commandLine(argv: readonly string[], maxBytes: number): string {
  const joined = argv.join(' ');
  if (joined.length <= maxBytes / 4 || Buffer.byteLength(joined) <= maxBytes) return joined;
  return Buffer.from(joined)
    .subarray(0, maxBytes)
    .toString('utf8')
    .replace(/\uFFFD$/, '');
}

export class ProcessTable {
  readonly #entries = new Map<number, ProcessEntry>();
  /** pids that exited, with the kernel time they exited, oldest first. */
  #exited: Array<{ pid: number; entry: ProcessEntry; atNs: bigint }> = [];
  #exitedHead = 0;
  readonly #grace: bigint;
  evictions = 0;
  seeded = 0;

  constructor(private readonly options: ProcessTableOptions) {
    this.#grace = options.exitGraceNs ?? 2_000_000_000n;
  }

  get size(): number {
    return this.#entries.size;
  }

  get(pid: number): ProcessEntry | undefined {
    return this.#entries.get(pid);
  }

  /** Reads every /proc/PID once: image (exe link), command line, parent. Unreadable ones are skipped. */
  seedFromProc(procDir = '/proc'): number {
    let names: string[];
    try {
      names = readdirSync(procDir).filter((n) => /^\d+$/.test(n));
    } catch {
      return 0;
    }
    // Oldest first so that, if /proc holds more than maxEntries, the most recent processes are kept.
    names.sort((a, b) => Number(a) - Number(b));
    for (const name of names) {
      const dir = path.join(procDir, name);
      try {
        const stat = readFileSync(path.join(dir, 'stat'), 'utf8');
        // Fields after the comm, which may itself hold spaces and parentheses: state ppid ...
        const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        const ppid = Number(rest[1]);
        let image: string | null = null;
        try {
          image = readlinkSync(path.join(dir, 'exe'));
          if (image.endsWith(' (deleted)')) image = image.slice(0, -' (deleted)'.length);
        } catch {
          // kernel thread, or gone
        }
        const argv = readFileSync(path.join(dir, 'cmdline'), 'utf8').split('\0');
        if (argv[argv.length - 1] === '') argv.pop();
        this.#put({
          pid: Number(name),
          ppid,
          image,
          commandLine: argv.length > 0 ? commandLine(argv, this.options.commandLineMaxBytes) : null,
        });
        this.seeded++;
      } catch {
        // exited while we read it
      }
    }
    return this.seeded;
  }

  /** A new process: until it execs it runs its parent's image with its parent's command line. */
  fork(pid: number, ppid: number): void {
    const parent = this.#entries.get(ppid);
    this.#put({ pid, ppid, image: parent?.image ?? null, commandLine: parent?.commandLine ?? null });
  }

  /**
   * An exec: returns the lineage as it was before (the parent, its parent, ...), then records the new image.
   */
  exec(pid: number, ppid: number, image: string, argv: readonly string[]): Lineage {
    const lineage = this.lineage(ppid);
    this.#put({ pid, ppid, image, commandLine: commandLine(argv, this.options.commandLineMaxBytes) });
    return lineage;
  }

  exit(pid: number, atNs: bigint): void {
    const entry = this.#entries.get(pid);
    if (entry !== undefined) this.#exited.push({ pid, entry, atNs });
    this.#purge(atNs);
  }

  lineage(ppid: number): Lineage {
    const parent = this.#entries.get(ppid);
    if (parent === undefined) return { parentImage: null, parentCommandLine: null, ancestors: [] };
    // Being someone's parent is use: a shell that forks often stays in the table.
    this.#entries.delete(ppid);
    this.#entries.set(ppid, parent);
    const ancestors: string[] = [];
    const seen = new Set<number>([ppid]);
    let at = parent;
    while (ancestors.length < this.options.ancestorsMax) {
      if (at.ppid <= 0 || seen.has(at.ppid)) break;
      seen.add(at.ppid);
      const up = this.#entries.get(at.ppid);
      if (up === undefined || up.image === null) break;
      ancestors.push(up.image);
      at = up;
    }
    return { parentImage: parent.image, parentCommandLine: parent.commandLine, ancestors };
  }

  #put(entry: ProcessEntry): void {
    this.#entries.delete(entry.pid);
    this.#entries.set(entry.pid, entry);
    while (this.#entries.size > this.options.maxEntries) {
      this.#entries.delete(this.#entries.keys().next().value!);
      this.evictions++;
    }
  }

  #purge(nowNs: bigint): void {
    // A queue with a moving head: shift() on a long array is linear, and a fork storm makes it long.
    while (this.#exitedHead < this.#exited.length) {
      const first = this.#exited[this.#exitedHead]!;
      const waiting = this.#exited.length - this.#exitedHead;
      if (nowNs - first.atNs < this.#grace && waiting <= this.options.maxEntries) break;
      this.#exitedHead++;
      // Only if the pid was not reused (a new fork replaced the entry) meanwhile.
      if (this.#entries.get(first.pid) === first.entry) this.#entries.delete(first.pid);
    }
    if (this.#exitedHead > 4096 && this.#exitedHead * 2 > this.#exited.length) {
      this.#exited = this.#exited.slice(this.#exitedHead);
      this.#exitedHead = 0;
    }
  }
}
