/**
 * `edr replay` over a time window of the audit topic: finds the matches a new rule would have had there (and only
 * there), marks them with the run id, leaves live alerts alone, filters by host, and a second run with the same
 * run id resumes from what was committed (nothing left: nothing repeated).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { alertId } from '../../detector/alerts.js';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import { repoRoot } from '../../infra/paths.js';
import type { OutRecord } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import { sampleAlert, sampleCollectorRecord, sampleEvent } from '../fixtures/events.js';
import { testBrokers, testTransport } from '../harness/broker.js';
import { collectAlerts, containsRule, createTestTopics, tempDir, testTopics } from '../harness/detector.js';
import { unique, waitFor } from '../harness/names.js';

// Closed even when a test fails, or the open clients would keep the test process alive.
const opened: KafkaTransport[] = [];
after(async () => {
  await Promise.all(opened.map((t) => t.close()));
});

const RULE_ID = '5d3c0e0a-0000-4000-8000-00000000e201';
const RULE = containsRule(RULE_ID, 'replay-marker', 'Replayed rule');
const CORRELATION_ID = '5d3c0e0a-0000-4000-8000-00000000e2c1';

/**
 * Runs `edr ARGS` to its end. Asynchronously: a synchronous spawn would stop this process's alert consumer from
 * heartbeating for the whole run, and a run longer than its session timeout then costs it a rebalance.
 */
function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const child = spawn(process.execPath, [path.join(repoRoot, 'dist', 'cli', 'edr.js'), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, EDR_LOG_LEVEL: 'error' },
  });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  return new Promise((resolve) => {
    child.once('close', (code) => resolve({ code: code ?? 1, out, err }));
  });
}

test('replay over a time window: the right matches, marked with the run id; live alerts untouched; resumable', async () => {
  const t = await testTransport('detector-replay');
  opened.push(t);
  const topics = testTopics(unique('drp'));
  await createTestTopics(t, topics);
  const brokers = (await testBrokers()).join(',');
  const codec = projectCodec();
  const hour = 3_600_000;
  const now = Date.now();
  const windows = [now - 3 * hour, now - 2 * hour, now - hour]; // before, inside, after
  const inWindow = new Set<string>();
  const inWindowHost3 = new Set<string>();
  const records: OutRecord[] = [];
  let seq = 0;
  windows.forEach((ts, w) => {
    for (let i = 0; i < 300; i++) {
      const host = `host-${i % 12}`;
      const matches = i % 10 === 0;
      const e = sampleEvent({
        hostId: host,
        hostname: host,
        seq: BigInt(++seq),
        timeNs: BigInt(ts + i) * 1_000_000n,
        argv: matches ? ['sh', '-c', `echo replay-marker ${seq}`] : ['true'],
      });
      records.push({
        topic: topics.audit,
        key: host,
        value: codec.encode('dev.edr.v1.ExecveEvent', e),
        timestampMs: ts + i,
      });
      if (w === 1 && matches) {
        inWindow.add(e.hostId + e.seq);
        if (host === 'host-3') inWindowHost3.add(e.hostId + e.seq);
      }
    }
    // Lifecycle records share the audit topic: skipped, not an error.
    records.push({
      topic: topics.audit,
      key: 'host-0',
      value: codec.encode('dev.edr.v1.CollectorRecord', sampleCollectorRecord({ hostId: 'host-0' })),
      timestampMs: ts + 500,
    });
  });
  const live = sampleAlert({ alertId: 'live-1' });
  records.push({
    topic: topics.alerts,
    key: live.event.hostId,
    value: codec.encode('dev.edr.v1.Alert', live),
  });
  const p = await t.producer();
  await p.publish(records);
  await p.close();

  const dir = tempDir('edr-drp');
  const rulesDir = path.join(dir, 'rules');
  mkdirSync(rulesDir);
  writeFileSync(path.join(rulesDir, 'r.yml'), RULE);
  // A correlation in the set is not replayed, and the summary says so (its base rule still is).
  writeFileSync(
    path.join(rulesDir, 'c.yml'),
    `title: Replayed marker twice\nid: ${CORRELATION_ID}\nlevel: high\ncorrelation:\n  type: event_count\n` +
      `  rules: [${RULE_ID}]\n  group-by: [Computer]\n  timespan: 60s\n  generate: true\n  condition:\n    gte: 2\n`,
  );
  const from = new Date(windows[1]! - 60_000).toISOString();
  const to = new Date(windows[1]! + 60_000).toISOString();
  const runId = unique('run');
  const args = ['replay', '--rules', rulesDir, '--from', from, '--to', to, '--topic', topics.audit];
  const r1 = await cli([...args, '--run-id', runId, '--alerts-topic', topics.alerts, '--brokers', brokers]);
  assert.equal(r1.code, 0, r1.out + r1.err);
  assert.match(r1.out, /complete; 300 events evaluated/);
  assert.match(r1.out, new RegExp(`\\s+30\\s+${RULE_ID}`));
  assert.match(r1.err, /records \(\d+ events\) \d+\/s lag \d+ ETA \d+s/);
  assert.match(
    r1.out,
    new RegExp(`correlations not replayed:\\n\\s+${CORRELATION_ID} \\(Replayed marker twice\\)`),
  );

  const hostRun = unique('run-h3');
  const r2 = await cli([
    ...args,
    '--run-id',
    hostRun,
    '--hosts',
    'host-3',
    '--alerts-topic',
    topics.alerts,
    '--brokers',
    brokers,
  ]);
  assert.equal(r2.code, 0, r2.out + r2.err);

  // Same run id again: everything was committed, so nothing is evaluated and nothing repeated.
  const r3 = await cli([...args, '--run-id', runId, '--alerts-topic', topics.alerts, '--brokers', brokers]);
  assert.equal(r3.code, 0, r3.out + r3.err);
  assert.match(r3.out, /complete; 0 events evaluated/);

  const { alerts, consumption } = await collectAlerts(t, topics.alerts, unique('reader'));
  const expectedTotal = 1 + inWindow.size + inWindowHost3.size;
  await waitFor('the alerts', () => alerts.length >= expectedTotal);
  await new Promise((r) => setTimeout(r, 1000));
  await consumption.stop();
  assert.equal(alerts.length, expectedTotal);
  const of = (run: string | null) => alerts.filter((a) => a.alert.replayRunId === run).map((a) => a.alert);
  assert.deepEqual(
    of(null).map((a) => a.alertId),
    ['live-1'],
    'live alerts untouched',
  );
  const main = of(runId);
  assert.deepEqual(new Set(main.map((a) => a.event.hostId + a.event.seq)), inWindow);
  for (const a of main) {
    assert.equal(a.ruleId, RULE_ID);
    assert.equal(a.alertId, alertId(RULE_ID, a.event, runId));
    assert.notEqual(a.alertId, alertId(RULE_ID, a.event));
  }
  assert.deepEqual(new Set(of(hostRun).map((a) => a.event.hostId + a.event.seq)), inWindowHost3);
  const marked = alerts.filter((a) => a.alert.replayRunId === runId);
  assert.ok(marked.every((a) => a.record.headers['edr-replay-run-id']?.toString() === runId));
  await t.close();
});

