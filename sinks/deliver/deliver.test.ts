import assert from 'node:assert/strict';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { EdrError } from '../../infra/errors.js';
import { createLogger } from '../../infra/log.js';
import { MemoryTransport } from '../../infra/memory-transport.js';
import type { InRecord } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import type { Alert } from '../../schemas/types.js';
import { sampleAlert, sampleEvent } from '../../test/fixtures/events.js';
import { waitFor } from '../../test/harness/names.js';
import { parseSinksConfig, type Route } from '../config.js';
import { DeliveredStore } from '../delivered-store.js';
import { alertsOf, type Message, type Sink } from '../sink.js';
import {
  classify,
  compileRoute,
  foldAlerts,
  groupMessages,
  retryDelayMs,
  startSink,
  TokenBucket,
} from './deliver.js';

const at = (i: number) => 1_795_000_000_000_000_000n + BigInt(i) * 1_000_000_000n; // i seconds

function alert(i: number, over: Partial<Alert> = {}, ev: Partial<Alert['event']> = {}): Alert {
  return sampleAlert({ alertId: `a${i}`, event: sampleEvent({ timeNs: at(i), ...ev }), ...over });
}

const route = (r: Partial<Route>): Route => ({ to: ['x'], source: 'any', ...r });

describe('routing', () => {
  const cases: Array<[string, Partial<Route>, Alert, boolean]> = [
    ['no conditions', {}, alert(1), true],
    ['level at minimum', { minLevel: 'high' }, alert(1), true],
    ['level below minimum', { minLevel: 'critical' }, alert(1), false],
    ['tag prefix at a dot', { tags: ['attack.t1059'] }, alert(1), true],
    ['tag prefix not at a dot', { tags: ['attack.t105'] }, alert(1), false],
    ['tag case-insensitive', { tags: ['ATTACK.EXECUTION'] }, alert(1), true],
    ['rule id', { ruleIds: ['other'] }, alert(1), false],
    ['title regex, any case', { titles: ['piped TO shell'] }, alert(1), true],
    ['host glob on name', { hosts: ['web-*'] }, alert(1), true],
    ['host glob on id', { hosts: ['c0ffee*'] }, alert(1), true],
    ['host glob no match', { hosts: ['db-*'] }, alert(1), false],
    ['live only, live alert', { source: 'live' }, alert(1), true],
    ['live only, replay alert', { source: 'live' }, alert(1, { replayRunId: 'run-1' }), false],
    ['replay only, live alert', { source: 'replay' }, alert(1), false],
    [
      'all conditions together',
      { minLevel: 'medium', tags: ['attack.execution'], hosts: ['web-1'] },
      alert(1),
      true,
    ],
  ];
  for (const [name, r, a, want] of cases) {
    it(name, () => assert.equal(compileRoute(route(r))(a), want));
  }
});

describe('folding and messages', () => {
  it('folds same rule and host within the window, with count and first/last seen', () => {
    const folds = foldAlerts(
      [alert(3), alert(1), alert(2, {}, { hostId: 'other' }), alert(5), alert(400)],
      60_000,
    );
    assert.deepEqual(
      folds.map((f) => [f.alerts.map((a) => a.alertId), f.firstSeenNs, f.lastSeenNs]),
      [
        [['a3', 'a1', 'a5'], at(1), at(5)],
        [['a2'], at(2), at(2)],
        // 400 s after the fold's first: a new fold
        [['a400'], at(400), at(400)],
      ],
    );
  });

  it('does not fold when folding is off', () => {
    assert.equal(foldAlerts([alert(1), alert(2)], false).length, 2);
  });

  it('groups folds: each, one batch, or by digest window', () => {
    const folds = foldAlerts(
      [alert(1, { ruleId: 'r1' }), alert(2, { ruleId: 'r2' }), alert(100, { ruleId: 'r3' })],
      false,
    );
    const ids = (ms: Message[]) => ms.map((m) => alertsOf(m).map((a) => a.alertId));
    assert.deepEqual(ids(groupMessages(folds, 'each')), [['a1'], ['a2'], ['a100']]);
    assert.deepEqual(ids(groupMessages(folds, 'batch')), [['a1', 'a2', 'a100']]);
    assert.deepEqual(ids(groupMessages(folds, { digestWindowMs: 10_000 })), [['a1', 'a2'], ['a100']]);
    assert.deepEqual(groupMessages([], 'batch'), []);
  });
});

