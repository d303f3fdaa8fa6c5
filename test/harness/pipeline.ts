/**
 * The whole pipeline as a fleet runs it, for the failover tests: `edr topics create` as the operator, then
 * `edr collector` (real eBPF), two `edr detector` workers and `edr sinks` (a file sink), each a process of its own
 * with its config, on the brokers given. While commands run on this host (each with a unique argv; some match the
 * run's rule), the test's `fault` breaks the brokers; then everything stops cleanly and the run is reconciled:
 * every command's exec on the audit topic, exactly one alert line per matching command in the sink's files.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import {
  appendFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import YAML from 'yaml';
import { kafkaConfigSchema } from '../../infra/kafka/config.js';
import { KafkaTransport } from '../../infra/kafka/transport.js';
import { createLogger } from '../../infra/log.js';
import { repoRoot } from '../../infra/paths.js';
import { projectCodec } from '../../schemas/codec.js';
import { topics } from '../../schemas/topics.js';
import { containsRule } from './detector.js';
import { edr } from './edr-cli.js';
import { unique, waitFor } from './names.js';

const cli = path.join(repoRoot, 'dist', 'cli', 'edr.js');

/** `edr SUBCOMMAND --config FILE` as a child process, its log kept in FILE.log and in memory. */
export class EdrProcess {
  readonly child: ChildProcess;
  log = '';
  readonly exited: Promise<number | null>;

  constructor(
    readonly subcommand: string,
    readonly configFile: string,
  ) {
    this.child = spawn(process.execPath, [cli, subcommand, '--config', configFile], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, EDR_LOG_LEVEL: 'info' },
    });
    this.child.stderr!.on('data', (d: Buffer) => {
      appendFileSync(`${configFile}.log`, d);
      this.log += d.toString('utf8');
      if (this.log.length > 2_000_000) this.log = this.log.slice(-1_000_000);
    });
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async signal(sig: NodeJS.Signals): Promise<number | null> {
    if (this.running) this.child.kill(sig);
    return this.exited;
  }

  tail(chars = 3000): string {
    return `--- ${this.subcommand} (${this.configFile}.log)\n${this.log.slice(-chars)}`;
  }
}

export interface PipelineRun {
  /** Commands run, and of those, the ones the rule matches. */
  execs: number;
  matching: number;
  /** Commands with their exec on the audit topic, and extra copies of one seen there. */
  audited: number;
  auditDuplicates: number;
  /** Alert lines of this run in the file sink, and lines beyond the first for one command. */
  alerts: number;
  duplicates: number;
  /** Commands without their exec on the audit topic, and matching ones without an alert line. */
  lostExecs: string[];
  lostAlerts: string[];
  /** Alert lines for commands the rule does not match. */
  unexpected: string[];
  exitCodes: Record<string, number | null>;
}

export interface PipelineFault {
  brokers: string[];
  /** Waits until the run's alerts reach the sink's file (progress after the fault). */
  alertsFlowing(what: string, timeoutMs?: number): Promise<void>;
  log(line: string): void;
}

export interface PipelineOptions {
  /** Names the run in its printed counts. */
  label: string;
  dir: string;
  brokers: string[];
  /** Replication of the topics `edr topics create` makes (3 gives raw, audit and alerts min ISR 2). */
  replication: number;
  /** Breaks the brokers while commands run; resolves when they are all back. */
  fault: (ctx: PipelineFault) => Promise<void>;
  log?: (line: string) => void;
}

/** Runs the pipeline through `fault`, stops it, reads back what it delivered, prints the counts and checks them. */
export async function runPipeline(opts: PipelineOptions): Promise<PipelineRun> {
  const started = Date.now();
  const run = await pipelineRun(opts);
  assertReconciled(run, `${opts.label} (pipeline ${((Date.now() - started) / 1000).toFixed(0)} s)`);
  return run;
}

