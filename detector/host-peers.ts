/**
 * How many detector processes run on this host, for `evaluationThreads: auto`. An evaluation thread pays off only
 * with a core to spare: one worker on two cores gains from it, two workers on two cores lose (the hand-over costs
 * CPU the other process needed; see the README's throughput section). Each process registers its pid as a file in
 * one directory; the count is the pids still alive. Processes in other containers (other directories) are not
 * seen, which leaves them the one-thread default.
 */
import { chmodSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export class HostPeers {
  private readonly file: string;
  private registered = false;

  constructor(readonly dir = path.join(tmpdir(), 'edr-detectors')) {
    this.file = path.join(dir, String(process.pid));
  }

  /** Registers this process; false if the directory is not writable (another user's, say). */
  register(): boolean {
    try {
      if (mkdirSync(this.dir, { recursive: true }) !== undefined) chmodSync(this.dir, 0o1777); // like /tmp
      writeFileSync(this.file, '');
      this.registered = true;
    } catch {
      this.registered = false;
    }
    return this.registered;
  }

  unregister(): void {
    if (this.registered) rmSync(this.file, { force: true });
    this.registered = false;
  }

  /** Registered processes still running (this one included); files of dead ones are removed. */
  count(): number {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return 1;
    }
    let alive = this.registered ? 0 : 1; // this process, when it could not register
    for (const name of names) {
      const pid = Number(name);
      if (!Number.isInteger(pid) || pid <= 0) continue;
      if (pid === process.pid) alive += this.registered ? 1 : 0;
      else if (running(pid)) alive++;
      else {
        try {
          rmSync(path.join(this.dir, name), { force: true });
        } catch {
          // another user's file in a sticky directory: left for its owner's next count
        }
      }
    }
    return Math.max(1, alive);
  }
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // alive, another user's
  }
}

/** Evaluation threads for a process that shares `cores` with `processes` detector processes: one if a core is spare. */
export function autoThreads(cores: number, processes: number): number {
  return cores > processes ? 1 : 0;
}
