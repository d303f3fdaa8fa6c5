/**
 * Issue 15's test: a ten-minute Slack 503 with default settings delivers every alert exactly once afterwards.
 * A local HTTP server stands in for the webhook and answers 503 for OUTAGE_MS of real time, then 200; alerts
 * are published before and in the middle of the outage. Afterwards the server has each alert exactly once
 * (counted by alert id) and nothing is on the undeliverable topic. Real time: the sink's default backoff (up to a
 * minute between attempts), its consumer group heartbeats and its uncommitted offsets all run as in production.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';
import { parseSinksConfig } from '../../sinks/config.js';
import { runSinks } from '../../sinks/main.js';
import { unique, waitFor } from '../harness/names.js';
import {
  alertN,
  assertDeliveredOnce,
  deliveriesById,
  fileTransport,
  publishAlerts,
  sinksConfig,
  sinkTopics,
  tempDir,
  topicSize,
  webhook,
} from './sinks-harness.js';

/** How long the webhook answers 503. */
const OUTAGE_MS = 600_000;
/** Alerts published when the outage starts, and as many again in its middle. */
const ALERTS_EACH = 10;

describe('sinks: a long outage', () => {
  const kafka = fileTransport('sinks-long-outage-test');

  test(`a ${OUTAGE_MS / 60_000}-minute Slack 503 with default settings delivers every alert exactly once`, {
    // The outage, the default backoff's last pause (at most a minute), and the deliveries at Slack's 1/s.
    timeout: OUTAGE_MS + 240_000,
  }, async (t) => {
    const topics = await sinkTopics(kafka());
    const name = unique('long-outage');
    let upAt = Number.POSITIVE_INFINITY;
    const hook = await webhook(() =>
      Date.now() >= upAt ? { status: 200 } : { status: 503, body: 'service unavailable' },
    );
    // Default delivery settings; only where a new instance starts is set, so nothing depends on join timing.
    const cfg = parseSinksConfig(
      await sinksConfig(
        topics,
        path.join(await tempDir('edr-sinks-long-outage'), 'state'),
        { [name]: { type: 'slack', webhookUrl: { env: hook.env }, startFrom: 'earliest' } },
        [{ to: [name] }],
      ),
    );
    const alerts = Array.from({ length: 2 * ALERTS_EACH }, (_, i) => alertN(i, { ruleId: `rule-${i}` }));
    const r = await runSinks(cfg, kafka());
    const startedAt = Date.now();
    upAt = startedAt + OUTAGE_MS;
    try {
      await publishAlerts(kafka(), topics.alerts, alerts.slice(0, ALERTS_EACH));
      await new Promise((res) => setTimeout(res, OUTAGE_MS / 2));
      assert.equal(hook.delivered().length, 0);
      assert.ok(r.sinks[0]!.alertsWaiting() >= 1, 'alerts waiting during the outage');
      await publishAlerts(kafka(), topics.alerts, alerts.slice(ALERTS_EACH));
      await waitFor(
        'every alert delivered after the outage',
        () => deliveriesById(hook.seen).size >= alerts.length,
        upAt - Date.now() + 200_000,
      );
      await waitFor('offsets committed', async () =>
        (await kafka().lag(`edr-sink-${name}`, topics.alerts)).every((l) => l.lag === 0),
      );
      await new Promise((res) => setTimeout(res, 2000));
    } finally {
      await r.stop();
      await hook.close();
    }
    const counts = deliveriesById(hook.seen);
    const failed = hook.seen.filter((s) => s.status === 503).length;
    const parked = await topicSize(kafka(), topics.undeliverable);
    const firstOk = hook.delivered()[0]?.at ?? Number.NaN;
    t.diagnostic(
      `outage ${OUTAGE_MS} ms; 503 answers ${failed}; first delivery ${firstOk - upAt} ms after it ended; ` +
        `alerts ${alerts.length}, delivered ${counts.size} distinct, ${[...counts.values()].reduce((a, b) => a + b, 0)} ` +
        `deliveries; parked ${parked}`,
    );
    assertDeliveredOnce(hook.seen, alerts);
    assert.equal(parked, 0, 'nothing on the undeliverable topic');
    assert.ok(failed >= 5, `the sink kept trying through the outage (${failed} attempts)`);
  });
});
