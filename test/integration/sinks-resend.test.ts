/**
 * `edr sinks resend` over the real broker: alerts parked by a Slack sink whose webhook refuses them (404) are
 * re-delivered, after the webhook is fixed, to a local HTTP server through the command itself, selected by rule
 * and by time range; each alert arrives exactly once however often and however the resend runs. The same for a
 * file sink through `resend()`: parked while its file was a planted symlink, resent once the link is gone.
 */
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { Alert } from '../../schemas/types.js';
import { parseSinksConfig } from '../../sinks/config.js';
import { runSinks } from '../../sinks/main.js';
import { resend } from '../../sinks/resend.js';
import { unique, waitFor } from '../harness/names.js';
import {
  alertN,
  assertDeliveredOnce,
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

/** `edr ARGS` run to its end. */
async function edr(args: string[]): Promise<{ code: number | null; out: string }> {
  const c = edrChild(args);
  const code = await c.exited;
  return { code, out: c.out() };
}

/** The summary line's numbers. */
function summaryOf(out: string): Record<string, number> {
  const m = /resend: selected (\d+), delivered (\d+), already delivered (\d+), failed (\d+)/.exec(out);
  assert.ok(m, out);
  return { selected: Number(m[1]), delivered: Number(m[2]), already: Number(m[3]), failed: Number(m[4]) };
}

describe('sinks: resend', () => {
  const kafka = fileTransport('sinks-resend-test');

  /** Runs the router over `sinks` until `parked` records are on the undeliverable topic. */
  async function park(topics: SinkTopics, stateDir: string, sinks: Record<string, unknown>, alerts: Alert[]) {
    const before = await topicSize(kafka(), topics.undeliverable);
    const cfg = parseSinksConfig(await sinksConfig(topics, stateDir, sinks, [{ to: Object.keys(sinks) }]));
    const r = await runSinks(cfg, kafka());
    try {
      await publishAlerts(kafka(), topics.alerts, alerts);
      await waitFor(
        'alerts parked',
        async () => (await topicSize(kafka(), topics.undeliverable)) >= before + alerts.length,
      );
    } finally {
      await r.stop();
    }
  }

  test('by rule, then by time range, through the command: each alert once; again: nothing twice', {
    timeout: 90_000,
  }, async (t) => {
    const broken = await webhook(() => ({ status: 404, body: 'no_service' }));
    const fixed = await webhook(() => ({ status: 200 }));
    const topics = await sinkTopics(kafka());
    const dir = await tempDir('edr-sinks-resend');
    const stateDir = path.join(dir, 'state');
    const name = unique('soc');
    const slack = (env: string) => ({
      [name]: { type: 'slack', webhookUrl: { env }, messagesPerSecond: 0, startFrom: 'earliest' },
    });
    const a = (i: number, rule: string) => alertN(i, { ruleId: rule });
    const early = [a(0, 'rule-a'), a(1, 'rule-a'), a(2, 'rule-b'), a(3, 'rule-b')];
    const late = [a(4, 'rule-a'), a(5, 'rule-c')];
    try {
      await park(topics, stateDir, slack(broken.env), early);
      await new Promise((r) => setTimeout(r, 50));
      const between = Date.now();
      await new Promise((r) => setTimeout(r, 50));
      await park(topics, stateDir, slack(broken.env), late);
      // A second sink instance's parked alert is left alone when resending the first one's.
      await park(topics, stateDir, { other: { type: 'slack', webhookUrl: { env: broken.env } } }, [
        a(6, 'rule-a'),
      ]);
      assert.equal(broken.delivered().length, 0);
      assert.equal(fixed.seen.length, 0);
      // Before the fix: each selected alert fails again, is counted, and stays parked for the next run.
      const unfixed = await writeYaml(
        dir,
        await sinksConfig(topics, stateDir, slack(broken.env), [{ to: [name] }]),
      );
      const tooEarly = await edr(['sinks', 'resend', '--config', unfixed, '--rule', 'rule-c']);
      t.diagnostic(`before the fix, --rule rule-c: ${tooEarly.out.trim().split('\n').at(-1)}`);
      assert.equal(tooEarly.code, 1, tooEarly.out);
      assert.deepEqual(summaryOf(tooEarly.out), { selected: 1, delivered: 0, already: 0, failed: 1 });
      // The fix: the webhook is replaced in the config.
      const file = await writeYaml(
        dir,
        await sinksConfig(topics, stateDir, slack(fixed.env), [{ to: [name] }]),
      );

      const byRule = await edr(['sinks', 'resend', '--config', file, '--sink', name, '--rule', 'rule-a']);
      t.diagnostic(`--rule rule-a: ${byRule.out.trim()}`);
      assert.equal(byRule.code, 0, byRule.out);
      assert.deepEqual(summaryOf(byRule.out), { selected: 3, delivered: 3, already: 0, failed: 0 });
      assertDeliveredOnce(fixed.seen, [early[0]!, early[1]!, late[0]!]);

      const byTime = await edr([
        'sinks',
        'resend',
        '--config',
        file,
        '--to',
        new Date(between).toISOString(),
      ]);
      t.diagnostic(`--to ${new Date(between).toISOString()}: ${byTime.out.trim()}`);
      assert.equal(byTime.code, 0, byTime.out);
      assert.deepEqual(summaryOf(byTime.out), { selected: 4, delivered: 2, already: 2, failed: 0 });

      const rest = await edr(['sinks', 'resend', '--config', file, '--from', String(between)]);
      t.diagnostic(`--from ${between}: ${rest.out.trim()}`);
      assert.deepEqual(summaryOf(rest.out), { selected: 2, delivered: 1, already: 1, failed: 0 });

      const again = await edr(['sinks', 'resend', '--config', file]);
      t.diagnostic(`again, everything: ${again.out.trim()}`);
      assert.deepEqual(summaryOf(again.out), { selected: 6, delivered: 0, already: 6, failed: 0 });
      assertDeliveredOnce(fixed.seen, [...early, ...late]);
    } finally {
      await broken.close();
      await fixed.close();
    }
  });

  test('a file sink: parked while its folder was a planted symlink, resent once after; a second run sends nothing', {
    timeout: 60_000,
  }, async () => {
    const topics = await sinkTopics(kafka());
    const dir = await tempDir('edr-sinks-resend-file');
    const out = path.join(dir, 'out');
    const stateDir = path.join(dir, 'state');
    const name = unique('archive');
    // The file's folder is a planted symlink leading out of the directory: every write is refused for good.
    const sinks = { [name]: { type: 'file', directory: out, file: 'sub/alerts.jsonl' } };
    const elsewhere = path.join(dir, 'elsewhere');
    await mkdir(elsewhere, { recursive: true });
    await mkdir(out, { recursive: true });
    await symlink(elsewhere, path.join(out, 'sub'));
    const alerts = [0, 1, 2].map((i) => alertN(i, { ruleId: `rule-${i}` }));
    await park(topics, stateDir, sinks, alerts);
    const parked = await readTopic(kafka(), topics.undeliverable, (got) => got.length >= 3);
    assert.ok(parked.every((p) => p.headers['edr-error-code']?.toString() === 'EDR_SINK_FILE_PATH'));
    await rm(path.join(out, 'sub'));
    const cfg = parseSinksConfig(await sinksConfig(topics, stateDir, sinks, [{ to: [name] }]));
    const first = await resend(cfg, kafka());
    assert.deepEqual(first, { selected: 3, delivered: 3, alreadyDelivered: 0, failed: 0 });
    const second = await resend(cfg, kafka());
    assert.deepEqual(second, { selected: 3, delivered: 0, alreadyDelivered: 3, failed: 0 });
    const lines = (await readFile(path.join(out, 'sub', 'alerts.jsonl'), 'utf8')).trim().split('\n');
    assert.deepEqual(lines.map((l) => (JSON.parse(l) as { alertId: string }).alertId).sort(), [
      'alert-0',
      'alert-1',
      'alert-2',
    ]);
    assert.deepEqual(await readdir(elsewhere), [], 'nothing was written where the symlink led');
  });
});
