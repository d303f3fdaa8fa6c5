/**
 * Container id from a cgroup v2 path. Each runtime names the cgroup of a container after its 64-hex id:
 *
 *   docker (systemd driver)    /system.slice/docker-<id>.scope
 *   docker (cgroupfs driver)   /docker/<id>
 *   containerd (CRI, systemd)  /kubepods.slice/.../cri-containerd-<id>.scope
 *   CRI-O                      /kubepods.slice/.../crio-<id>.scope
 *   podman                     /machine.slice/libpod-<id>.scope, /libpod_parent/libpod-<id>
 *   kubelet (cgroupfs driver)  /kubepods/burstable/pod<uid>/<id>
 *   nerdctl / containerd       /system.slice/nerdctl-<id>.scope, /<namespace>/<id>
 *
 * The conmon cgroups of podman and CRI-O (`libpod-conmon-<id>`, `crio-conmon-<id>`) hold the monitor, not the
 * container: not a container.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

const SCOPED = /^(?:docker|cri-containerd|crio|libpod|nerdctl)-([0-9a-f]{64})(?:\.scope)?$/;
const BARE = /^[0-9a-f]{64}$/;

/** The container id in a cgroup path, or null on the host. The innermost container wins (nested runtimes). */
export function containerIdFromCgroup(cgroupPath: string): string | null {
  const parts = cgroupPath.split('/');
  for (let i = parts.length - 1; i >= 0; i--) {
    const part = parts[i]!;
    const scoped = SCOPED.exec(part);
    if (scoped) return scoped[1]!;
    if (BARE.test(part)) return part;
  }
  return null;
}

/** The cgroup v2 path in the text of /proc/PID/cgroup (`0::/path`), or null. */
export function cgroupV2Path(procCgroup: string): string | null {
  for (const line of procCgroup.split('\n')) if (line.startsWith('0::')) return line.slice(3);
  return null;
}

/** A container id in the cgroup v1 lines of /proc/PID/cgroup (`N:controllers:/path`), or null. */
export function containerIdFromV1(procCgroup: string): string | null {
  for (const line of procCgroup.split('\n')) {
    if (line === '' || line.startsWith('0::')) continue;
    const id = containerIdFromCgroup(line.slice(line.indexOf(':', line.indexOf(':') + 1) + 1));
    if (id !== null) return id;
  }
  return null;
}

/** Where the cgroup v1 hierarchies are mounted (the pids one first: every runtime puts containers there). */
export function cgroup1Mounts(mounts: string): string[] {
  const found: string[] = [];
  for (const line of mounts.split('\n')) {
    const [, where, type, options] = line.split(' ');
    if (type !== 'cgroup' || !where) continue;
    if (options?.split(',').includes('pids')) found.unshift(where);
    else found.push(where);
  }
  return found;
}

const RUNTIME_DIRS = new Set([
  'docker',
  'kubepods',
  'kubepods.slice',
  'libpod_parent',
  'machine.slice',
  'containerd',
]);

/** Does this v1 hierarchy hold container cgroups now (a runtime's top-level directory, or a scope of one)? */
export function v1HasContainers(listDir: (dir: string) => string[], root: string): boolean {
  const top = listDir(root);
  if (top.some((d) => RUNTIME_DIRS.has(d))) return true;
  return top.includes('system.slice') && listDir(`${root}/system.slice`).some((d) => SCOPED.test(d));
}

/** Where cgroup v2 is mounted: /sys/fs/cgroup (unified), /sys/fs/cgroup/unified (hybrid), from /proc/self/mounts. */
export function cgroup2Mount(mounts: string): string | null {
  for (const line of mounts.split('\n')) {
    const [, where, type] = line.split(' ');
    if (type === 'cgroup2' && where) return where.replace(/\\040/g, ' ');
  }
  return null;
}

/**
 * Resolves a kernel event's cgroup id (cgroup v2) to a container id. The cgroup id is the inode number of the
 * cgroup's directory: the first time an id is met, /proc/PID/cgroup gives its path when the process is still
 * alive; otherwise the cgroup tree is walked (at most once a second) to map directory inodes to paths. Results
 * are cached per cgroup id, bounded.
 *
 * Hybrid hosts (cgroup v1 controllers beside an unused v2 tree) leave every process in the v2 root: there the id
 * says nothing, so while a runtime keeps containers in the v1 tree, the v1 lines of /proc/PID/cgroup are read for
 * each exec (uncached; a process already gone is reported without a container id).
 */