describe('retry policy', () => {
  const p = { maxAttempts: 5, initialBackoffMs: 100, maxBackoffMs: 1000, maxRetryAfterMs: 5000 };
  it('backs off exponentially with equal jitter, capped', () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5, 10].map((n) => [
        retryDelayMs(n, undefined, p, () => 0),
        retryDelayMs(n, undefined, p, () => 1),
      ]),
      [
        [50, 100],
        [100, 200],
        [200, 400],
        [400, 800],
        [500, 1000],
        [500, 1000],
      ],
    );
  });
  it('waits as long as Retry-After says, up to the cap', () => {
    assert.equal(retryDelayMs(1, 2000, p), 2000);
    assert.equal(retryDelayMs(1, 60_000, p), 5000);
    assert.equal(retryDelayMs(1, 0, p), 0);
  });
  it('treats unknown errors as permanent, timeouts as retryable', () => {
    assert.equal(classify(new Error('bug'), false).retryable, false);
    assert.equal(classify(new Error('aborted'), true).code, 'EDR_SINK_TIMEOUT');
    assert.equal(classify(new Error('aborted'), true).retryable, true);
    const e = new EdrError('EDR_SINK_X', 'x', { retryable: true });
    assert.equal(classify(e, false), e);
  });
});

describe('token bucket', () => {
  it('lets a burst through, then spaces messages at the rate', () => {
    let now = 0;
    const b = new TokenBucket(2, 2, () => now);
    assert.deepEqual([b.reserve(), b.reserve(), b.reserve(), b.reserve()], [0, 0, 500, 1000]);
    now = 10_000;
    assert.equal(b.reserve(), 0);
    assert.equal(new TokenBucket(0, 1).reserve(), 0);
  });
});

describe('delivered store', () => {
  it('remembers ids across a reopen, forgets expired ones, ignores a torn line', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-delivered-'));
    let now = 1_000_000;
    const s1 = await DeliveredStore.open({ dir, name: 's', windowMs: 1000, now: () => now });
    await s1.add(['a', 'b']);
    now += 600;
    await s1.add(['c', 'a']);
    await s1.close();
    await writeFile(
      path.join(dir, 's.delivered'),
      `${await readFile(path.join(dir, 's.delivered'), 'utf8')}1000700 tor`,
    );
    now += 600;
    const s2 = await DeliveredStore.open({ dir, name: 's', windowMs: 1000, now: () => now });
    assert.deepEqual(
      ['a', 'b', 'c', 'tor'].map((id) => s2.has(id)),
      [false, false, true, false],
    );
    await s2.close();
  });

  it('refuses a state directory a live process holds', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-delivered-'));
    await writeFile(path.join(dir, 's.lock'), String(process.ppid));
    await assert.rejects(DeliveredStore.open({ dir, name: 's', windowMs: 1000 }), (err: unknown) => {
      return err instanceof EdrError && err.code === 'EDR_SINK_STATE_LOCKED';
    });
  });
});