async function pipelineRun(opts: PipelineOptions): Promise<PipelineRun> {
  const log = opts.log ?? ((line: string) => process.stderr.write(`# ${line}\n`));
  const { dir, brokers } = opts;
  const marker = `edr-failover-${process.pid}-${Date.now().toString(36)}`;
  const needle = `${marker}-hit`;
  mkdirSync(path.join(dir, 'rules'), { recursive: true });
  writeFileSync(
    path.join(dir, 'rules', 'marker.yml'),
    containsRule('5d3c0e0a-0000-4000-8000-00000000f001', needle, 'Failover marker'),
  );

  // The operator's step: every topic of the table, replicated as asked.
  const created = edr(['topics', 'create', '--replication', String(opts.replication)], {
    EDR_KAFKA_BROKERS: brokers.join(','),
  });
  if (created.code !== 0) throw new Error(`edr topics create failed:\n${created.out}`);

  const kafka = (clientId: string) => ({ brokers, clientId, sessionTimeoutMs: 6000 });
  const config = (name: string, value: unknown) => {
    const file = path.join(dir, `${name}.yaml`);
    writeFileSync(file, YAML.stringify(value));
    return file;
  };
  const out = path.join(dir, 'alerts');
  const procs: EdrProcess[] = [];
  // Also on a failure: a command loop left running keeps the test process alive after the test.
  let stopCommands = async () => {};
  const start = (name: string, sub: string, value: unknown) => {
    const p = new EdrProcess(sub, config(name, value));
    procs.push(p);
    return p;
  };
  try {
    const collector = start('collector', 'collector', {
      kafka: kafka('edr-failover-collector'),
      source: { type: 'ebpf', pollTimeoutMs: 20 },
      spool: { dir: path.join(dir, 'spool') },
    });
    const detectors = ['a', 'b'].map((w) =>
      start(`detector-${w}`, 'detector', {
        kafka: kafka(`edr-failover-detector-${w}`),
        detectorId: `failover-${w}`,
        rules: { dir: path.join(dir, 'rules'), pollMs: 500, topic: false },
      }),
    );
    const sinks = start('sinks', 'sinks', {
      kafka: kafka('edr-failover-sinks'),
      stateDir: path.join(dir, 'sinks-state'),
      sinks: { archive: { type: 'file', directory: out, fsync: 'always' } },
      routes: [{ to: ['archive'] }],
    });
    const logs = () => procs.map((p) => p.tail()).join('\n');
    await waitFor(
      `the collector to connect\n${logs()}`,
      () => collector.log.includes('connected to the broker'),
      60_000,
    );
    for (const d of detectors) {
      await waitFor(`detector started\n${logs()}`, () => d.log.includes('detector started'), 60_000);
    }

    // One command after another, each with a unique argv; every third matches the rule.
    const ran: Array<{ tag: string; hit: boolean }> = [];
    let generating = true;
    const generator = (async () => {
      for (let n = 0; generating; n++) {
        const tag = `${marker}-${n}`;
        const hit = n % 3 === 0;
        await new Promise<void>((resolve, reject) => {
          const c = spawn('/bin/true', [tag, hit ? needle : 'benign'], { stdio: 'ignore' });
          c.on('error', reject);
          c.on('exit', () => resolve());
        });
        ran.push({ tag, hit });
        await sleep(50);
      }
    })();
    stopCommands = async () => {
      generating = false;
      await generator;
    };

    const alertLines = () => readAlertLines(out, marker);
    const alertsFlowing = async (what: string, timeoutMs = 120_000) => {
      const before = alertLines().length;
      await waitFor(`${what}\n${logs()}`, () => alertLines().length > before, timeoutMs);
    };
    await alertsFlowing('the first alerts in the file sink');
    await opts.fault({ brokers, alertsFlowing, log });
    await alertsFlowing('alerts after the fault');
    await sleep(2000);
    generating = false;
    await generator;

    const hits = ran.filter((r) => r.hit).map((r) => r.tag);
    // Before stopping: each matching command's alert reached the file (or the wait gives up, and the count says).
    await waitFor(
      'an alert for every matching command',
      () => {
        const got = new Set(alertLines().map((l) => l.tag));
        return hits.every((t) => got.has(t));
      },
      180_000,
    ).catch((err: Error) => log(`${err.message}`));

    // Clean stop: the collector first (it flushes and writes STOPPED), then the detectors, then the sink.
    const exitCodes: Record<string, number | null> = {};
    exitCodes['collector'] = await collector.signal('SIGTERM');
    await sleep(3000);
    for (const [i, d] of detectors.entries()) exitCodes[`detector-${i}`] = await d.signal('SIGTERM');
    exitCodes['sinks'] = await sinks.signal('SIGTERM');

    const audit = await readAuditExecs(brokers, marker, ran.length);
    const lines = alertLines();
    const perTag = new Map<string, number>();
    for (const l of lines) perTag.set(l.tag, (perTag.get(l.tag) ?? 0) + 1);
    const hitSet = new Set(hits);
    return {
      execs: ran.length,
      matching: hits.length,
      audited: ran.filter((r) => audit.has(r.tag)).length,
      auditDuplicates: [...audit.values()].reduce((n, c) => n + c - 1, 0),
      alerts: lines.length,
      duplicates: [...perTag.values()].reduce((n, c) => n + c - 1, 0),
      lostExecs: ran.filter((r) => !audit.has(r.tag)).map((r) => r.tag),
      lostAlerts: hits.filter((t) => !perTag.has(t)),
      unexpected: [...perTag.keys()].filter((t) => !hitSet.has(t)),
      exitCodes,
    };
  } finally {
    await stopCommands();
    await Promise.all(procs.map((p) => p.signal('SIGKILL')));
  }
}

