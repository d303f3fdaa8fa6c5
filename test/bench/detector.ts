/**
 * The detector pipeline through a real broker: events/s for consume → decode → evaluate → produce → commit
 * (`edr detector` worker processes, transactions, SigmaHQ's linux process_creation rules when the corpus is
 * there), against the ceiling: the same client's plain consume rate (ack-after-success commits, no decoding) of
 * the same topic in the same run, with 1 and 2 worker processes. Rates are taken from the group's committed
 * offsets, from the first commit to the last, so process start-up and group joins do not count.
 *
 * Run: npm run bench detector. Environment, for experiments: EDR_BENCH_DETECTOR_EVENTS (default 1,000,000),
 * EDR_BENCH_DETECTOR_ROUNDS (2), EDR_BENCH_DETECTOR_WORKERS (worker counts, "1,2"), EDR_BENCH_DETECTOR_RULES (a
 * rule directory), EDR_BENCH_DETECTOR_{BATCH,MEMBERS,CONCURRENCY,THREADS,MIN_LEVEL} (the detector's settings),
 * EDR_BENCH_PROFILE=DIR (CPU profiles of the workers), EDR_BENCH_NODE_FLAGS (Node flags for every child),
 * EDR_BENCH_CHILD_STDOUT=1 (the children's stdout, e.g. for --trace-gc).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { detectorConfigSchema } from '../../detector/config.js';
import { startBroker } from '../../infra/kafka/broker.js';
import { kafkaConfigSchema } from '../../infra/kafka/config.js';
import { KafkaTransport } from '../../infra/kafka/transport.js';
import { createLogger } from '../../infra/log.js';
import { repoRoot } from '../../infra/paths.js';
import type { OutRecord } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import { generateEvents } from '../fixtures/events.js';
import { testTopics, writeConfig } from '../harness/detector.js';

const N = Number(process.env['EDR_BENCH_DETECTOR_EVENTS'] ?? 1_000_000);
const PARTITIONS = 6;
const here = fileURLToPath(import.meta.url);
const quiet = createLogger({ component: 'bench' }, 'error');

const OVERRIDES = {
  maxBatchRecords: 'EDR_BENCH_DETECTOR_BATCH',
  membersPerWorker: 'EDR_BENCH_DETECTOR_MEMBERS',
  partitionConcurrency: 'EDR_BENCH_DETECTOR_CONCURRENCY',
  evaluationThreads: 'EDR_BENCH_DETECTOR_THREADS',
} as const;
const DEFAULTS = detectorConfigSchema.parse({
  kafka: { brokers: ['localhost:9092'] },
  rules: { topic: false },
});

/** A detector setting: its default, or the bench's environment override for experiments. */
function setting<K extends keyof typeof OVERRIDES>(key: K): (typeof DEFAULTS)[K] {
  const v = process.env[OVERRIDES[key]];
  if (v === undefined) return DEFAULTS[key];
  return (v === 'auto' ? v : Number(v)) as (typeof DEFAULTS)[K];
}

function transport(brokers: string[], clientId: string): KafkaTransport {
  return new KafkaTransport(kafkaConfigSchema.parse({ brokers, clientId }), quiet);
}

/** Child role: one plain consumer group member that only touches each record (the ceiling). */
async function consumeRole(brokers: string[], topic: string, group: string, decode: boolean): Promise<void> {
  const t = transport(brokers, 'bench-consume');
  const codec = projectCodec();
  let bytes = 0;
  const c = await t.consume({
    groupId: group,
    topics: [topic],
    // The detector's batch and concurrency settings, so both read the topic in the same sized fetches.
    maxBatchRecords: setting('maxBatchRecords'),
    partitionConcurrency: setting('partitionConcurrency'),
    handler: async (batch) => {
      for (const r of batch.records) {
        bytes += r.value?.length ?? 0;
        if (decode && r.value !== null) {
          // What the detector decodes of a record: a view, and the fields process_creation rules read.
          const d = codec.view(r.value);
          if (d.name === 'dev.edr.v1.ExecveEvent') {
            const e = d.value;
            bytes += e.image.length + e.argv.join(' ').length + e.cwd.length;
            bytes +=
              (e.userName?.length ?? 0) + (e.parentImage?.length ?? 0) + (e.parentCommandLine?.length ?? 0);
          }
        }
      }
    },
  });
  await new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
  await c.stop();
  await t.close();
  if (bytes < 0) process.stdout.write('');
}

function spawnChild(args: string[]): ChildProcess {
  // EDR_BENCH_NODE_FLAGS: Node/V8 flags for every child (ceiling and pipeline alike), for experiments.
  const flags = (process.env['EDR_BENCH_NODE_FLAGS'] ?? '').split(' ').filter((f) => f !== '');
  return spawn(process.execPath, [...flags, ...args], {
    stdio: ['ignore', process.env['EDR_BENCH_CHILD_STDOUT'] ? 'inherit' : 'ignore', 'inherit'],
    env: { ...process.env, EDR_LOG_LEVEL: 'error' },
  });
}

