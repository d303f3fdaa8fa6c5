/**
 * How many detector processes run on this host, for `evaluationThreads: auto`. An evaluation thread pays off only
 * with a core to spare: one worker on two cores gains from it, two workers on two cores lose (the hand-over costs
 * CPU the other process needed; see the README's throughput section). Each process registers its pid as a file in
 * one directory; the count is the pids still alive. Processes in other containers (other directories) or of other
 * users are not seen, which leaves them the one-thread default.
 *
 * The directory sits in a shared temp directory, where anyone may plant a symlink before us: it is one per user,
 * created 0700 and used only once it is proven a real directory of ours, and the pid file is created without
 * following a symlink. A process that cannot register counts itself only and touches nothing.
 */
import {
  closeSync,
  constants,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  unlinkSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { EdrError } from '../infra/errors.js';

const uid = process.getuid?.() ?? -1;

export class HostPeers {
  private readonly file: string;
  private registered = false;

  constructor(readonly dir = path.join(tmpdir(), `edr-detectors-${uid}`)) {
    this.file = path.join(dir, String(process.pid));
  }

  /** Registers this process; throws EDR_DETECTOR_PEERS_DIR if the directory or the pid file cannot be trusted. */
  register(): void {
    this.registered = false;
    try {
      mkdirSync(this.dir, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw refuse(this.dir, 'cannot be created', err);
    }
    checkOwnDirectory(this.dir);
    createPidFile(this.file);
    this.registered = true;
  }

  unregister(): void {
    if (this.registered) rmSync(this.file, { force: true });
    this.registered = false;
  }

  /** Registered processes still running (this one included); files of dead ones are removed. */
  count(): number {
    // Unregistered, the directory is unproven: reading or cleaning it could act on a planted one.
    if (!this.registered) return 1;
    let names: string[];
    try {
      checkOwnDirectory(this.dir);
      names = readdirSync(this.dir);
    } catch {
      return 1;
    }
    let alive = 0;
    for (const name of names) {
      const pid = Number(name);
      if (!Number.isInteger(pid) || pid <= 0) continue;
      if (pid === process.pid || running(pid)) alive++;
      // Unlinking removes a name, never what a symlink points to.
      else rmSync(path.join(this.dir, name), { force: true });
    }
    return Math.max(1, alive);
  }
}

function refuse(dir: string, why: string, cause?: unknown): EdrError {
  return new EdrError('EDR_DETECTOR_PEERS_DIR', `detector process directory ${dir} ${why}`, {
    cause,
    details: { file: dir },
  });
}

/** A real directory (not a symlink), owned by this user, that nobody else can write into. */
function checkOwnDirectory(dir: string): void {
  let st: ReturnType<typeof lstatSync>;
  try {
    st = lstatSync(dir);
  } catch (err) {
    throw refuse(dir, 'cannot be read', err);
  }
  if (st.isSymbolicLink()) throw refuse(dir, 'is a symlink; refusing to follow it');
  if (!st.isDirectory()) throw refuse(dir, 'is not a directory');
  if (uid >= 0 && st.uid !== uid) throw refuse(dir, `belongs to uid ${st.uid}, not to this process's ${uid}`);
  if ((st.mode & 0o022) !== 0)
    throw refuse(dir, `is writable by others (mode ${(st.mode & 0o777).toString(8)}); it must be 0700`);
}

const CREATE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

function createPidFile(file: string): void {
  for (let attempt = 0; ; attempt++) {
    try {
      closeSync(openSync(file, CREATE, 0o600));
      return;
    } catch (err) {
      // Left by an earlier process with this pid (or planted): remove the name, whatever it points to, once.
      if ((err as NodeJS.ErrnoException).code === 'EEXIST' && attempt === 0) {
        try {
          unlinkSync(file);
        } catch (unlinkErr) {
          throw refuse(path.dirname(file), `holds ${file}, which cannot be removed`, unlinkErr);
        }
        continue;
      }
      throw refuse(path.dirname(file), `cannot take the pid file ${file}`, err);
    }
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
