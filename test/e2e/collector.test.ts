/**
 * End to end: `edr collector` with the real eBPF source publishes real commands to the test broker, and they
 * read back from the raw topic with their image, argv (or truncation flag), ppid, parent image, cwd, uid and
 * user name. Needs root and the built addon; skipped when not root unless EDR_E2E_REQUIRED=1 (CI): it fails then.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cgroup2Mount } from '../../collector/enrich/container.js';
import { repoRoot } from '../../infra/paths.js';
import type { Consumption, InRecord } from '../../infra/transport.js';
import { ARGV_MAX_BYTES } from '../../native/index.js';
import { projectCodec } from '../../schemas/codec.js';
import type { CollectorRecord, ExecveEvent } from '../../schemas/types.js';
import { testBrokers, testTransport } from '../harness/broker.js';
import { unique, waitFor } from '../harness/names.js';

const required = process.env.EDR_E2E_REQUIRED === '1';
const isRoot = process.getuid?.() === 0;
const marker = `edr-e2e-collector-${process.pid}-${Date.now().toString(36)}`;

if (!isRoot) {
  it('collector end to end (needs root)', {
    skip: required ? false : 'needs root for eBPF (EDR_E2E_REQUIRED=1 makes this a failure)',
  }, () => {
    assert.fail(
      'EDR_E2E_REQUIRED=1 but this test is not running as root: the collector eBPF source needs root ' +
        '(or CAP_BPF + CAP_PERFMON); run the test suite as root in CI',
    );
  });
}

describe('edr collector (eBPF source → Kafka)', { skip: !isRoot }, () => {
  const codec = projectCodec();
  const raw = unique('edr.e2e.raw');
  const audit = unique('edr.e2e.audit');
  const schemas = unique('edr.e2e.schemas');
  const events: ExecveEvent[] = [];
  const auditEvents: ExecveEvent[] = [];
  const lifecycle: CollectorRecord[] = [];
  const schemaKeys: string[] = [];
  let dir: string;
  let child: ChildProcess;
  let childLog = '';
  let exited: Promise<number | null>;
  let transport: Awaited<ReturnType<typeof testTransport>>;
  let consumption: Consumption | undefined;

  const mine = () => events.filter((e) => e.argv.some((a) => a.includes(marker)));
  const withTag = (tag: string) => () => mine().find((e) => e.argv.includes(`${marker}-${tag}`));

  async function find(what: string, pick: () => ExecveEvent | undefined): Promise<ExecveEvent> {
    await waitFor(
      `${what} on the raw topic (collector log:\n${childLog.slice(-2000)})`,
      () => !!pick(),
      20_000,
    );
    return pick()!;
  }

  before(async () => {
    dir = realpathSync(mkdtempSync(path.join(tmpdir(), 'edr-e2e-collector-')));
    const brokers = await testBrokers();
    const config = path.join(dir, 'collector.yaml');
    writeFileSync(
      config,
      [
        'kafka:',
        `  brokers: [${brokers.map((b) => JSON.stringify(b)).join(', ')}]`,
        '  clientId: edr-e2e-collector',
        'source:',
        '  type: ebpf',
        '  pollTimeoutMs: 20',
        'topics:',
        `  raw: ${raw}`,
        `  audit: ${audit}`,
        `  schemas: ${schemas}`,
        'spool:',
        `  dir: ${path.join(dir, 'spool')}`,
        'publish:',
        '  lossCheckIntervalMs: 200',
        '',
      ].join('\n'),
    );
    transport = await testTransport('edr-e2e-collector-reader');
    // As in a deployment: the operator creates the topics; the collector only writes them.
    await transport.createTopics([raw, audit, schemas].map((name) => ({ name, partitions: 1 })));
    child = spawn(
      process.execPath,
      [path.join(repoRoot, 'dist', 'cli', 'edr.js'), 'collector', '--config', config],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, EDR_LOG_LEVEL: 'info' },
      },
    );
    child.stderr!.on('data', (d: Buffer) => {
      childLog += d.toString();
    });
    exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));

    await waitFor(
      `the collector to start (log:\n${childLog})`,
      () => childLog.includes('connected to the broker'),
      60_000,
    );
    consumption = await transport.consume({
      groupId: unique('edr-e2e-collector'),
      topics: [raw, audit, schemas],
      start: 'earliest',
      handler: async (batch) => {
        for (const r of batch.records) collect(r);
      },
    });
    await waitFor('the STARTED record', () => lifecycle.some((r) => r.kind === 'STARTED'), 30_000);
  });

  function collect(r: InRecord): void {
    if (r.topic === schemas) {
      schemaKeys.push(r.key!.toString());
      return;
    }
    assert.equal(r.key?.toString(), lifecycle[0]?.hostId ?? r.key?.toString());
    const d = codec.decode(r.value!);
    if (r.topic === raw) {
      assert.equal(d.name, 'dev.edr.v1.ExecveEvent');
      events.push(d.value as ExecveEvent);
    } else if (d.name === 'dev.edr.v1.CollectorRecord') lifecycle.push(d.value);
    else if (d.name === 'dev.edr.v1.ExecveEvent') auditEvents.push(d.value);
  }

  after(async () => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    await consumption?.stop();
    await transport?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const nodeImage = realpathSync(process.execPath);
  const ownCommandLine = () =>
    readFileSync('/proc/self/cmdline', 'utf8').replace(/\0$/, '').split('\0').join(' ');

  it('publishes a command with image, argv, ppid, parent image, cwd, uid and user name', async () => {
    const r = spawnSync('/bin/echo', [`${marker}-plain`, 'a b'], { stdio: 'ignore', cwd: dir });
    const ev = await find('exec of /bin/echo', withTag('plain'));
    assert.equal(ev.image, realpathSync('/bin/echo'));
    assert.deepEqual(ev.argv, ['/bin/echo', `${marker}-plain`, 'a b']);
    assert.equal(ev.argvTruncated, false);
    assert.equal(ev.pid, r.pid);
    assert.equal(ev.ppid, process.pid);
    assert.equal(ev.parentImage, nodeImage);
    assert.equal(ev.parentCommandLine, ownCommandLine());
    assert.equal(ev.cwd, dir);
    assert.equal(ev.uid, 0n);
    assert.equal(ev.userName, 'root');
    assert.equal(ev.hostId, lifecycle[0]!.hostId);
    assert.ok(ev.seq > 0n);
    const wall = BigInt(Date.now()) * 1_000_000n;
    assert.ok(ev.timeNs > wall - 120_000_000_000n && ev.timeNs <= wall, `timeNs ${ev.timeNs} vs now ${wall}`);
  });

  it('flags argv longer than the 8 KiB buffer and keeps its full length', async () => {
    const args = [`${marker}-long`];
    for (let i = 0; i < 300; i++) args.push(`argument-${i}-${'x'.repeat(30)}`);
    spawnSync('/bin/true', args, { stdio: 'ignore' });
    const ev = await find('exec with a long argv', withTag('long'));
    const full = ['/bin/true', ...args].reduce((n, a) => n + Buffer.byteLength(a) + 1, 0);
    assert.ok(full > ARGV_MAX_BYTES);
    assert.equal(ev.argvTruncated, true);
    assert.equal(ev.argvBytes, full);
    assert.equal(ev.image, realpathSync('/bin/true'));
    const complete = ev.argv.slice(0, -1);
    assert.deepEqual(complete, ['/bin/true', ...args].slice(0, complete.length));
  });

  it('reports the cwd of a command run in another directory', async () => {
    const sub = path.join(dir, 'other', 'cwd');
    mkdirSync(sub, { recursive: true });
    spawnSync('/bin/true', [`${marker}-cwd`], { stdio: 'ignore', cwd: sub });
    const ev = await find('exec in another cwd', withTag('cwd'));
    assert.equal(ev.cwd, sub);
  });

  it('gives a child of a child its parent shell: ppid, parent image, parent command line, ancestry', async () => {
    const script = `/bin/echo ${marker}-grandchild; exit 3`;
    const sh = spawnSync('/bin/sh', ['-c', script], { stdio: 'ignore', cwd: dir });
    assert.equal(sh.status, 3);
    const ev = await find('exec of the grandchild', withTag('grandchild'));
    assert.equal(ev.ppid, sh.pid);
    assert.equal(ev.image, realpathSync('/bin/echo'));
    assert.equal(ev.parentImage, realpathSync('/bin/sh'));
    assert.equal(ev.parentCommandLine, `/bin/sh -c ${script}`);
    assert.equal(ev.ancestors[0], nodeImage);
    assert.equal(ev.cwd, dir);
  });

  it('captures a process that exits within a millisecond, run as another user', async () => {
    const c = spawn('/bin/true', [`${marker}-short`], { stdio: 'ignore', uid: 65534, gid: 65534 });
    assert.equal(await new Promise((resolve) => c.on('exit', resolve)), 0);
    const ev = await find('exec of a short-lived process', withTag('short'));
    assert.equal(ev.pid, c.pid);
    assert.equal(ev.uid, 65534n);
    assert.equal(ev.userName, spawnSync('id', ['-nu', '65534']).stdout.toString().trim());
    assert.equal(ev.image, realpathSync('/bin/true'));
    assert.equal(ev.parentImage, nodeImage);
  });

  it('gives a process in a container cgroup its container id (a docker-style cgroup made for the test)', async (t) => {
    let mount: string | null = null;
    try {
      mount = cgroup2Mount(readFileSync('/proc/self/mounts', 'utf8'));
    } catch {}
    if (mount === null) {
      t.skip('no cgroup v2 mount');
      return;
    }
    const id = Buffer.from(marker).toString('hex').padEnd(64, '0').slice(0, 64);
    const cg = path.join(mount, `docker-${id}.scope`);
    mkdirSync(cg);
    try {
      // The shell moves itself into the cgroup, then execs: the exec happens inside the "container".
      const r = spawnSync(
        '/bin/sh',
        ['-c', `echo $$ > ${cg}/cgroup.procs && exec /bin/true ${marker}-container`],
        {
          stdio: 'ignore',
        },
      );
      assert.equal(r.status, 0);
      const ev = await find('exec in the container cgroup', withTag('container'));
      assert.equal(ev.containerId, id);
      assert.equal(withTag('plain')()?.containerId, null, 'a host process has none');
    } finally {
      rmdirSync(cg); // empty again: the process exited
    }
  });

  it('published exactly those events, once each, to raw and audit, then STOPPED on SIGTERM', async () => {
    const tags = ['plain', 'long', 'cwd', 'grandchild', 'short', 'container'];
    // The shells' own execs carry the marker in their -c argument.
    const expected = tags.length + 2;
    await waitFor(
      'every marked event on the audit topic',
      () => auditEvents.filter((e) => e.argv.some((a) => a.includes(marker))).length >= expected,
    );
    child.kill('SIGTERM');
    assert.equal(await exited, 0, childLog.slice(-3000));
    await waitFor('the STOPPED record', () => lifecycle.some((r) => r.kind === 'STOPPED'), 20_000);
    const got = mine();
    assert.equal(got.length, expected, got.map((e) => e.argv.join(' ').slice(0, 80)).join('\n'));
    assert.equal(new Set(got.map((e) => e.seq)).size, expected, 'no duplicates');
    for (const tag of tags) assert.equal(got.filter(withTagIn(tag)).length, 1, tag);
    // Per host, in order on the raw topic: seq strictly increasing.
    const seqs = events.map((e) => e.seq);
    assert.deepEqual(
      seqs,
      [...seqs].sort((a, b) => (a < b ? -1 : 1)),
    );
    const stopped = lifecycle.find((r) => r.kind === 'STOPPED')!;
    const started = lifecycle.find((r) => r.kind === 'STARTED')!;
    assert.ok(stopped.lastSeq >= seqs[seqs.length - 1]!);
    assert.ok(started.config?.includes(raw));
    assert.equal(stopped.losses?.kernelRingFull, 0n);
    assert.equal(stopped.losses?.queueDropped, 0n);
    assert.equal(stopped.losses?.spoolDropped, 0n);
    await waitFor('writer schemas on the schemas topic', () => schemaKeys.length >= 3);
    assert.ok(
      schemaKeys.every((k) => /^[0-9a-f]{16}$/.test(k)),
      schemaKeys.join(','),
    );
  });

  const withTagIn = (tag: string) => (e: ExecveEvent) => e.argv.includes(`${marker}-${tag}`);
});
