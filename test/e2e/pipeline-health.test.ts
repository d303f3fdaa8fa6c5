/**
 * End to end, the pipeline blinded for real: `edr collector` with the real eBPF source, a one-page ring buffer and
 * a tiny queue, under an exec flood (test/harness/exec-storm.ts), then SIGKILLed (no STOPPED, its heartbeats
 * stop), with `edr detector` reading the audit topic. The loss raises edr-pipeline-events-lost and the silence
 * edr-pipeline-host-silent, on the alerts topic. Needs root, the addon and the storm generator; skipped when not
 * root unless EDR_E2E_REQUIRED=1.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { after, it } from 'node:test';
import { HEALTH_RULES } from '../../detector/pipeline-health.js';
import { repoRoot } from '../../infra/paths.js';
import { testBrokers, testTransport } from '../harness/broker.js';
import * as harness from '../harness/detector.js';
import { storm } from '../harness/exec-storm.js';
import { unique, waitFor } from '../harness/names.js';

const required = process.env['EDR_E2E_REQUIRED'] === '1';
const isRoot = process.getuid?.() === 0;
const cleanup: Array<() => Promise<void>> = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

it('an exec flood against a small ring buffer and a SIGKILLed collector each raise a pipeline alert', {
  skip: isRoot || required ? false : 'needs root for eBPF (EDR_E2E_REQUIRED=1 makes this a failure)',
  timeout: 180_000,
}, async () => {
  assert.ok(isRoot, 'EDR_E2E_REQUIRED=1 but not root: the eBPF source needs root');
  const t = await testTransport('pipeline-health-e2e');
  cleanup.push(() => t.close());
  const topics = harness.testTopics(unique('dphe'));
  await harness.createTestTopics(t, topics, 3);
  await t.createTopics([{ name: `${topics.input}.schemas`, partitions: 1 }]);
  const dir = harness.tempDir('edr-dphe');
  const brokers = await testBrokers();
  const detector = new harness.WorkerProcess(
    harness.writeConfig(dir, 'detector', {
      kafka: { brokers, clientId: 'detector', sessionTimeoutMs: 6000 },
      detectorId: 'e2e-health',
      groupId: unique('edr-detector'),
      topics,
      evaluationThreads: 0,
      rules: { topic: false },
      health: { silentAfterMs: 3000 },
    }),
  ).start();
  cleanup.push(() => detector.kill());
  const config = harness.writeConfig(dir, 'collector', {
    kafka: { brokers, clientId: 'e2e-health-collector' },
    // One page of ring buffer and a queue of 16 events: a flood overflows them.
    source: { type: 'ebpf', ringBufferBytes: 4096, queueMaxEvents: 16, pollTimeoutMs: 20 },
    topics: { raw: topics.input, audit: topics.audit, schemas: `${topics.input}.schemas` },
    spool: { dir: path.join(dir, 'spool') },
    publish: { lossCheckIntervalMs: 200, heartbeatIntervalMs: 500 },
  });
  let log = '';
  const collector: ChildProcess = spawn(
    process.execPath,
    [path.join(repoRoot, 'dist', 'cli', 'edr.js'), 'collector', '--config', config],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, EDR_LOG_LEVEL: 'info' } },
  );
  collector.stderr!.on('data', (d: Buffer) => {
    log += d.toString();
  });
  const exited = new Promise<void>((r) => collector.once('exit', () => r()));
  cleanup.push(async () => {
    if (collector.exitCode === null && collector.signalCode === null) collector.kill('SIGKILL');
    await exited;
  });
  const { alerts, consumption } = await harness.collectAlerts(t, topics.alerts, unique('reader'));
  cleanup.push(() => consumption.stop());
  await waitFor('the detector started', () => detector.logged('detector started') === 1, 60_000);
  await waitFor(
    `the collector connected (log:\n${log.slice(-2000)})`,
    () => log.includes('connected'),
    60_000,
  );
  // Heartbeats for a few seconds: the detector knows the host.
  await new Promise((r) => setTimeout(r, 3000));
  const flood = await storm(5000, unique('edr-flood'));
  const of = (id: string) => alerts.filter(({ alert }) => alert.ruleId === id);
  await waitFor('the loss alert', () => of(HEALTH_RULES.loss.id).length >= 1, 60_000);
  const loss = of(HEALTH_RULES.loss.id)[0]!.alert;
  const counter = (f: string) => Number(loss.matchedFields.find((m) => m.field === f)?.value ?? 0);
  console.log(
    `exec flood: ${flood.execs} execs; loss alerts ${of(HEALTH_RULES.loss.id).length}, first: ring full ` +
      `${counter('kernelRingFull')}, queue dropped ${counter('queueDropped')}, seen ${counter('kernelSeen')}`,
  );
  assert.ok(counter('kernelRingFull') + counter('queueDropped') > 0);
  assert.equal(of(HEALTH_RULES.silent.id).length, 0, 'no silence while it beats');
  collector.kill('SIGKILL');
  await exited;
  await waitFor('the silent-host alert', () => of(HEALTH_RULES.silent.id).length >= 1, 30_000);
  await new Promise((r) => setTimeout(r, 2000));
  const silent = of(HEALTH_RULES.silent.id);
  console.log(`after SIGKILL: silent-host alerts ${silent.length} (host ${silent[0]!.alert.event.hostId})`);
  assert.equal(silent.length, 1);
  assert.equal(silent[0]!.alert.event.hostId, loss.event.hostId);
  assert.equal(of(HEALTH_RULES.stopped.id).length, 0, 'a SIGKILLed collector sends no STOPPED');
});