/** The run's alert lines in the file sink's files (current and rotated), by the command's tag. */
function readAlertLines(dir: string, marker: string): Array<{ tag: string; alertId: string }> {
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.startsWith('alerts.jsonl'));
  } catch {
    return [];
  }
  const out: Array<{ tag: string; alertId: string }> = [];
  for (const name of names) {
    let text: string;
    try {
      text = readFileSync(path.join(dir, name), 'utf8');
    } catch {
      continue; // rotated away between the listing and the read
    }
    for (const line of text.split('\n')) {
      if (line === '') continue;
      let a: { alertId: string; event: { argv: string[] } };
      try {
        a = JSON.parse(line);
      } catch {
        continue; // a line being written
      }
      const tag = a.event.argv[1];
      if (tag?.startsWith(`${marker}-`)) out.push({ tag, alertId: a.alertId });
    }
  }
  return out;
}

/** The run's execs on the audit topic (read from the start by a group of its own), by tag, with their counts. */
async function readAuditExecs(
  brokers: string[],
  marker: string,
  expected: number,
): Promise<Map<string, number>> {
  const codec = projectCodec();
  const seen = new Map<string, number>();
  const t = new KafkaTransport(
    kafkaConfigSchema.parse({ brokers, clientId: 'edr-failover-audit-reader' }),
    createLogger({ component: 'audit-reader' }, 'error'),
  );
  const group = unique('edr-failover-audit');
  try {
    const c = await t.consume({
      groupId: group,
      topics: [topics.audit.name],
      start: 'earliest',
      handler: async (batch) => {
        for (const r of batch.records) {
          const d = codec.decode(r.value ?? Buffer.alloc(0));
          if (d.name !== 'dev.edr.v1.ExecveEvent') continue;
          const tag = d.value.argv[1];
          if (tag?.startsWith(`${marker}-`)) seen.set(tag, (seen.get(tag) ?? 0) + 1);
        }
      },
    });
    // Up to the end of the topic as it is now (nothing writes it any more), or every command seen.
    await waitFor(
      'the audit topic read to its end',
      async () => seen.size >= expected || (await t.lag(group, topics.audit.name)).every((l) => l.lag === 0),
      60_000,
    ).catch(() => {});
    await c.stop();
  } finally {
    await t.close();
  }
  return seen;
}

/** Prints the run's counts and fails on any loss, duplicate or stray alert. */
function assertReconciled(run: PipelineRun, label: string): void {
  process.stderr.write(
    `# ${label}: execs ${run.execs}, audit ${run.audited}, alerts ${run.alerts} of ${run.matching} matching, ` +
      `duplicates ${run.duplicates}, lost ${run.lostExecs.length + run.lostAlerts.length} ` +
      `(audit duplicates ${run.auditDuplicates}; exits ${JSON.stringify(run.exitCodes)})\n`,
  );
  assert.ok(run.execs >= 100, `only ${run.execs} commands ran`);
  assert.deepEqual(run.lostExecs, [], 'every exec is on the audit topic');
  assert.deepEqual(run.lostAlerts, [], 'every matching exec has an alert');
  assert.equal(run.duplicates, 0, 'one alert line per matching exec');
  assert.deepEqual(run.unexpected, [], 'no alert for a command the rule does not match');
  assert.equal(run.alerts, run.matching);
  assert.equal(run.audited, run.execs);
  for (const [name, code] of Object.entries(run.exitCodes)) assert.equal(code, 0, `${name} exit code`);
}

/**
 * A failover test: needs root for eBPF (skipped when not root, failed when EDR_E2E_REQUIRED=1). `setup` starts the
 * brokers in a temporary folder and says how to break them; the pipeline then runs through the fault and is
 * reconciled. The folder is kept when the test fails (the services' logs are in it, FILE.yaml.log); `cleanup`
 * functions (the brokers' stops) run whatever happened.
 */
export function failoverTest(
  label: string,
  name: string,
  setup: (
    dir: string,
    cleanup: (fn: () => Promise<unknown>) => void,
  ) => Promise<Pick<PipelineOptions, 'brokers' | 'replication' | 'fault'>>,
): void {
  const required = process.env['EDR_E2E_REQUIRED'] === '1';
  const isRoot = process.getuid?.() === 0;
  it(name, {
    skip: isRoot || required ? false : 'needs root for eBPF (EDR_E2E_REQUIRED=1 makes this a failure)',
  }, async () => {
    assert.ok(isRoot, 'EDR_E2E_REQUIRED=1 but this test is not running as root: the eBPF source needs root');
    const started = Date.now();
    const dir = mkdtempSync(path.join(tmpdir(), `edr-failover-${label.replace(/\W+/g, '-')}-`));
    const cleanups: Array<() => Promise<unknown>> = [];
    let passed = false;
    try {
      const brokers = await setup(dir, (fn) => cleanups.push(fn));
      await runPipeline({ label, dir, ...brokers });
      passed = true;
    } finally {
      for (const fn of cleanups.reverse()) await fn().catch(() => {});
      process.stderr.write(`# ${label}: ${((Date.now() - started) / 1000).toFixed(0)} s in all\n`);
      if (passed) rmSync(dir, { recursive: true, force: true });
      else process.stderr.write(`# kept ${dir} for its logs\n`);
    }
  });
}