test('a replay killed midway and started again with the same run id: every match exactly once', async () => {
  const t = await testTransport('detector-replay-resume');
  opened.push(t);
  const topics = testTopics(unique('drr'));
  await createTestTopics(t, topics);
  const brokers = (await testBrokers()).join(',');
  const codec = projectCodec();
  const N = 60_000;
  const ts = Date.now() - 3_600_000;
  const expected = new Set<string>();
  const p = await t.producer();
  let chunk: OutRecord[] = [];
  for (let i = 0; i < N; i++) {
    const host = `host-${i % 24}`;
    const e = sampleEvent({
      hostId: host,
      hostname: host,
      seq: BigInt(i),
      timeNs: BigInt(ts) * 1_000_000n + BigInt(i),
      argv: i % 20 === 0 ? ['sh', '-c', `replay-marker ${i}`] : ['true', String(i)],
    });
    if (i % 20 === 0) expected.add(String(i));
    chunk.push({
      topic: topics.audit,
      key: host,
      value: codec.encode('dev.edr.v1.ExecveEvent', e),
      timestampMs: ts,
    });
    if (chunk.length === 5000) {
      await p.publish(chunk);
      chunk = [];
    }
  }
  await p.publish(chunk);
  await p.close();
  const dir = tempDir('edr-drr');
  const rulesDir = path.join(dir, 'rules');
  mkdirSync(rulesDir);
  writeFileSync(path.join(rulesDir, 'r.yml'), RULE);
  const runId = unique('run');
  const args = [
    path.join(repoRoot, 'dist', 'cli', 'edr.js'),
    'replay',
    '--rules',
    rulesDir,
    '--from',
    String(ts - 1000),
    '--topic',
    topics.audit,
    '--run-id',
    runId,
    '--alerts-topic',
    topics.alerts,
    '--parallel',
    '1',
    '--brokers',
    brokers,
  ];
  const { alerts, consumption } = await collectAlerts(t, topics.alerts, unique('reader'));
  const first = spawn(process.execPath, args, {
    stdio: 'ignore',
    env: { ...process.env, EDR_LOG_LEVEL: 'error' },
  });
  const exited = new Promise<void>((r) => first.once('exit', () => r()));
  await waitFor('the first committed replay alerts', () => alerts.length > 0, 60_000);
  first.kill('SIGKILL');
  await exited;
  const before = alerts.length;
  assert.ok(before < expected.size, `killed before the end (${before}/${expected.size})`);
  const r = await cli(args.slice(1));
  assert.equal(r.code, 0, r.out + r.err);
  assert.match(r.out, /complete/);
  await waitFor('every match', () => alerts.length >= expected.size, 60_000);
  await new Promise((res) => setTimeout(res, 1000));
  await consumption.stop();
  const seqs = alerts.map((a) => String(a.alert.event.seq));
  const twice = alerts.filter((a, i) => seqs.indexOf(String(a.alert.event.seq)) !== i);
  assert.equal(
    seqs.length,
    expected.size,
    `nothing twice; twice: ${twice.length}, e.g. ${twice
      .slice(0, 6)
      .map(
        (a) =>
          `seq ${a.alert.event.seq} ${a.alert.event.hostId} by ${a.alert.detectorId} at alerts[${a.record.partition}]:${a.record.offset}`,
      )
      .join('; ')}`,
  );
  assert.deepEqual(new Set(seqs), expected);
  assert.ok(alerts.every((a) => a.alert.replayRunId === runId));
  await t.close();
});
