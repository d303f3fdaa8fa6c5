/**
 * Alert size against a real broker. An event with a 900 KB argv matching a rule gives one alert under the
 * detector's maxAlertBytes, marked truncated, that the file sink delivers. And a record the broker still refuses
 * as too large (an alerts topic whose max.message.bytes is below the alert) is dead-lettered with the reason in
 * the batch's transaction: the good alerts around it commit exactly once and the worker goes on.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, test } from 'node:test';
import { alertId } from '../../detector/alerts.js';
import { RuleStore } from '../../detector/rule-store.js';
import { detectorMetrics } from '../../detector/telemetry.js';
import { DetectorWorker, type WorkerOptions } from '../../detector/worker.js';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import type { Logger } from '../../infra/log.js';
import { deadLetterHeaders } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import type { ExecveEvent } from '../../schemas/types.js';
import { parseSinksConfig } from '../../sinks/config.js';
import { runSinks } from '../../sinks/main.js';
import { sampleEvent } from '../fixtures/events.js';
import { testTransport } from '../harness/broker.js';
import { collectAlerts, containsRule, drained, testTopics, watchOutputs } from '../harness/detector.js';
import { unique, waitFor } from '../harness/names.js';
import { sinksConfig, tempDir } from './sinks-harness.js';

const opened: Array<{ close(): Promise<void> }> = [];
after(async () => {
  for (const c of opened.reverse()) await c.close().catch(() => {});
});

const noop = () => {};
const quiet: Logger = { debug: noop, info: noop, warn: noop, error: noop, child: () => quiet };
const RULE_ID = '5d3c0e0a-0000-4000-8000-00000000e301';
const codec = projectCodec();

async function setUp(name: string, alertsMaxMessageBytes?: number) {
  const t: KafkaTransport = await testTransport(name);
  opened.push(t);
  const topics = testTopics(unique(name));
  await t.createTopics([
    { name: topics.input, partitions: 1 },
    {
      name: topics.alerts,
      partitions: 1,
      ...(alertsMaxMessageBytes === undefined ? {} : { maxMessageBytes: alertsMaxMessageBytes }),
    },
    { name: topics.audit, partitions: 1 },
    { name: topics.deadLetter, partitions: 1 },
    { name: topics.correlation, partitions: 1 },
    { name: topics.changelog, partitions: 1, cleanupPolicy: 'compact', retentionMs: -1 },
  ]);
  const store = new RuleStore({ log: quiet });
  store.applyTopic([{ key: RULE_ID, value: containsRule(RULE_ID, 'edr-known-bad') }]);
  const group = unique('edr-detector');
  const options: WorkerOptions = {
    transport: t,
    store,
    groupId: group,
    detectorId: name,
    topics,
    changelogPartitions: 1,
    maxBatchRecords: 100,
    partitionConcurrency: 1,
    members: 1,
    evaluationThreads: 1,
    maxGroups: 100,
    restoreTimeoutMs: 5000,
    metrics: detectorMetrics(),
    log: quiet,
  };
  const worker = new DetectorWorker(options);
  await worker.start();
  opened.push({ close: () => worker.stop() });
  const producer = await t.producer();
  opened.push(producer);
  const publish = (events: ExecveEvent[]) =>
    producer.publish(
      events.map((e) => ({
        topic: topics.input,
        key: e.hostId,
        value: codec.encode('dev.edr.v1.ExecveEvent', e),
      })),
    );
  return { t, topics, group, publish };
}

const hit = (seq: number, extra: string[] = []) =>
  sampleEvent({ seq: BigInt(seq), argv: ['sh', '-c', `echo edr-known-bad ${seq}`, ...extra] });

test('a 900 KB argv gives one alert under maxAlertBytes, marked truncated, delivered by the file sink', {
  timeout: 120_000,
}, async () => {
  const { t, topics, publish } = await setUp('alert-size');
  // 900 KB of arguments, the match in the middle of them.
  const filler = Array.from({ length: 900 }, (_, i) => `${i}:${'x'.repeat(1000)}`);
  const big = sampleEvent({
    seq: 1n,
    argv: ['sh', ...filler.slice(0, 450), 'edr-known-bad', ...filler.slice(450)],
    parentCommandLine: 'p'.repeat(20_000),
  });
  await publish([big]);
  const { alerts, consumption } = await collectAlerts(t, topics.alerts, unique('alerts'));
  opened.push({ close: () => consumption.stop() });
  await waitFor('the alert', () => alerts.length >= 1, 60_000);
  const { alert, record } = alerts[0]!;
  assert.ok(record.value!.length <= 256 * 1024, `${record.value!.length} bytes`);
  assert.equal(alert.truncated, true);
  assert.equal(alert.alertId, alertId(RULE_ID, big), 'the id of the whole event');
  assert.equal(alert.event.argvTruncated, true);
  assert.ok(alert.event.argv.length < big.argv.length);
  assert.deepEqual(alert.event.argv, big.argv.slice(0, alert.event.argv.length), 'the first arguments');
  assert.ok(alert.event.parentCommandLine!.length < 20_000);
  assert.ok(alert.matchedFields[0]!.value.length < 20_000);

  // The file sink delivers it.
  const dir = await tempDir('edr-alert-size');
  const out = path.join(dir, 'out');
  const sinkTopics = {
    alerts: topics.alerts,
    undeliverable: unique('undeliverable'),
    deadLetter: unique('sinks-dead'),
  };
  // As the operator would have: the router does not create the topics it writes.
  await t.createTopics(
    [sinkTopics.undeliverable, sinkTopics.deadLetter].map((name) => ({ name, partitions: 1 })),
  );
  const cfg = parseSinksConfig(
    await sinksConfig(sinkTopics, path.join(dir, 'state'), { archive: { type: 'file', directory: out } }, [
      { to: ['archive'] },
    ]),
  );
  const router = await runSinks(cfg, t, { log: quiet });
  opened.push({ close: () => router.stop() });
  const lines = async () => {
    try {
      const files = (await readdir(out)).filter((f) => f.startsWith('alerts.jsonl'));
      const text = (await Promise.all(files.map((f) => readFile(path.join(out, f), 'utf8')))).join('');
      return text.split('\n').filter((l) => l !== '');
    } catch {
      return [];
    }
  };
  await waitFor('the sink to write the alert', async () => (await lines()).length >= 1, 30_000);
  const line = JSON.parse((await lines())[0]!) as { alertId: string; truncated: boolean };
  assert.equal(line.alertId, alert.alertId);
  assert.equal(line.truncated, true);
});

test('an alert the broker refuses as too large is dead-lettered with the reason; the others commit once and the worker goes on', {
  timeout: 120_000,
}, async () => {
  // The alerts topic takes 64 KB; a 120 KB alert (60 KB argv, matched again as the command line) is under
  // maxAlertBytes (not cut), so the broker refuses it.
  const { t, topics, group, publish } = await setUp('alert-refused', 64 * 1024);
  const large = hit(2, ['y'.repeat(60_000)]);
  const batch = [hit(1), large, hit(3)];
  await publish(batch);
  const { alerts, dead, close } = await watchOutputs(t, topics);
  opened.push({ close });
  await waitFor('2 alerts and a dead letter', () => alerts.length >= 2 && dead.length >= 1, 60_000);
  await drained(t, group, topics.input);
  assert.deepEqual(
    alerts.map((a) => a.alert.alertId).sort(),
    [alertId(RULE_ID, batch[0]!), alertId(RULE_ID, batch[2]!)].sort(),
  );
  assert.equal(dead.length, 1);
  const d = dead[0]!;
  assert.equal(d.headers[deadLetterHeaders.errorCode]?.toString(), 'EDR_TRANSPORT_RECORD_TOO_LARGE');
  assert.match(
    d.headers[deadLetterHeaders.error]?.toString() ?? '',
    new RegExp(
      `refused a \\d+-byte record for ${topics.alerts.replaceAll('.', '\\.')} as too large \\(MESSAGE_TOO_LARGE\\)`,
    ),
  );
  assert.equal(
    codec.decodeAs('dev.edr.v1.Alert', d.value!).alertId,
    alertId(RULE_ID, large),
    'the alert itself',
  );
  // Not fatal: the next record alerts.
  await publish([hit(4)]);
  await waitFor('the next alert', () => alerts.length >= 3, 30_000);
  assert.equal(alerts[2]!.alert.alertId, alertId(RULE_ID, hit(4)));
});
