/**
 * Reliability: the broker goes away for more than 20 seconds while commands run. The collector spools what it
 * captures to disk, drains the spool when the broker is back (same ports, same data), and every event arrives:
 * gap-free in seq, in order per host, duplicates only from publishes whose acknowledgement it never got (and no
 * more than it counted as re-sent). Uses its own broker (it stops it) and the real eBPF source, so it needs root:
 * skipped when not root, failed when EDR_E2E_REQUIRED=1.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Collector } from '../../collector/collector.js';
import { collectorConfigSchema } from '../../collector/config.js';
import { parseConfig } from '../../infra/config.js';
import { type Broker, freePort, startBroker } from '../../infra/kafka/broker.js';
import { kafkaConfigSchema } from '../../infra/kafka/config.js';
import { KafkaTransport } from '../../infra/kafka/transport.js';
import { createLogger } from '../../infra/log.js';
import type { InRecord } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import type { ExecveEvent } from '../../schemas/types.js';
import { unique, waitFor } from '../harness/names.js';

const required = process.env.EDR_E2E_REQUIRED === '1';
const isRoot = process.getuid?.() === 0;
const OUTAGE_MS = 22_000;

if (!isRoot) {
  it('collector through a broker outage (needs root)', {
    skip: required ? false : 'needs root for eBPF (EDR_E2E_REQUIRED=1 makes this a failure)',
  }, () => {
    assert.fail('EDR_E2E_REQUIRED=1 but this test is not running as root: the eBPF source needs root');
  });
}

describe('collector through a broker outage', { skip: !isRoot }, () => {
  let dir: string | undefined;
  let broker: Broker | undefined;
  const closers: Array<() => Promise<unknown>> = [];

  after(async () => {
    for (const c of closers.reverse()) await c().catch(() => {});
    await broker?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('spools while the broker is down for 20+ s and delivers every event, in order, after it restarts', async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'edr-outage-'));
    const port = await freePort();
    const controllerPort = await freePort();
    const brokerDir = path.join(dir, 'kafka');
    broker = await startBroker({ dir: brokerDir, port, controllerPort });
    const kafka = kafkaConfigSchema.parse({ brokers: broker.brokers, clientId: 'edr-outage-collector' });
    const config = parseConfig(collectorConfigSchema, {
      kafka: { brokers: broker.brokers, clientId: 'edr-outage-collector' },
      source: { type: 'ebpf', pollTimeoutMs: 20 },
      topics: {
        raw: unique('edr.outage.raw'),
        audit: unique('edr.outage.audit'),
        schemas: unique('edr.outage.schemas'),
        create: true,
      },
      spool: { dir: path.join(dir, 'spool'), fsync: 'interval' },
      publish: { timeoutMs: 3000, retryIntervalMs: 500, shutdownTimeoutMs: 30_000 },
    });
    const log = createLogger({ component: 'collector' }, 'error');
    const transport = new KafkaTransport(kafka, log);
    closers.push(() => transport.close());
    const collector = new Collector({ config, transport, log });
    const running = collector.run();
    closers.push(() => collector.stop());
    await waitFor('the collector to connect', () => collector.counters().publish.connected);

    // Commands, one after another, each tagged with its number and the phase it ran in.
    const marker = `edr-outage-${process.pid}-${Date.now().toString(36)}`;
    let phase = 'before';
    let n = 0;
    const ran: Array<{ n: number; phase: string }> = [];
    let generating = true;
    const generator = (async () => {
      while (generating) {
        const tag = `${marker}-${n}`;
        const p = phase;
        await new Promise<void>((resolve, reject) => {
          const c = spawn('/bin/true', [tag, p], { stdio: 'ignore' });
          c.on('error', reject);
          c.on('exit', () => resolve());
        });
        ran.push({ n, phase: p });
        n++;
        await sleep(40);
      }
    })();

    await sleep(2000);
    phase = 'outage';
    await broker.stop();
    const downAt = Date.now();
    await waitFor(
      'the collector to notice the outage',
      () => collector.counters().publish.mode !== 'online',
      15_000,
    );
    await sleep(Math.max(0, OUTAGE_MS - (Date.now() - downAt)));
    const spooledDuringOutage = collector.counters().publish.eventsSpooled;
    assert.ok(spooledDuringOutage > 0, 'events went to the spool while the broker was down');
    phase = 'restart';
    broker = await startBroker({ dir: brokerDir, port, controllerPort });
    const downMs = Date.now() - downAt;
    phase = 'after';
    await waitFor('the spool to drain', () => collector.counters().publish.mode === 'online', 90_000);
    await sleep(1500);
    generating = false;
    await generator;
    await collector.stop();
    await running;
    const counters = collector.counters();
    assert.ok(downMs >= 20_000, `broker was down ${downMs} ms`);

    // Read the raw topic back.
    const codec = projectCodec();
    const records: Array<{ partition: number; offset: number; event: ExecveEvent }> = [];
    const reader = new KafkaTransport(
      kafkaConfigSchema.parse({ brokers: broker.brokers, clientId: 'edr-outage-reader' }),
      log,
    );
    closers.push(() => reader.close());
    const consumption = await reader.consume({
      groupId: unique('edr-outage-reader'),
      topics: [config.topics.raw],
      start: 'earliest',
      handler: async (batch) => {
        for (const r of batch.records as InRecord[])
          records.push({
            partition: r.partition,
            offset: r.offset,
            event: codec.decodeAs('dev.edr.v1.ExecveEvent', r.value!),
          });
      },
    });
    closers.push(() => consumption.stop());
    await waitFor(
      'every event on the raw topic',
      () => new Set(records.map((r) => r.event.seq)).size >= counters.events,
      60_000,
    );
    await consumption.stop();

    // One host: one partition, read in offset order.
    assert.equal(new Set(records.map((r) => r.partition)).size, 1);
    records.sort((a, b) => a.offset - b.offset);
    const seen = new Set<bigint>();
    let duplicates = 0;
    let last = 0n;
    for (const { event } of records) {
      if (seen.has(event.seq)) {
        duplicates++;
        continue;
      }
      assert.ok(event.seq > last, `seq ${event.seq} after ${last}: out of order`);
      last = event.seq;
      seen.add(event.seq);
    }
    assert.equal(seen.size, counters.events, 'gap-free: every seq of the run arrived');
    assert.equal(last, BigInt(counters.events));
    assert.ok(
      duplicates <= counters.publish.resent,
      `${duplicates} duplicates, ${counters.publish.resent} re-sent`,
    );

    // Every command that ran arrived, the ones during the outage included.
    const byTag = new Map<string, number>();
    for (const { event } of records) {
      const tag = event.argv[1];
      if (tag?.startsWith(`${marker}-`)) byTag.set(tag, (byTag.get(tag) ?? 0) + 1);
    }
    const missing = ran.filter((r) => !byTag.has(`${marker}-${r.n}`));
    assert.deepEqual(missing, [], 'every command arrived');
    const during = ran.filter((r) => r.phase === 'outage' || r.phase === 'restart').length;
    assert.ok(during >= 100, `only ${during} commands ran during the outage`);
    assert.equal(counters.publish.spoolDropped, 0);
    assert.equal(counters.source.kernelDrops + counters.source.queueDrops, 0);
    assert.ok(counters.publish.outages >= 1);
    process.stderr.write(
      `outage: broker down ${downMs} ms, ${ran.length} commands (${during} during the outage), ` +
        `${counters.events} events, ${counters.publish.eventsSpooled} spooled, ${duplicates} duplicates ` +
        `(${counters.publish.resent} re-sent), ${counters.publish.outages} outage(s)\n`,
    );
  });
});
