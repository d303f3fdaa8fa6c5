/** Shared by the sinks integration tests: unique topics, alerts published the way detectors publish them. */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import { stringify } from 'yaml';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import { repoRoot } from '../../infra/paths.js';
import type { InRecord, Transport } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import type { Alert } from '../../schemas/types.js';
import { sampleAlert, sampleEvent } from '../fixtures/events.js';
import { stopOwnBroker, testBrokers, testTransport } from '../harness/broker.js';
import { unique } from '../harness/names.js';

export interface SinkTopics {
  alerts: string;
  undeliverable: string;
  deadLetter: string;
}

export async function sinkTopics(transport: Transport, partitions = 3): Promise<SinkTopics> {
  const t = {
    alerts: unique('sinks-alerts'),
    undeliverable: unique('sinks-undeliverable'),
    deadLetter: unique('sinks-dead'),
  };
  await transport.createTopics([
    { name: t.alerts, partitions },
    { name: t.undeliverable, partitions: 1 },
    { name: t.deadLetter, partitions: 1 },
  ]);
  return t;
}

/** Alert number `i`: distinct id and event time; same rule and host unless overridden. */
export function alertN(i: number, over: Partial<Alert> = {}): Alert {
  return sampleAlert({
    alertId: `alert-${i}`,
    event: sampleEvent({ seq: BigInt(i), timeNs: 1_795_000_000_000_000_000n + BigInt(i) * 1_000_000n }),
    ...over,
  });
}

export async function publishAlerts(
  transport: Transport,
  topic: string,
  alerts: readonly Alert[],
): Promise<void> {
  const codec = projectCodec();
  const producer = await transport.producer();
  try {
    for (let i = 0; i < alerts.length; i += 1000) {
      await producer.publish(
        alerts.slice(i, i + 1000).map((a) => ({
          topic,
          key: a.event.hostId,
          value: codec.encode('dev.edr.v1.Alert', a),
        })),
      );
    }
  } finally {
    await producer.close();
  }
}

export async function tempDir(prefix: string): Promise<string> {
  return mkdtemp(path.join(tmpdir(), `${prefix}-`));
}

/** A sinks config (as parsed YAML) for these topics; `sinks` and `routes` from the test. */
export async function sinksConfig(
  topics: SinkTopics,
  stateDir: string,
  sinks: Record<string, unknown>,
  routes: unknown[],
): Promise<Record<string, unknown>> {
  return {
    kafka: { brokers: await testBrokers(), clientId: 'edr-sinks-test' },
    topics,
    stateDir,
    sinks,
    routes,
  };
}

export async function writeYaml(dir: string, value: unknown): Promise<string> {
  const file = path.join(dir, 'sinks.yaml');
  await writeFile(file, stringify(value));
  return file;
}

/** Reads a topic from the start with a fresh group until `until` holds for what was read. */
export async function readTopic(
  transport: Transport,
  topic: string,
  until: (records: InRecord[]) => boolean,
  timeoutMs = 20_000,
): Promise<InRecord[]> {
  const got: InRecord[] = [];
  const c = await transport.consume({
    groupId: unique('sinks-reader'),
    topics: [topic],
    handler: async (b) => {
      got.push(...b.records);
    },
  });
  try {
    const deadline = Date.now() + timeoutMs;
    while (!until(got)) {
      if (Date.now() > deadline) throw new Error(`timed out reading ${topic}: ${got.length} records`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return got;
  } finally {
    await c.stop();
  }
}

export interface Seen {
  at: number;
  status: number;
  body: { text: string; attachments: Array<{ blocks: unknown[] }> };
}

/** An HTTP server answering each POST with `answer(n)` (n counts from 0) and recording what it saw. */
export async function webhook(
  answer: (n: number) => { status: number; headers?: Record<string, string>; body?: string },
) {
  const seen: Seen[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let data = '';
    req.on('data', (d: Buffer) => {
      data += d.toString();
    });
    req.on('end', () => {
      const a = answer(seen.length);
      seen.push({ at: Date.now(), status: a.status, body: JSON.parse(data) });
      res.writeHead(a.status, { 'content-type': 'text/plain', ...a.headers });
      res.end(a.body ?? (a.status === 200 ? 'ok' : 'error'));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const env = unique('TEST_SLACK_URL').replaceAll('-', '_').toUpperCase();
  process.env[env] = `http://127.0.0.1:${(server.address() as AddressInfo).port}/services/T000/B000/XXXX`;
  return {
    env,
    seen,
    delivered: () => seen.filter((s) => s.status === 200),
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** The alert id a single-alert message carries in its last context block. */
export function alertIdOf(s: Seen): string {
  const m = /alert (alert-\d+)/.exec(JSON.stringify(s.body));
  return m ? m[1]! : '?';
}

/** How many times each alert id was delivered (200) to the webhook. */
export function deliveriesById(seen: readonly Seen[]): Map<string, number> {
  const n = new Map<string, number>();
  for (const s of seen) if (s.status === 200) n.set(alertIdOf(s), (n.get(alertIdOf(s)) ?? 0) + 1);
  return n;
}

/** Records in a topic now (the sum of its end offsets: the test topics are never compacted or trimmed). */
export async function topicSize(transport: Transport, topic: string): Promise<number> {
  return (await transport.endOffsets(topic)).reduce((n, p) => n + p.offset, 0);
}

/** A transport for the tests of the current file, opened before them and closed (with the file's broker) after. */
export function fileTransport(clientId: string): () => KafkaTransport {
  let transport: KafkaTransport | undefined;
  before(async () => {
    transport = await testTransport(clientId);
  });
  after(async () => {
    await transport?.close();
    await stopOwnBroker();
  });
  return () => transport!;
}

/** Asserts that the webhook got each of `alerts` exactly once (and nothing else); returns the counts by id. */
export function assertDeliveredOnce(seen: readonly Seen[], alerts: readonly Alert[]): Map<string, number> {
  const counts = deliveriesById(seen);
  assert.deepEqual([...counts.keys()].sort(), alerts.map((a) => a.alertId).sort());
  assert.ok(
    [...counts.values()].every((n) => n === 1),
    `each alert delivered exactly once: ${JSON.stringify([...counts])}`,
  );
  return counts;
}

/**
 * `edr ARGS` as a child process that does not block this one (which may be serving the webhook it calls): its
 * output (stdout and stderr) so far, and its exit code once it ends.
 */
export function edrChild(args: string[]): {
  kill(sig: NodeJS.Signals): void;
  out(): string;
  exited: Promise<number | null>;
} {
  const child = spawn(process.execPath, [path.join(repoRoot, 'dist', 'cli', 'edr.js'), ...args], {
    env: { ...process.env, EDR_LOG_LEVEL: 'error' },
  });
  let out = '';
  const collect = (d: Buffer) => {
    out += d.toString();
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  return {
    kill: (sig) => child.kill(sig),
    out: () => out,
    exited: new Promise((resolve) => child.on('exit', (code) => resolve(code))),
  };
}
