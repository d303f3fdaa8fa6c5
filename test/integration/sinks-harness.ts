/** Shared by the sinks integration tests: unique topics, alerts published the way detectors publish them. */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import type { InRecord, Transport } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import type { Alert } from '../../schemas/types.js';
import { sampleAlert, sampleEvent } from '../fixtures/events.js';
import { testBrokers } from '../harness/broker.js';
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
