import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import { parseConfig } from '../infra/config.js';
import { createLogger, type Logger } from '../infra/log.js';
import { projectCodec } from '../schemas/codec.js';
import { decodeAudit, execEvent } from '../test/harness/collector-fixtures.js';
import { FlakyTransport, readAll } from '../test/harness/flaky-transport.js';
import { Collector } from './collector.js';
import { collectorConfigSchema } from './config.js';
import type { Source, SourceCounters, SourceEvent } from './source.js';

const dir = mkdtempSync(path.join(tmpdir(), 'edr-collector-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const log = createLogger({}, 'error');
const codec = projectCodec();

function config(name: string, over: Record<string, unknown> = {}) {
  process.env['EDR_TEST_COLLECTOR_PASSWORD'] = 'hunter2';
  return parseConfig(collectorConfigSchema, {
    kafka: {
      brokers: ['127.0.0.1:1'],
      sasl: { mechanism: 'scram-sha-512', username: 'u', password: { env: 'EDR_TEST_COLLECTOR_PASSWORD' } },
    },
    topics: { raw: `${name}.raw`, audit: `${name}.audit`, schemas: `${name}.schemas`, create: true },
    spool: { dir: path.join(dir, name) },
    host: { id: 'host-a', hostname: 'web-1' },
    publish: { lossCheckIntervalMs: 60_000 },
    ...over,
  });
}

it('replays a file: numbered events on raw and audit, STARTED (config, no secrets) and STOPPED, schemas', async () => {
  const file = path.join(dir, 'events.jsonl');
  const line = (pid: number, ppid: number, image: string, argv: string[]) =>
    JSON.stringify({ pid, ppid, image, argv, uid: 0, cwd: '/' });
  writeFileSync(
    file,
    [
      line(10, 1, '/usr/bin/bash', ['bash']),
      line(11, 10, '/usr/bin/curl', ['curl', 'x']),
      line(12, 11, '/bin/sh', ['sh']),
    ].join('\n'),
  );
  const transport = new FlakyTransport();
  const c = config('replay', { source: { type: 'replay', path: file } });
  const collector = new Collector({ config: c, transport, log });
  await collector.run();
  assert.equal(collector.counters().events, 3);

  const raw = (await readAll(transport, c.topics.raw, 3)).map((r) =>
    codec.decodeAs('dev.edr.v1.ExecveEvent', r.value!),
  );
  assert.deepEqual(
    raw.map((e) => e.seq),
    [1n, 2n, 3n],
  );
  assert.ok(raw.every((e) => e.hostId === 'host-a' && e.hostname === 'web-1'));
  // Enriched here from the replayed execs: the process table learnt bash and curl.
  assert.equal(raw[1]!.parentImage, '/usr/bin/bash');
  assert.equal(raw[2]!.parentImage, '/usr/bin/curl');
  assert.equal(raw[2]!.parentCommandLine, 'curl x');
  assert.deepEqual(raw[2]!.ancestors, ['/usr/bin/bash']);
  assert.equal(raw[0]!.userName, 'root');

  const auditRecords = await readAll(transport, c.topics.audit, 5);
  assert.ok(auditRecords.every((r) => r.key?.toString() === 'host-a'));
  const { events, records } = decodeAudit(auditRecords.map((r) => r.value!));
  assert.equal(events.length, 3);
  assert.deepEqual(
    records.map((r) => r.kind),
    ['STARTED', 'STOPPED'],
  );
  const started = records[0]!;
  assert.equal(started.lastSeq, -1n);
  assert.ok(started.config?.includes('"type":"replay"'));
  assert.ok(!started.config?.includes('hunter2'), 'secrets removed');
  assert.ok(started.config?.includes('***'));
  const stopped = records[1]!;
  assert.equal(stopped.lastSeq, 3n);
  assert.equal(stopped.losses?.kernelSeen, 3n);
  assert.equal(stopped.losses?.spoolDropped, 0n);

  const schemas = await readAll(transport, c.topics.schemas, 3);
  const fingerprints = [...codec.writerSchemas().keys()].map((fp) => fp.toString(16).padStart(16, '0'));
  assert.deepEqual(new Set(schemas.map((r) => r.key!.toString())), new Set(fingerprints));
  await transport.close();
});

/** A source whose drop counters the test moves. */
class ScriptedSource implements Source {
  readonly name = 'scripted';
  counts: SourceCounters = {
    kernelSeen: 0,
    kernelDrops: 0,
    kernelTruncated: 0,
    kernelReadErrors: 0,
    queueDrops: 0,
  };
  #batches: Array<{ events: SourceEvent[]; counts: Partial<SourceCounters> }>;
  constructor(batches: Array<{ events: SourceEvent[]; counts: Partial<SourceCounters> }>) {
    this.#batches = batches;
  }
  counters(): SourceCounters {
    return this.counts;
  }
  async *[Symbol.asyncIterator](): AsyncIterator<SourceEvent[]> {
    for (const b of this.#batches) {
      this.counts = { ...this.counts, ...b.counts };
      yield b.events;
    }
  }
}

const exec = (pid: number): SourceEvent => execEvent(pid);

it('sends a heartbeat to the audit topic every heartbeatIntervalMs, with its loss counters', async () => {
  const transport = new FlakyTransport();
  const source = new ScriptedSource([{ events: [exec(100)], counts: { kernelSeen: 4, kernelDrops: 1 } }]);
  // The source stays open for 400 ms after its batch, as a live one would.
  const slow: Source = {
    name: 'slow',
    counters: () => source.counters(),
    async *[Symbol.asyncIterator]() {
      yield* source;
      await new Promise((r) => setTimeout(r, 400));
    },
  };
  const c = config('heartbeat', { publish: { lossCheckIntervalMs: 60_000, heartbeatIntervalMs: 50 } });
  const collector = new Collector({ config: c, transport, log, source: () => slow });
  await collector.run();
  const audit = await readAll(transport, c.topics.audit, 6);
  const beats = audit.flatMap((r) => {
    const d = codec.decode(r.value!);
    return d.name === 'dev.edr.v1.CollectorHeartbeat' ? [{ beat: d.value, key: r.key?.toString() }] : [];
  });
  assert.ok(beats.length >= 3, `${beats.length} heartbeats in 400 ms at 50 ms`);
  const last = beats[beats.length - 1]!;
  assert.equal(last.key, 'host-a');
  assert.deepEqual(
    [
      last.beat.hostId,
      last.beat.intervalMs,
      last.beat.lastSeq,
      last.beat.kernelSeen,
      last.beat.kernelRingFull,
    ],
    ['host-a', 50n, 1n, 4n, 1n],
  );
  await transport.close();
});

it('publishes a LOSS record on every change of the kernel or queue drop counters, with running totals', async () => {
  const transport = new FlakyTransport();
  const source = new ScriptedSource([
    { events: [exec(100)], counts: { kernelSeen: 1 } },
    { events: [exec(101)], counts: { kernelSeen: 5, kernelDrops: 3 } },
    { events: [exec(102)], counts: { kernelSeen: 6 } },
    { events: [exec(103)], counts: { kernelSeen: 9, queueDrops: 2 } },
  ]);
  const c = config('loss');
  const collector = new Collector({ config: c, transport, log, source: () => source });
  await collector.run();
  const { records } = decodeAudit((await readAll(transport, c.topics.audit, 8)).map((r) => r.value!));
  const losses = records.filter((r) => r.kind === 'LOSS');
  assert.deepEqual(
    losses.map((r) => [r.losses?.kernelRingFull, r.losses?.queueDropped, r.lastSeq]),
    [
      [3n, 0n, 2n],
      [3n, 2n, 4n],
    ],
  );
  assert.equal(records[records.length - 1]!.kind, 'STOPPED');
  assert.equal(records[records.length - 1]!.losses?.kernelSeen, 9n);
  await transport.close();
});

it('counts a batch whose decode throws as dropped, with its reason in LOSS, and goes on', async () => {
  const transport = new FlakyTransport();
  // An event whose argv cannot be read, as a record that fails to decode: enriching its batch throws.
  const broken = exec(201);
  Object.defineProperty(broken, 'argv', {
    get: () => {
      throw new Error('argv is not valid UTF-8');
    },
  });
  // One that enriches but cannot be encoded (an argv length beyond Avro's int).
  const unencodable = { ...exec(203), argvBytes: 2 ** 40 };
  const source = new ScriptedSource([
    { events: [exec(200)], counts: { kernelSeen: 1 } },
    { events: [exec(202), broken, exec(204)], counts: { kernelSeen: 4 } },
    { events: [exec(205), unencodable, exec(206)], counts: { kernelSeen: 7 } },
  ]);
  const c = config('undecodable');
  const collector = new Collector({ config: c, transport, log, source: () => source });
  await collector.run();
  assert.equal(collector.counters().decodeDropped, 4, 'the whole batch of 3, and the one event');
  const { events, records } = decodeAudit((await readAll(transport, c.topics.audit, 6)).map((r) => r.value!));
  assert.deepEqual(
    events.map((e) => [e.pid, e.seq]),
    [
      [200, 1n],
      [205, 2n],
      [206, 3n],
    ],
    'later batches delivered, seq without gaps',
  );
  const losses = records.filter((r) => r.kind === 'LOSS');
  assert.deepEqual(
    losses.map((r) => r.losses?.queueDropped),
    [3n, 4n],
  );
  assert.match(losses[0]!.message ?? '', /enriching a batch failed: argv is not valid UTF-8/);
  assert.match(losses[1]!.message ?? '', /encoding an event failed/);
  const stopped = records[records.length - 1]!;
  assert.equal(stopped.kind, 'STOPPED');
  assert.equal(stopped.losses?.queueDropped, 4n);
  assert.equal(stopped.message, null, 'the collector did not fail');
  await transport.close();
});

it('reports spool drops in a LOSS record once the broker is back', async () => {
  const transport = new FlakyTransport();
  transport.down = true;
  let release!: () => void;
  const gate = new Promise<void>((r) => {
    release = r;
  });
  const events = Array.from({ length: 200 }, (_, i) => ({
    ...exec(1000 + i),
    argv: ['true', 'x'.repeat(1000)],
  }));
  const source: Source = {
    name: 'gated',
    counters: () => ({
      kernelSeen: 200,
      kernelDrops: 0,
      kernelTruncated: 0,
      kernelReadErrors: 0,
      queueDrops: 0,
    }),
    async *[Symbol.asyncIterator]() {
      yield events.slice(0, 100);
      yield events.slice(100);
      await gate;
      yield [exec(5000)];
    },
  };
  const c = config('spoolfull', {
    spool: { dir: path.join(dir, 'spoolfull'), maxBytes: 65536, segmentBytes: 8192 },
    publish: { lossCheckIntervalMs: 60_000, retryIntervalMs: 20, timeoutMs: 500 },
  });
  const collector = new Collector({ config: c, transport, log, source: () => source });
  const running = collector.run();
  while (collector.counters().publish.spoolDropped === 0) await new Promise((r) => setTimeout(r, 5));
  transport.down = false;
  while (collector.counters().publish.mode !== 'online') await new Promise((r) => setTimeout(r, 5));
  release();
  await running;
  const dropped = collector.counters().publish.spoolDropped;
  assert.ok(dropped > 0);
  const { records, events: published } = decodeAudit(
    (await readAll(transport, c.topics.audit, 10)).map((r) => r.value!),
  );
  const loss = records.filter((r) => r.kind === 'LOSS').pop();
  assert.equal(loss?.losses?.spoolDropped, BigInt(dropped));
  assert.equal(published.length + dropped, 201);
  await transport.close();
});

it('without its topics, says once to run edr topics create, spools, and delivers once the operator made them', async () => {
  const file = path.join(dir, 'no-topics.jsonl');
  writeFileSync(
    file,
    `${JSON.stringify({ pid: 20, ppid: 1, image: '/usr/bin/id', argv: ['id'], uid: 0, cwd: '/' })}\n`,
  );
  const transport = new FlakyTransport();
  const warnings: string[] = [];
  const capture: Logger = {
    debug: () => {},
    info: () => {},
    warn: (msg, fields) => warnings.push(`${msg}: ${(fields?.['err'] as Error | undefined)?.message}`),
    error: () => {},
    child: () => capture,
  };
  const c = parseConfig(collectorConfigSchema, {
    ...config('no-topics'),
    kafka: { brokers: ['127.0.0.1:1'] },
    source: { type: 'replay', path: file },
    topics: { raw: 'no-topics.raw', audit: 'no-topics.audit', schemas: 'no-topics.schemas' },
    publish: { lossCheckIntervalMs: 60_000, retryIntervalMs: 50 },
  });
  assert.equal(c.topics.create, false, 'services do not create topics by default');
  const collector = new Collector({ config: c, transport, log: capture });
  const running = collector.run();
  const missing = () => warnings.filter((w) => w.includes('edr topics create'));
  while (missing().length === 0) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 300)); // several retries: still one warning
  assert.equal(missing().length, 1, warnings.join('\n'));
  assert.match(missing()[0]!, /no-topics\.raw, no-topics\.audit, no-topics\.schemas missing/);
  await transport.createTopics(
    ['raw', 'audit', 'schemas'].map((t) => ({ name: `no-topics.${t}`, partitions: 1 })),
  );
  await running;
  assert.equal((await readAll(transport, 'no-topics.raw', 1)).length, 1);
});