describe('the delivery loop (memory transport, scripted sink)', () => {
  const codec = projectCodec();
  process.env['DELIVER_TEST_URL'] = 'http://127.0.0.1:1/unused';

  async function run(
    script: (m: Message, call: number) => Promise<void>,
    instance: Record<string, unknown>,
    publish: Array<Alert | Buffer>,
  ) {
    const transport = new MemoryTransport();
    const topics = { alerts: 'alerts', undeliverable: 'undeliverable', deadLetter: 'dead' };
    await transport.createTopics([
      { name: 'alerts', partitions: 1 },
      { name: 'undeliverable', partitions: 1 },
      { name: 'dead', partitions: 1 },
    ]);
    const cfg = parseSinksConfig({
      kafka: { brokers: ['127.0.0.1:1'] },
      topics,
      stateDir: await mkdtemp(path.join(tmpdir(), 'edr-deliver-')),
      // A Slack-typed instance (one message per fold) whose sending the test scripts.
      sinks: {
        s: {
          type: 'slack',
          webhookUrl: { env: 'DELIVER_TEST_URL' },
          messagesPerSecond: 0,
          startFrom: 'earliest',
          ...instance,
        },
      },
      routes: [{ to: ['s'] }],
    });
    const producer = await transport.producer();
    await producer.publish(
      publish.map((a) => ({
        topic: 'alerts',
        key: 'k',
        value: Buffer.isBuffer(a) ? a : codec.encode('dev.edr.v1.Alert', a),
      })),
    );
    const sent: Message[] = [];
    let calls = 0;
    let inFlight = 0;
    let maxInFlight = 0;
    const sink: Sink = {
      async send(m) {
        calls++;
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        try {
          await new Promise((r) => setImmediate(r));
          await script(m, calls);
          sent.push(m);
        } finally {
          inFlight--;
        }
      },
      async close() {},
    };
    const running = await startSink('s', cfg.sinks['s']!, {
      transport,
      producer,
      codec,
      log: createLogger({}, 'error'),
      topics,
      stateDir: cfg.stateDir,
      routes: cfg.routes,
      makeSink: () => sink,
    });
    await waitFor('all consumed', async () =>
      (await transport.lag('edr-sink-s', 'alerts')).every((l) => l.lag === 0),
    );
    await running.stop();
    const read = async (topic: string): Promise<InRecord[]> => {
      const got: InRecord[] = [];
      const c = await transport.consume({
        groupId: `r-${topic}`,
        topics: [topic],
        handler: async (b) => void got.push(...b.records),
      });
      const end = (await transport.endOffsets(topic))[0]!.offset;
      await waitFor(topic, () => got.length >= end);
      await c.stop();
      return got;
    };
    const result = {
      sent: sent.map((m) => alertsOf(m).map((a) => a.alertId)),
      calls,
      maxInFlight,
      undeliverable: await read('undeliverable'),
      dead: await read('dead'),
    };
    await transport.close();
    return result;
  }

  const fast = { retry: { initialBackoffMs: 1, maxBackoffMs: 2 } };

  it('retries retryable failures and delivers once', async () => {
    const r = await run(
      async (_m, n) => {
        if (n <= 2) throw new EdrError('EDR_SINK_UNAVAILABLE', 'HTTP 503', { retryable: true });
      },
      fast,
      [alert(1), alert(2)],
    );
    assert.deepEqual(r.sent, [['a1', 'a2']]);
    assert.equal(r.calls, 3);
    assert.equal(r.undeliverable.length, 0);
  });

  it('parks on a permanent error, with the reason, keyed by alert id', async () => {
    const r = await run(
      async () => {
        throw new EdrError('EDR_SINK_REJECTED', 'HTTP 404 no_service');
      },
      fast,
      [alert(1)],
    );
    assert.equal(r.calls, 1);
    assert.equal(r.undeliverable.length, 1);
    const p = r.undeliverable[0]!;
    assert.equal(p.key?.toString(), 'a1');
    assert.equal(p.headers['edr-error-code']?.toString(), 'EDR_SINK_REJECTED');
    assert.equal(p.headers['edr-error']?.toString(), 'HTTP 404 no_service');
    assert.equal(p.headers['edr-sink']?.toString(), 's');
    assert.equal(p.headers['edr-attempts']?.toString(), '1');
    assert.equal(codec.decodeAs('dev.edr.v1.Alert', p.value!).alertId, 'a1');
  });

  it('parks when the retry budget is spent', async () => {
    const r = await run(
      async () => {
        throw new EdrError('EDR_SINK_UNREACHABLE', 'ECONNREFUSED', { retryable: true });
      },
      { ...fast, retry: { ...fast.retry, maxAttempts: 3 } },
      [alert(1)],
    );
    assert.equal(r.calls, 3);
    assert.equal(r.undeliverable[0]?.headers['edr-attempts']?.toString(), '3');
  });

  it('sends an alert id once even when it comes twice; dead-letters what does not decode', async () => {
    const r = await run(async () => {}, {}, [alert(1), alert(1), Buffer.from('not avro'), alert(2)]);
    assert.deepEqual(r.sent.flat(), ['a1', 'a2']);
    assert.equal(r.dead.length, 1);
    assert.equal(r.dead[0]!.headers['edr-error-code']?.toString(), 'EDR_SCHEMA_NOT_SINGLE_OBJECT');
  });

  it('keeps to the concurrency limit', async () => {
    const alerts = Array.from({ length: 6 }, (_, i) => alert(i, { ruleId: `r${i}` }));
    const one = await run(async () => {}, { concurrency: 1 }, alerts);
    assert.equal(one.maxInFlight, 1);
    const three = await run(async () => {}, { concurrency: 3 }, alerts);
    assert.equal(three.maxInFlight, 3);
    assert.deepEqual(three.sent.flat().sort(), ['a0', 'a1', 'a2', 'a3', 'a4', 'a5']);
  });

  it('redacts before a Slack or email sink sees the alert', async () => {
    const a = alert(1, {}, { argv: ['curl', '-u', 'x', 'https://u:pw@h/'] });
    const seen: string[] = [];
    await run(async (m) => void seen.push(alertsOf(m)[0]!.event.argv.join(' ')), {}, [a]);
    assert.deepEqual(seen, ['curl -u x https://u:***@h/']);
  });
});

