/**
 * Slack sink over the real broker against a local HTTP server standing in for the incoming webhook: the Block
 * Kit body, 429 with Retry-After then 500s (waits as told, each alert delivered once), 404 parks alerts on the
 * undeliverable topic, dedup across a restart, and a storm of 10,000 identical alerts folded into a handful.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import { repoRoot } from '../../infra/paths.js';
import type { Alert } from '../../schemas/types.js';
import { parseSinksConfig } from '../../sinks/config.js';
import { runSinks } from '../../sinks/main.js';
import { createRedactor } from '../../sinks/redact.js';
import { slackPayload } from '../../sinks/slack.js';
import { stopOwnBroker, testTransport } from '../harness/broker.js';
import { unique, waitFor } from '../harness/names.js';
import {
  alertIdOf,
  alertN,
  publishAlerts,
  readTopic,
  type Seen,
  sinksConfig,
  sinkTopics,
  tempDir,
  webhook,
  writeYaml,
} from './sinks-harness.js';

/** "(×N)" in a message's fallback text, or 1. */
function countOf(s: Seen): number {
  const m = /\(×(\d+)\)/.exec(s.body.text);
  return m ? Number(m[1]) : 1;
}

describe('sinks: slack', () => {
  let transport: KafkaTransport;
  before(async () => {
    transport = await testTransport('sinks-slack-test');
  });
  after(async () => {
    await transport.close();
    await stopOwnBroker();
  });

  async function router(
    hook: { env: string },
    over: Record<string, unknown> = {},
    at?: { topics: Awaited<ReturnType<typeof sinkTopics>>; stateDir: string; name: string },
  ) {
    const topics = at?.topics ?? (await sinkTopics(transport));
    const stateDir = at?.stateDir ?? path.join(await tempDir('edr-sinks-slack'), 'state');
    const name = at?.name ?? unique('soc');
    const cfg = parseSinksConfig(
      await sinksConfig(
        topics,
        stateDir,
        {
          [name]: {
            type: 'slack',
            webhookUrl: { env: hook.env },
            ruleUrl: 'https://rules.example/{ruleId}',
            retry: { initialBackoffMs: 50, maxBackoffMs: 200 },
            messagesPerSecond: 0,
            startFrom: 'earliest',
            ...over,
          },
        },
        [{ to: [name], minLevel: 'medium' }],
      ),
    );
    const r = await runSinks(cfg, transport);
    return { r, topics, stateDir, name };
  }

  test('posts the Block Kit message, redacted, with the rule author and MITRE links', {
    timeout: 30_000,
  }, async () => {
    const hook = await webhook(() => ({ status: 200 }));
    const { r, topics } = await router(hook);
    try {
      const a: Alert = alertN(1, {
        event: {
          ...alertN(1).event,
          argv: ['mysql', '-u', 'root', '--password=hunter2', 'https://bob:s3cret@db.example/x'],
        },
      });
      const low = alertN(2, { ruleLevel: 'low' }); // below the route's minimum level
      await publishAlerts(transport, topics.alerts, [low, a]);
      await waitFor('one webhook call', () => hook.seen.length >= 1);
      await new Promise((res) => setTimeout(res, 500));
      assert.equal(hook.seen.length, 1);
      const redacted = createRedactor().alert(a);
      const expected = slackPayload(
        { folds: [{ key: '', alerts: [redacted], firstSeenNs: a.event.timeNs, lastSeenNs: a.event.timeNs }] },
        { ruleUrl: 'https://rules.example/{ruleId}' },
      );
      assert.deepEqual(hook.seen[0]!.body, JSON.parse(JSON.stringify(expected)));
      const text = JSON.stringify(hook.seen[0]!.body);
      assert.ok(!text.includes('hunter2') && !text.includes('s3cret'), text);
      assert.match(text, /Rule by EDR project/);
      assert.match(text, /https:\/\/attack\.mitre\.org\/techniques\/T1059\/004\//);
      assert.match(text, /https:\/\/rules\.example\/00000000-0000-4000-8000-000000000001/);
    } finally {
      await r.stop();
      await hook.close();
    }
  });

  test('429 with Retry-After, then 500s: waits as told, retries, delivers each alert once', {
    timeout: 30_000,
  }, async () => {
    const hook = await webhook((n) => {
      if (n === 0) return { status: 429, headers: { 'retry-after': '1' }, body: 'rate_limited' };
      if (n === 1 || n === 2) return { status: 500 };
      return { status: 200 };
    });
    const { r, topics } = await router(hook);
    try {
      // Three rules: three messages (not folded).
      const alerts = [0, 1, 2].map((i) => alertN(i, { ruleId: `rule-${i}` }));
      await publishAlerts(transport, topics.alerts, alerts);
      await waitFor('three deliveries', () => hook.delivered().length >= 3);
      await new Promise((res) => setTimeout(res, 500));
      assert.ok(
        hook.seen[1]!.at - hook.seen[0]!.at >= 950,
        `waited ${hook.seen[1]!.at - hook.seen[0]!.at} ms`,
      );
      assert.equal(hook.seen.length, 6);
      const ids = hook.delivered().map(alertIdOf).sort();
      assert.deepEqual(ids, ['alert-0', 'alert-1', 'alert-2']);
    } finally {
      await r.stop();
      await hook.close();
    }
  });

  test('404 parks the alerts on the undeliverable topic with the reason, and moves on', {
    timeout: 30_000,
  }, async () => {
    const hook = await webhook(() => ({ status: 404, body: 'no_service' }));
    const { r, topics, name } = await router(hook);
    try {
      const alerts = [0, 1].map((i) => alertN(i, { ruleId: `rule-${i}` }));
      await publishAlerts(transport, topics.alerts, alerts);
      const parked = await readTopic(transport, topics.undeliverable, (got) => got.length >= 2);
      assert.deepEqual(parked.map((p) => p.key?.toString()).sort(), ['alert-0', 'alert-1']);
      for (const p of parked) {
        assert.equal(p.headers['edr-error-code']?.toString(), 'EDR_SINK_REJECTED');
        assert.match(p.headers['edr-error']?.toString() ?? '', /HTTP 404 no_service/);
        assert.equal(p.headers['edr-sink']?.toString(), name);
        assert.equal(p.headers['edr-source-topic']?.toString(), topics.alerts);
      }
      assert.equal(hook.seen.length, 2, 'a permanent error is not retried');
    } finally {
      await r.stop();
      await hook.close();
    }
  });

  test('an alert delivered before a restart is not sent again when it comes again', {
    timeout: 30_000,
  }, async () => {
    const hook = await webhook(() => ({ status: 200 }));
    const alerts = [0, 1, 2].map((i) => alertN(i, { ruleId: `rule-${i}` }));
    const first = await router(hook);
    await publishAlerts(transport, first.topics.alerts, alerts);
    await waitFor('three deliveries', () => hook.delivered().length >= 3);
    await first.r.stop();
    // The same alerts again (an upstream redelivery), and one new one.
    await publishAlerts(transport, first.topics.alerts, [...alerts, alertN(3, { ruleId: 'rule-3' })]);
    const second = await router(hook, {}, first);
    try {
      await waitFor('the new alert', () => hook.delivered().length >= 4);
      await new Promise((res) => setTimeout(res, 1000));
      assert.deepEqual(hook.delivered().map(alertIdOf).sort(), ['alert-0', 'alert-1', 'alert-2', 'alert-3']);
    } finally {
      await second.r.stop();
      await hook.close();
    }
  });

  test('alerts held for a throttle summary survive SIGKILL of the router and are sent once', {
    timeout: 60_000,
  }, async () => {
    const hook = await webhook(() => ({ status: 200 }));
    const topics = await sinkTopics(transport);
    const dir = await tempDir('edr-sinks-slack-kill');
    const name = unique('held');
    const file = await writeYaml(
      dir,
      await sinksConfig(
        topics,
        path.join(dir, 'state'),
        {
          [name]: {
            type: 'slack',
            webhookUrl: { env: hook.env },
            messagesPerSecond: 0,
            startFrom: 'earliest',
            fold: { windowMs: 3_600_000 },
          },
        },
        [{ to: [name] }],
      ),
    );
    const start = () => {
      const child = spawn(
        process.execPath,
        [path.join(repoRoot, 'dist', 'cli', 'edr.js'), 'sinks', '--config', file],
        {
          stdio: ['ignore', 'ignore', 'inherit'],
          env: { ...process.env, EDR_LOG_LEVEL: 'error' },
        },
      );
      return { child, exited: new Promise<number | null>((r) => child.on('exit', (code) => r(code))) };
    };
    const first = start();
    try {
      await publishAlerts(transport, topics.alerts, [alertN(0)]);
      await waitFor('the first message', () => hook.delivered().length === 1, 30_000);
      await publishAlerts(
        transport,
        topics.alerts,
        [1, 2, 3, 4, 5].map((i) => alertN(i)),
      );
      // Held: committed, and not sent within the hour's window.
      await waitFor('the held alerts committed', async () =>
        (await transport.lag(`edr-sink-${name}`, topics.alerts)).every((l) => l.lag === 0),
      );
    } finally {
      first.child.kill('SIGKILL');
      await first.exited;
    }
    assert.equal(hook.delivered().length, 1);
    const second = start();
    try {
      await waitFor('the summary after the restart', () => hook.delivered().length >= 2, 30_000);
      await new Promise((r) => setTimeout(r, 1000));
    } finally {
      second.child.kill('SIGTERM');
      assert.equal(await second.exited, 0);
      await hook.close();
    }
    assert.deepEqual(hook.delivered().map(countOf), [1, 5]);
  });

  test('a failing sink does not hold back another', { timeout: 30_000 }, async () => {
    const down = await webhook(() => ({ status: 503 }));
    const up = await webhook(() => ({ status: 200 }));
    const topics = await sinkTopics(transport);
    const stuck = unique('stuck');
    const fine = unique('fine');
    const slack = (env: string) => ({
      type: 'slack',
      webhookUrl: { env },
      messagesPerSecond: 0,
      startFrom: 'earliest',
      retry: { maxAttempts: 1000, initialBackoffMs: 50, maxBackoffMs: 100 },
    });
    const cfg = parseSinksConfig(
      await sinksConfig(
        topics,
        path.join(await tempDir('edr-sinks-isolation'), 'state'),
        { [stuck]: slack(down.env), [fine]: slack(up.env) },
        [{ to: [stuck, fine] }],
      ),
    );
    const r = await runSinks(cfg, transport);
    try {
      await publishAlerts(
        transport,
        topics.alerts,
        [0, 1, 2].map((i) => alertN(i, { ruleId: `rule-${i}` })),
      );
      await waitFor('the healthy sink delivers all', () => up.delivered().length >= 3);
      await waitFor('the failing sink retrying', () => down.seen.length >= 2);
      assert.equal(down.delivered().length, 0);
    } finally {
      await r.stop();
      await down.close();
      await up.close();
    }
  });

  test('a storm of 10,000 identical alerts arrives as a handful of folded messages', {
    timeout: 60_000,
  }, async (t) => {
    const hook = await webhook(() => ({ status: 200 }));
    const topics = await sinkTopics(transport);
    // Identical: same rule, same host, event times within one second.
    const base = alertN(0);
    await publishAlerts(
      transport,
      topics.alerts,
      Array.from({ length: 10_000 }, (_, i) =>
        alertN(i, {
          event: { ...base.event, seq: BigInt(i), timeNs: base.event.timeNs + BigInt(i) * 100_000n },
        }),
      ),
    );
    const { r } = await router(
      hook,
      { messagesPerSecond: 5, fold: { windowMs: 1500 } },
      {
        topics,
        stateDir: path.join(await tempDir('edr-sinks-storm'), 'state'),
        name: unique('storm'),
      },
    );
    try {
      await waitFor(
        '10,000 alerts',
        () => hook.delivered().reduce((n, s) => n + countOf(s), 0) >= 10_000,
        40_000,
      );
      await new Promise((res) => setTimeout(res, 2000));
      const counts = hook.delivered().map(countOf);
      t.diagnostic(`${counts.length} messages: ${counts.join(', ')}`);
      assert.equal(
        counts.reduce((a, b) => a + b, 0),
        10_000,
      );
      assert.ok(counts.length <= 5, `${counts.length} messages: ${counts.join(', ')}`);
      const last = JSON.stringify(hook.seen[hook.seen.length - 1]!.body);
      assert.match(last, /identical alerts \(same rule and host\) folded: first seen/);
    } finally {
      await r.stop();
      await hook.close();
    }
  });
});
