/**
 * Sinks never give up on a retryable failure (issue 15), over the real broker against a local HTTP server
 * standing in for Slack's webhook: an outage of a few seconds with no attempt limit (the default) delivers every
 * alert exactly once afterwards, across a stop in the middle of it; a permanent refusal still parks at once.
 * The ten-minute outage with default settings is sinks-long-outage.test.ts.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';
import { EdrError } from '../../infra/errors.js';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import { abortableDelay } from '../../infra/retry.js';
import { parseSinksConfig } from '../../sinks/config.js';
import { type Router, runSinks } from '../../sinks/main.js';
import { unique, waitFor } from '../harness/names.js';
import {
  alertN,
  assertDeliveredOnce,
  deliveriesById,
  edrChild,
  fileTransport,
  publishAlerts,
  readTopic,
  type SinkTopics,
  sinksConfig,
  sinkTopics,
  tempDir,
  topicSize,
  webhook,
  writeYaml,
} from './sinks-harness.js';

describe('sinks: outages', () => {
  const kafka = fileTransport('sinks-outage-test');

  async function start(env: string, at: { topics: SinkTopics; stateDir: string; name: string }, over = {}) {
    const cfg = parseSinksConfig(
      await sinksConfig(
        at.topics,
        at.stateDir,
        { [at.name]: { type: 'slack', webhookUrl: { env }, startFrom: 'earliest', ...over } },
        [{ to: [at.name] }],
      ),
    );
    return runSinks(cfg, kafka());
  }

  test('a 503 outage with no attempt limit: SIGTERM mid-outage commits nothing; every alert once after', {
    timeout: 60_000,
  }, async (t) => {
    let up = false;
    const hook = await webhook(() => (up ? { status: 200 } : { status: 503, body: 'service unavailable' }));
    const at = {
      topics: await sinkTopics(kafka()),
      stateDir: path.join(await tempDir('edr-sinks-outage'), 'state'),
      name: unique('outage'),
    };
    // Short pauses so the old limit of 10 attempts would be spent many times over; no maxAttempts (the default).
    const fast = { retry: { initialBackoffMs: 20, maxBackoffMs: 100 }, messagesPerSecond: 0 };
    const ids = (from: number, to: number) =>
      Array.from({ length: to - from }, (_, i) => alertN(from + i, { ruleId: `rule-${from + i}` }));
    // The first run is the command itself, stopped by SIGTERM in the middle of the outage.
    const file = await writeYaml(
      path.dirname(at.stateDir),
      await sinksConfig(
        at.topics,
        at.stateDir,
        { [at.name]: { type: 'slack', webhookUrl: { env: hook.env }, startFrom: 'earliest', ...fast } },
        [{ to: [at.name] }],
      ),
    );
    const first = edrChild(['sinks', '--config', file]);
    let r: Router | undefined;
    try {
      await publishAlerts(kafka(), at.topics.alerts, ids(0, 6));
      await waitFor('many failed attempts', () => hook.seen.length >= 40, 20_000);
      const t0 = Date.now();
      first.kill('SIGTERM');
      assert.equal(await first.exited, 0, first.out());
      const stopMs = Date.now() - t0;
      t.diagnostic(`stopped by SIGTERM in ${stopMs} ms, after ${hook.seen.length} failed attempts`);
      assert.ok(stopMs < 5000, `stopped in ${stopMs} ms`);
      const lag = await kafka().lag(`edr-sink-${at.name}`, at.topics.alerts);
      assert.equal(
        lag.reduce((n, l) => n + l.lag, 0),
        6,
        'nothing was committed during the outage',
      );
      assert.equal(await topicSize(kafka(), at.topics.undeliverable), 0, 'nothing parked');
      // More alerts during the outage, then the peer comes back and the sink restarts.
      await publishAlerts(kafka(), at.topics.alerts, ids(6, 10));
      up = true;
      r = await start(hook.env, at, fast);
      await waitFor('every alert delivered', () => deliveriesById(hook.seen).size >= 10, 30_000);
      await new Promise((res) => setTimeout(res, 1000));
    } finally {
      first.kill('SIGKILL');
      await r?.stop();
      await hook.close();
    }
    const failed = hook.seen.filter((s) => s.status === 503).length;
    t.diagnostic(
      `503 answers ${failed}; deliveries by alert: ${JSON.stringify([...deliveriesById(hook.seen)])}`,
    );
    assertDeliveredOnce(hook.seen, ids(0, 10));
    assert.equal(await topicSize(kafka(), at.topics.undeliverable), 0, 'nothing parked');
  });

  test('a member retrying through an outage lets a rebalance complete at once and stays in its group', {
    timeout: 90_000,
  }, async (t) => {
    const hook = await webhook(() => ({ status: 503 }));
    const at = {
      topics: await sinkTopics(kafka()),
      stateDir: path.join(await tempDir('edr-sinks-rebalance'), 'state'),
      name: unique('rebalance'),
    };
    const r = await start(hook.env, at, {
      retry: { initialBackoffMs: 50, maxBackoffMs: 200 },
      messagesPerSecond: 0,
    });
    let other: Awaited<ReturnType<KafkaTransport['consume']>> | undefined;
    try {
      // Twelve hosts (the record key): alerts on every partition.
      const alerts = Array.from({ length: 12 }, (_, i) => {
        const a = alertN(i, { ruleId: `rule-${i}` });
        return { ...a, event: { ...a.event, hostId: `host-${i}` } };
      });
      await publishAlerts(kafka(), at.topics.alerts, alerts);
      const ends = await kafka().endOffsets(at.topics.alerts);
      assert.ok(
        ends.every((p) => p.offset > 0),
        JSON.stringify(ends),
      );
      await waitFor('the sink retrying', () => hook.seen.length >= 5);
      assert.ok(r.sinks[0]!.alertsWaiting() >= 1, 'the alerts being retried are counted as waiting');
      // A second member joins the sink's group (a second router process): the group rebalances.
      const t0 = Date.now();
      other = await kafka().consume({
        groupId: `edr-sink-${at.name}`,
        topics: [at.topics.alerts],
        // Holds what it gets without handling it, until stopped.
        handler: async (b) => {
          await abortableDelay(60_000, b.signal);
          throw new EdrError('EDR_TEST_NOT_HANDLED', 'left to the sink', { retryable: true });
        },
      });
      const joined = other;
      // Without giving up the batch in hand, the retrying member would hold the rebalance for its whole timeout.
      await waitFor('the new member assigned', () => joined.assignments().length > 0, 60_000);
      const ms = Date.now() - t0;
      t.diagnostic(`rebalance completed in ${ms} ms`);
      assert.ok(ms < 15_000, `the rebalance took ${ms} ms`);
      assert.ok(
        r.sinks[0]!.consumption.assignments().length > 0,
        'the retrying member is still in the group',
      );
      // Every partition has alerts (below), so whichever the sink kept, it goes on retrying them.
      const seen = hook.seen.length;
      await waitFor('the sink retrying again', () => hook.seen.length > seen);
    } finally {
      await r.stop();
      await other?.stop();
      await hook.close();
    }
    assert.equal(await topicSize(kafka(), at.topics.undeliverable), 0, 'nothing parked');
  });

  test('a permanent refusal (400 invalid_payload) still parks at once with the default retry policy', {
    timeout: 30_000,
  }, async () => {
    const hook = await webhook(() => ({ status: 400, body: 'invalid_payload' }));
    const at = {
      topics: await sinkTopics(kafka()),
      stateDir: path.join(await tempDir('edr-sinks-refused'), 'state'),
      name: unique('refused'),
    };
    const r = await start(hook.env, at, { messagesPerSecond: 0 });
    try {
      await publishAlerts(
        kafka(),
        at.topics.alerts,
        [0, 1].map((i) => alertN(i, { ruleId: `rule-${i}` })),
      );
      const parked = await readTopic(kafka(), at.topics.undeliverable, (got) => got.length >= 2);
      assert.deepEqual(parked.map((p) => p.key?.toString()).sort(), ['alert-0', 'alert-1']);
      for (const p of parked) {
        assert.equal(p.headers['edr-error-code']?.toString(), 'EDR_SINK_REJECTED');
        assert.match(p.headers['edr-error']?.toString() ?? '', /HTTP 400 invalid_payload/);
        assert.equal(p.headers['edr-attempts']?.toString(), '1');
      }
      assert.equal(hook.seen.length, 2, 'one attempt per alert');
    } finally {
      await r.stop();
      await hook.close();
    }
  });
});