describe('throttle windows (memory transport)', () => {
  const codec = projectCodec();
  process.env['DELIVER_TEST_URL'] = 'http://127.0.0.1:1/unused';

  async function setup(stateDir: string, windowMs: number) {
    const transport = new MemoryTransport();
    const topics = { alerts: 'alerts', undeliverable: 'undeliverable', deadLetter: 'dead' };
    await transport.createTopics([
      { name: 'alerts', partitions: 1 },
      { name: 'undeliverable', partitions: 1 },
      { name: 'dead', partitions: 1 },
    ]);
    const cfg = parseSinksConfig({
      kafka: { brokers: ['127.0.0.1:1'] },
      topics,
      stateDir,
      sinks: {
        s: {
          type: 'slack',
          webhookUrl: { env: 'DELIVER_TEST_URL' },
          messagesPerSecond: 0,
          fold: { windowMs },
        },
      },
      routes: [{ to: ['s'] }],
    });
    const producer = await transport.producer();
    const sent: string[][] = [];
    const start = () =>
      startSink('s', cfg.sinks['s']!, {
        transport,
        producer,
        codec,
        log: createLogger({}, 'error'),
        topics,
        stateDir,
        routes: cfg.routes,
        makeSink: () => ({
          async send(m) {
            sent.push(alertsOf(m).map((a) => a.alertId));
          },
          async close() {},
        }),
      });
    const publish = (alerts: Alert[]) =>
      producer.publish(
        alerts.map((a) => ({ topic: 'alerts', key: 'k', value: codec.encode('dev.edr.v1.Alert', a) })),
      );
    const consumed = () =>
      waitFor('all consumed', async () =>
        (await transport.lag('edr-sink-s', 'alerts')).every((l) => l.lag === 0),
      );
    return { transport, sent, start, publish, consumed };
  }

  it('holds identical alerts after a message and sends them as one summary when the window closes', async () => {
    const t = await setup(await mkdtemp(path.join(tmpdir(), 'edr-throttle-')), 3_600_000);
    const s = await t.start();
    await t.publish([alert(1)]);
    await waitFor('the first message', () => t.sent.length === 1);
    // One alert per batch, as in a slow storm.
    for (const i of [2, 3, 4]) {
      await t.publish([alert(i)]);
      await t.consumed();
    }
    await t.publish([alert(5, { ruleId: 'other-rule' })]);
    await waitFor('the other rule', () => t.sent.length === 2);
    // The window's timer, without the wait.
    await s.flushHeld();
    await s.stop();
    await t.transport.close();
    assert.deepEqual(t.sent.sort(), [['a1'], ['a2', 'a3', 'a4'], ['a5']]);
  });

  it('sends alerts held when it stopped at the next start, once', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-throttle-'));
    const t = await setup(dir, 3_600_000);
    const first = await t.start();
    await t.publish([alert(1)]);
    await waitFor('the first message', () => t.sent.length === 1);
    await t.publish([alert(2), alert(3)]);
    await t.consumed();
    await first.stop();
    assert.deepEqual(t.sent, [['a1']]);
    const second = await t.start();
    await waitFor('the held alerts', () => t.sent.length === 2);
    await t.publish([alert(2)]); // a redelivery of a held alert is not sent again
    await t.consumed();
    await second.stop();
    await t.transport.close();
    assert.deepEqual(t.sent, [['a1'], ['a2', 'a3']]);
  });
});
