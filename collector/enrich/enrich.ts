/**
 * Kernel events in, ExecveEvent records out. Fork and exit events only maintain the process table; each exec
 * becomes one event with its user name, parent image and command line, ancestry, container id and host
 * identity (and, when enabled, the executable's SHA-256). `seq` is assigned later, by the publisher, in the
 * order events are handed to it.
 */
import { readFileSync } from 'node:fs';
import type { ExecveEvent } from '../../schemas/types.js';
import type { CollectorConfig } from '../config.js';
import type { SourceEvent } from '../source.js';
import { ContainerIds } from './container.js';
import { ExecutableHashes } from './hasher.js';
import type { HostIdentity } from './host.js';
import { ProcessTable } from './process-table.js';
import { UserNames } from './users.js';

export const COLLECTOR_VERSION = '0.1.0';

/**
 * Boot-relative kernel times (CLOCK_BOOTTIME) to wall-clock ns. Node reads CLOCK_MONOTONIC, which equals
 * BOOTTIME unless the machine was suspended: the difference is read once from /proc/uptime (10 ms resolution)
 * and ignored below 50 ms. Re-anchored every minute to follow wall-clock adjustments.
 */
export class BootClock {
  #offsetNs = 0n;
  #anchoredAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly suspendedNs: () => bigint = suspendedNsFromUptime) {}

  toWallNs(bootNs: bigint): bigint {
    const now = Date.now();
    if (now - this.#anchoredAt > 60_000) {
      this.#anchoredAt = now;
      const suspended = this.suspendedNs();
      this.#offsetNs =
        BigInt(now) * 1_000_000n - process.hrtime.bigint() - (suspended > 50_000_000n ? suspended : 0n);
    }
    return bootNs + this.#offsetNs;
  }
}

export interface EnricherCounters {
  processTableSize: number;
  processTableEvictions: number;
  processesSeeded: number;
  passwdReloads: number;
  hashed: number;
}

export class Enricher {
  readonly processes: ProcessTable;
  readonly #users: UserNames;
  readonly #containers: ContainerIds;
  readonly #hashes: ExecutableHashes | undefined;
  readonly #clock: BootClock;

  constructor(
    private readonly host: HostIdentity,
    config: Pick<CollectorConfig, 'enrich' | 'hashing'>,
    clock = new BootClock(),
  ) {
    const e = config.enrich;
    this.processes = new ProcessTable({
      maxEntries: e.processTableMaxEntries,
      commandLineMaxBytes: e.commandLineMaxBytes,
      ancestorsMax: e.ancestorsMax,
    });
    this.#users = new UserNames(e.passwdFile, e.passwdCheckIntervalMs);
    this.#containers = new ContainerIds(e.procDir, e.cgroupRoot);
    this.#hashes = config.hashing.enabled
      ? new ExecutableHashes(config.hashing.maxFileBytes, config.hashing.cacheEntries)
      : undefined;
    this.#clock = clock;
  }

  seed(procDir: string): number {
    return this.processes.seedFromProc(procDir);
  }

  /** Applies a batch in order; returns its execs as events (seq 0n until the publisher numbers them). */
  async enrich(batch: readonly SourceEvent[]): Promise<ExecveEvent[]> {
    const out: ExecveEvent[] = [];
    for (const e of batch) {
      if (e.kind === 'fork') this.processes.fork(e.pid, e.ppid);
      else if (e.kind === 'exit') this.processes.exit(e.pid, e.timeNs);
      else out.push(this.#exec(e));
    }
    if (this.#hashes !== undefined) {
      await Promise.all(
        out.map(async (ev) => {
          ev.sha256 ??= await this.#hashes!.sha256(ev.image);
        }),
      );
    }
    return out;
  }

  #exec(e: Extract<SourceEvent, { kind: 'exec' }>): ExecveEvent {
    // The file the kernel runs (symlinks resolved); the execve filename when the exe path could not be read.
    const image = e.exePath !== '' ? e.exePath : e.filename;
    const lineage = this.processes.exec(e.pid, e.ppid, image, e.argv);
    const given = 'given' in e ? e.given : undefined;
    return {
      hostId: this.host.hostId,
      hostname: this.host.hostname,
      bootId: this.host.bootId,
      seq: 0n,
      timeNs: given?.wallTimeNs ?? this.#clock.toWallNs(e.timeNs),
      processStartNs: e.startTimeNs,
      pid: e.pid,
      tid: e.tid,
      ppid: e.ppid,
      uid: BigInt(e.uid),
      euid: BigInt(e.euid),
      gid: BigInt(e.gid),
      loginUid: BigInt(e.loginUid),
      sessionId: BigInt(e.sessionId),
      comm: e.comm,
      image,
      argv: e.argv,
      argvTruncated: e.argvTruncated,
      argvBytes: e.argvBytes,
      cwd: e.cwd,
      cgroupId: e.cgroupId,
      containerId:
        given?.containerId !== undefined
          ? given.containerId
          : e.cgroupId === 0n
            ? null
            : this.#containers.lookup(e.cgroupId, e.pid),
      userName: given?.userName !== undefined ? given.userName : this.#users.name(e.uid),
      parentImage: given?.parentImage !== undefined ? given.parentImage : lineage.parentImage,
      parentCommandLine:
        given?.parentCommandLine !== undefined ? given.parentCommandLine : lineage.parentCommandLine,
      ancestors: given?.ancestors ?? lineage.ancestors,
      sha256: given?.sha256 ?? null,
      collectorVersion: COLLECTOR_VERSION,
    };
  }

  counters(): EnricherCounters {
    return {
      processTableSize: this.processes.size,
      processTableEvictions: this.processes.evictions,
      processesSeeded: this.processes.seeded,
      passwdReloads: this.#users.reloads,
      hashed: this.#hashes?.hashed ?? 0,
    };
  }
}

/** Seconds the machine spent suspended: BOOTTIME (/proc/uptime) minus MONOTONIC. */
export function suspendedNsFromUptime(): bigint {
  try {
    const uptime = Number.parseFloat(readFileSync('/proc/uptime', 'utf8').split(' ')[0] ?? '0');
    const diff = BigInt(Math.round(uptime * 1e9)) - process.hrtime.bigint();
    return diff > 0n ? diff : 0n;
  } catch {
    return 0n;
  }
}