export class ContainerIds {
  readonly #cache = new Map<bigint, string | null>();
  #scannedAt = Number.NEGATIVE_INFINITY;
  #byInode = new Map<bigint, string>();
  readonly #root: string | null;
  #rootIno: bigint | undefined;
  readonly #v1Root: string | undefined;
  #v1CheckedAt = Number.NEGATIVE_INFINITY;
  #v1Active = false;

  constructor(
    private readonly procDir = '/proc',
    cgroupRoot?: string,
    private readonly maxEntries = 4096,
  ) {
    let mounts = '';
    try {
      mounts = readFileSync(path.join(procDir, 'self', 'mounts'), 'utf8');
    } catch {
      // no /proc: nothing resolves
    }
    this.#root = cgroupRoot ?? cgroup2Mount(mounts);
    this.#v1Root = cgroup1Mounts(mounts)[0];
    try {
      if (this.#root !== null) this.#rootIno = statSync(this.#root, { bigint: true }).ino;
    } catch {
      // no cgroup v2 tree: ids cannot be resolved
    }
  }

  lookup(cgroupId: bigint, pid: number): string | null {
    const cached = this.#cache.get(cgroupId);
    if (cached !== undefined) return cached;
    if (cgroupId === this.#rootIno) return this.#fromV1(pid);
    const found = this.#resolve(cgroupId, pid);
    if (found === undefined) return null; // unknown yet: do not cache, a later scan may find it
    if (this.#cache.size >= this.maxEntries) this.#cache.delete(this.#cache.keys().next().value!);
    this.#cache.set(cgroupId, found);
    return found;
  }

  #fromV1(pid: number): string | null {
    // Reading /proc/PID/cgroup is a file read per exec: done only while a runtime has containers in v1, checked
    // every 5 s.
    if (this.#v1Root === undefined) return null;
    if (Date.now() - this.#v1CheckedAt > 5000) {
      this.#v1CheckedAt = Date.now();
      this.#v1Active = v1HasContainers((d) => {
        try {
          return readdirSync(d);
        } catch {
          return [];
        }
      }, this.#v1Root);
    }
    if (!this.#v1Active) return null;
    try {
      return containerIdFromV1(readFileSync(path.join(this.procDir, String(pid), 'cgroup'), 'utf8'));
    } catch {
      return null;
    }
  }

  /** undefined: the cgroup's path could not be found. */
  #resolve(cgroupId: bigint, pid: number): string | null | undefined {
    if (this.#root === null) return null;
    try {
      const p = cgroupV2Path(readFileSync(path.join(this.procDir, String(pid), 'cgroup'), 'utf8'));
      // The process may have moved (or the pid been reused) since the event: trust the path only if its inode
      // is the event's cgroup id.
      if (p !== null && statSync(path.join(this.#root, p), { bigint: true }).ino === cgroupId) {
        return containerIdFromCgroup(p);
      }
    } catch {
      // gone already (short-lived process): fall back to the tree
    }
    let p = this.#byInode.get(cgroupId);
    if (p === undefined && Date.now() - this.#scannedAt >= 1000) {
      this.#scan(this.#root);
      p = this.#byInode.get(cgroupId);
    }
    return p === undefined ? undefined : containerIdFromCgroup(p);
  }

  #scan(root: string): void {
    this.#scannedAt = Date.now();
    const byInode = new Map<bigint, string>();
    const walk = (dir: string, rel: string, depth: number): void => {
      if (depth > 12) return;
      let entries: import('node:fs').Dirent[];
      try {
        entries = readdirSync(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        if (!e.isDirectory()) continue;
        const full = path.join(dir, e.name);
        const relPath = `${rel}/${e.name}`;
        try {
          byInode.set(statSync(full, { bigint: true }).ino, relPath);
        } catch {
          continue;
        }
        walk(full, relPath, depth + 1);
      }
    };
    walk(root, '', 0);
    this.#byInode = byInode;
  }
}
