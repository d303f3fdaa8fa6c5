/**
 * Helpers for the detector's tests and bench: worker processes (so SIGKILL is real), their config files, unique
 * topic sets, a minimal rule, and a read-committed reader of the alerts topic.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import type { WorkerTopics } from '../../detector/worker.js';
import { repoRoot } from '../../infra/paths.js';
import type { Consumption, InRecord, Transport } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import type { Alert } from '../../schemas/types.js';

export interface TestTopics extends WorkerTopics {
  rules: string;
}

export function testTopics(prefix: string): TestTopics {
  return {
    input: `${prefix}.raw`,
    alerts: `${prefix}.alerts`,
    rules: `${prefix}.rules`,
    audit: `${prefix}.audit`,
    deadLetter: `${prefix}.dlq`,
    correlation: `${prefix}.corr`,
    changelog: `${prefix}.state`,
  };
}

export async function createTestTopics(t: Transport, topics: TestTopics, partitions = 6): Promise<void> {
  await t.createTopics([
    { name: topics.input, partitions },
    { name: topics.alerts, partitions: 3 },
    { name: topics.rules, partitions: 1, cleanupPolicy: 'compact', retentionMs: -1 },
    { name: topics.audit, partitions },
    { name: topics.deadLetter, partitions: 1 },
    { name: topics.correlation, partitions },
    { name: topics.changelog, partitions, cleanupPolicy: 'compact', retentionMs: -1 },
  ]);
}

/** A minimal process_creation rule: command lines containing `needle`. */
export function containsRule(id: string, needle: string, title = `rule ${id}`): string {
  return `title: ${title}
id: ${id}
status: test
level: high
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    CommandLine|contains: '${needle}'
  condition: selection
`;
}

export function writeConfig(dir: string, name: string, config: Record<string, unknown>): string {
  const file = path.join(dir, `${name}.yaml`);
  writeFileSync(file, YAML.stringify(config));
  return file;
}

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `${prefix}-`));
}

/** A detector worker as a child process: `node dist/cli/edr.js detector --config FILE`. */
export class WorkerProcess {
  child: ChildProcess | undefined;
  log = '';

  constructor(readonly configFile: string) {}

  start(): this {
    const cli = path.join(repoRoot, 'dist', 'cli', 'edr.js');
    this.child = spawn(process.execPath, [cli, 'detector', '--config', this.configFile], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, EDR_LOG_LEVEL: process.env['EDR_WORKER_LOG_LEVEL'] ?? 'info' },
    });
    this.child.stderr?.on('data', (d: Buffer) => {
      appendFileSync(`${this.configFile}.log`, d);
      this.log += d.toString('utf8');
      if (this.log.length > 2_000_000) this.log = this.log.slice(-1_000_000);
    });
    return this;
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const c = this.child;
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      c.once('exit', () => resolve());
      c.kill(signal);
    });
  }

  /** Resolves when the worker logged `msg` (a JSON log line's msg) at least `times` times. */
  logged(msg: string): number {
    return this.log.split('\n').filter((l) => l.includes(`"msg":"${msg}"`)).length;
  }
}

/** Reads the alerts topic read-committed (the transport's consume), collecting every alert and its headers. */
export async function collectAlerts(
  t: Transport,
  topic: string,
  groupId: string,
): Promise<{ alerts: Array<{ alert: Alert; record: InRecord }>; consumption: Consumption }> {
  const codec = projectCodec();
  const alerts: Array<{ alert: Alert; record: InRecord }> = [];
  const consumption = await t.consume({
    groupId,
    topics: [topic],
    start: 'earliest',
    maxBatchRecords: 5000,
    handler: async (batch) => {
      for (const r of batch.records) {
        alerts.push({ alert: codec.decodeAs('dev.edr.v1.Alert', r.value ?? Buffer.alloc(0)), record: r });
      }
    },
  });
  return { alerts, consumption };
}

/** Every record of `topic` from the start (a group of its own), as they arrive. */
export async function collectRecords(
  t: Transport,
  topic: string,
): Promise<{ records: InRecord[]; consumption: Consumption }> {
  const records: InRecord[] = [];
  const consumption = await t.consume({
    groupId: `${topic}-reader-${process.hrtime.bigint()}`,
    topics: [topic],
    start: 'earliest',
    handler: async (batch) => {
      records.push(...batch.records);
    },
  });
  return { records, consumption };
}

/** Waits for `group` to reach the end of `topic`, then a second more, time for a duplicate output to show. */
export async function drained(t: Transport, group: string, topic: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await t.lag(group, topic)).every((l) => l.lag === 0)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${group} to reach the end of ${topic}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, 1000));
}

/** The alerts and the dead letters of `topics` as they arrive; `close` stops both readers. */
export async function watchOutputs(
  t: Transport,
  topics: { alerts: string; deadLetter: string },
): Promise<{ alerts: Array<{ alert: Alert; record: InRecord }>; dead: InRecord[]; close(): Promise<void> }> {
  const a = await collectAlerts(t, topics.alerts, `${topics.alerts}-reader-${process.hrtime.bigint()}`);
  const d = await collectRecords(t, topics.deadLetter);
  return {
    alerts: a.alerts,
    dead: d.records,
    close: async () => {
      await Promise.all([a.consumption.stop(), d.consumption.stop()]);
    },
  };
}