async function stopChildren(children: ChildProcess[]): Promise<void> {
  await Promise.all(
    children.map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.exitCode !== null || c.signalCode !== null) return resolve();
          c.once('exit', () => resolve());
          c.kill('SIGTERM');
          setTimeout(() => c.kill('SIGKILL'), 15_000).unref();
        }),
    ),
  );
}

/** CPU seconds (user + system) a process has used so far, from /proc; 0 once it is gone. */
function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ is 100 on Linux)
  } catch {
    return 0;
  }
}

interface Rate {
  eventsPerS: number;
  /** CPU microseconds per event over the measured span: the group's processes, and the broker. */
  clientUs: number;
  brokerUs: number;
}

/** Events/s of a group over `topic`, from its first commit until everything is committed. */
async function measure(
  t: KafkaTransport,
  group: string,
  topic: string,
  total: number,
  children: ChildProcess[],
  brokerPid: number,
): Promise<Rate> {
  const cpu = () => ({
    client: children.reduce((a, c) => a + cpuSeconds(c.pid), 0),
    broker: cpuSeconds(brokerPid),
  });
  let first: { ms: number; done: number; cpu: ReturnType<typeof cpu> } | undefined;
  const deadline = Date.now() + 600_000;
  for (;;) {
    const dead = children.find((c) => c.exitCode !== null || c.signalCode !== null);
    if (dead !== undefined)
      throw new Error(`${group}: a child process exited (${dead.exitCode ?? dead.signalCode})`);
    const lag = await t.lag(group, topic).catch(() => undefined); // group coordinator still loading
    if (lag === undefined) {
      await new Promise((r) => setTimeout(r, 200));
      continue;
    }
    const done = lag.reduce((a, l) => a + Math.max(0, l.committed), 0);
    const now = Date.now();
    if (first === undefined && done > 0) first = { ms: now, done, cpu: cpu() };
    if (done >= total && first !== undefined) {
      const events = Math.max(1, done - first.done);
      const end = cpu();
      return {
        eventsPerS: (events / Math.max(1, now - first.ms)) * 1000,
        clientUs: ((end.client - first.cpu.client) / events) * 1e6,
        brokerUs: ((end.broker - first.cpu.broker) / events) * 1e6,
      };
    }
    if (now > deadline) throw new Error(`${group}: only ${done}/${total} after 10 minutes`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function fmt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      role: { type: 'string' },
      brokers: { type: 'string' },
      topic: { type: 'string' },
      group: { type: 'string' },
      decode: { type: 'boolean' },
    },
  });
  if (values.role === 'consume') {
    await consumeRole(values.brokers!.split(','), values.topic!, values.group!, values.decode === true);
    return;
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'edr-bench-detector-'));
  const broker = await startBroker({ dir: path.join(dir, 'kafka') });
  try {
    const t = transport(broker.brokers, 'bench');
    const topic = 'bench.raw';
    await t.createTopics([{ name: topic, partitions: PARTITIONS }]);
    const codec = projectCodec();
    const p = await t.producer();
    let chunk: OutRecord[] = [];
    // Generated in slices, so a large N does not hold every event object at once.
    for (let start = 0; start < N; start += 50_000) {
      const events = generateEvents(Math.min(50_000, N - start), 7 + start);
      for (let j = 0; j < events.length; j++) {
        const i = start + j;
        const e = { ...events[j]!, hostId: `bench-host-${i % 256}`, seq: BigInt(i) };
        chunk.push({ topic, key: e.hostId, value: codec.encode('dev.edr.v1.ExecveEvent', e) });
        if (chunk.length === 5000) {
          await p.publish(chunk);
          chunk = [];
        }
      }
    }
    await p.publish(chunk);
    await p.close();
    const corpus = path.resolve(repoRoot, '..', 'shared', 'sigma', 'rules', 'linux', 'process_creation');
    let rulesDir = process.env['EDR_BENCH_DETECTOR_RULES'] ?? corpus;
    if (!existsSync(rulesDir)) {
      rulesDir = path.join(dir, 'rules');
      mkdirSync(rulesDir);
      writeFileSync(
        path.join(rulesDir, 'rule.yml'),
        'title: bench\nlogsource: {product: linux, category: process_creation}\n' +
          "detection: {selection: {CommandLine|contains: 'curl'}, condition: selection}\n",
      );
    }
    process.stdout.write(
      `detector bench: ${fmt(N)} events over ${PARTITIONS} partitions; rules ${rulesDir === corpus ? 'SigmaHQ linux/process_creation' : rulesDir}\n`,
    );
    const cli = path.join(repoRoot, 'dist', 'cli', 'edr.js');
    const counts = (process.env['EDR_BENCH_DETECTOR_WORKERS'] ?? '1,2').split(',').map(Number);
    const rounds = Number(process.env['EDR_BENCH_DETECTOR_ROUNDS'] ?? 2);
    let run = 0;
    /** The plain consumers (the ceiling), or the same decoding every record: a fresh group reads the topic. */
    const consumers = async (workers: number, decode: boolean): Promise<Rate> => {
      const group = `bench-${decode ? 'decode' : 'ceiling'}-${workers}-${run++}`;
      const kids = Array.from({ length: workers }, () =>
        spawnChild([
          here,
          '--role',
          'consume',
          ...(decode ? ['--decode'] : []),
          '--brokers',
          broker.brokers.join(','),
          '--topic',
          topic,
          '--group',
          group,
        ]),
      );
      try {
        return await measure(t, group, topic, N, kids, broker.pid);
      } finally {
        await stopChildren(kids);
      }
    };
    /** `edr detector` processes with their default settings (env overrides for experiments). */
    const detectors = async (workers: number): Promise<{ rate: Rate; alerts: number }> => {
      const id = run++;
      const group = `bench-detector-${workers}-${id}`;
      const topics = { ...testTopics(`bench${workers}-${id}`), input: topic };
      const kids = Array.from({ length: workers }, (_, i) => {
        const file = writeConfig(dir, `w${id}-${i}`, {
          kafka: { brokers: broker.brokers, clientId: `bench-w${i}` },
          detectorId: `bench-w${i}`,
          groupId: group,
          topics,
          rules: {
            dir: rulesDir,
            topic: false,
            // EDR_BENCH_DETECTOR_MIN_LEVEL: the alert level (informational alerts on every match).
            ...(process.env['EDR_BENCH_DETECTOR_MIN_LEVEL']
              ? { minLevel: process.env['EDR_BENCH_DETECTOR_MIN_LEVEL'] }
              : {}),
          },
          ...Object.fromEntries(Object.keys(OVERRIDES).map((k) => [k, setting(k as keyof typeof OVERRIDES)])),
        });
        // EDR_BENCH_PROFILE=DIR writes CPU profiles of the workers (each thread) there.
        const prof = process.env['EDR_BENCH_PROFILE'];
        return spawnChild([
          ...(prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : []),
          cli,
          'detector',
          '--config',
          file,
        ]);
      });
      try {
        const rate = await measure(t, group, topic, N, kids, broker.pid);
        return { rate, alerts: (await t.endOffsets(topics.alerts)).reduce((a, e) => a + e.offset, 0) };
      } finally {
        await stopChildren(kids);
      }
    };
    const line = (what: string, r: Rate, base: Rate) =>
      `  ${what.padEnd(30)} ${fmt(r.eventsPerS).padStart(8)} events/s  ratio ${(r.eventsPerS / base.eventsPerS).toFixed(2)}  ` +
      `cpu/event: clients ${r.clientUs.toFixed(1)} µs, broker ${r.brokerUs.toFixed(1)} µs\n`;
    for (const workers of counts) {
      process.stdout.write(`${workers} worker${workers > 1 ? 's' : ''}:\n`);
      // Rounds alternate ceiling and pipeline so a noisy neighbour weighs on both; the best of each is compared.
      const ceilings: Rate[] = [];
      const pipelines: Rate[] = [];
      for (let r = 0; r < rounds; r++) {
        const ceiling = await consumers(workers, false);
        ceilings.push(ceiling);
        process.stdout.write(line(`round ${r + 1} ceiling (plain consume)`, ceiling, ceiling));
        if (r === 0)
          process.stdout.write(
            line('round 1 consume + decode (rule fields)', await consumers(workers, true), ceiling),
          );
        const { rate, alerts } = await detectors(workers);
        pipelines.push(rate);
        process.stdout.write(
          line(`round ${r + 1} pipeline`, rate, ceiling).replace(
            /\n$/,
            `  (alerts topic: ${fmt(alerts)} offsets, transaction markers and aborted records included)\n`,
          ),
        );
      }
      const best = (rs: Rate[]) => rs.reduce((a, b) => (b.eventsPerS > a.eventsPerS ? b : a));
      const c = best(ceilings);
      const p = best(pipelines);
      process.stdout.write(
        `  best of ${rounds}: pipeline ${fmt(p.eventsPerS)} / ceiling ${fmt(c.eventsPerS)} events/s = ratio ${(p.eventsPerS / c.eventsPerS).toFixed(2)} (target 0.70)\n`,
      );
      // What the CPU the pipeline spends per event (its processes and the broker) allows on this machine's cores.
      const cores = availableParallelism();
      const bound = (cores * 1e6) / (p.clientUs + p.brokerUs);
      process.stdout.write(
        `  cpu bound: ${cores} cores / ${(p.clientUs + p.brokerUs).toFixed(1)} µs per event = ${fmt(bound)} events/s at most = ratio ${(bound / c.eventsPerS).toFixed(2)}\n`,
      );
    }
    await t.close();
  } finally {
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(
      `bench detector failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
