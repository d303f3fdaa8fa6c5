/**
 * `edr detector --config FILE`: one detector worker. Loads the rules (directory and rules topic) before taking
 * partitions, then runs the transactional batch loop until SIGINT/SIGTERM, which finish the batch in hand.
 */
import { commandArgs } from '../infra/command-args.js';
import { loadConfig } from '../infra/config.js';
import { KafkaTransport } from '../infra/kafka/transport.js';
import { createLogger } from '../infra/log.js';
import { settled } from '../infra/retry.js';
import { type Consumption, requireTopics, type TopicConfig, type Transport } from '../infra/transport.js';
import { topics as table } from '../schemas/topics.js';
import { type DetectorConfig, detectorConfigSchema } from './config.js';
import { trustedKeys } from './rule-signing.js';
import { RuleStore } from './rule-store.js';
import { followTrustedRules } from './rules-topic.js';
import { detectorMetrics, startTelemetry } from './telemetry.js';
import { DetectorWorker } from './worker.js';

const USAGE = `usage: edr detector --config FILE

  --config FILE   detector config (YAML): kafka, topics, rules.dir, metrics, ... (see detector/config.ts)
`;

/** The topics the detector writes or reads, sized from the table; the intermediate ones follow the input. */
export async function ensureTopics(transport: Transport, c: DetectorConfig): Promise<number> {
  const base: TopicConfig[] = [
    { name: c.topics.input, partitions: table.raw.partitions, retentionMs: table.raw.retentionMs },
    { name: c.topics.alerts, partitions: table.alerts.partitions, retentionMs: table.alerts.retentionMs },
    { name: c.topics.rules, partitions: 1, cleanupPolicy: 'compact', retentionMs: -1 },
    { name: c.topics.audit, partitions: table.audit.partitions, retentionMs: table.audit.retentionMs },
    { name: c.topics.deadLetter, partitions: 1, retentionMs: table.deadLetter.retentionMs },
  ];
  await transport.createTopics(base);
  const partitions = (await settled(() => transport.endOffsets(c.topics.input))).length;
  await transport.createTopics([
    { name: c.topics.correlation, partitions, retentionMs: table.correlation.retentionMs },
    {
      name: c.topics.changelog,
      partitions,
      cleanupPolicy: table.changelog.cleanupPolicy,
      retentionMs: table.changelog.retentionMs,
    },
  ]);
  return (await settled(() => transport.endOffsets(c.topics.changelog))).length;
}

export async function runDetector(config: DetectorConfig, signal: AbortSignal): Promise<void> {
  const log = createLogger({ component: 'detector', detectorId: config.detectorId });
  const telemetry = config.metrics ? await startTelemetry(config.metrics) : undefined;
  if (config.metrics)
    log.info('metrics endpoint', { url: `http://${config.metrics.host}:${config.metrics.port}/metrics` });
  const metrics = detectorMetrics();
  const transport = new KafkaTransport(config.kafka, log.child({ component: 'kafka' }));
  const store = new RuleStore({
    dir: config.rules.dir,
    minLevel: config.rules.minLevel,
    limits: config.rules.limits,
    log,
    onChange: (snap) => metrics.setRuleSetVersion(snap.version),
  });
  metrics.setRuleSetVersion(store.current.version);
  let rules: Consumption | undefined;
  let worker: DetectorWorker | undefined;
  let lagTimer: NodeJS.Timeout | undefined;
  try {
    if (!config.createTopics) await requireTopics(transport, Object.values(config.topics), 'detector');
    const changelogPartitions = config.createTopics
      ? await ensureTopics(transport, config)
      : (await settled(() => transport.endOffsets(config.topics.changelog))).length;
    if (config.rules.dir !== undefined) store.watch(config.rules.pollMs);
    if (config.rules.topic) {
      const f = await followTrustedRules({
        transport,
        topic: config.topics.rules,
        groupPrefix: `${config.groupId}-rules-${config.detectorId}`,
        trusted: trustedKeys(config.rules.publicKeys),
        store,
        detectorId: config.detectorId,
        auditTopic: config.topics.audit,
        metrics,
        log,
      });
      rules = f.consumption;
      log.info('following the rules topic', {
        topic: config.topics.rules,
        trustedKeys: config.rules.publicKeys.map((k) => k.id),
      });
      await f.ready;
    }
    log.info('rules ready', {
      version: store.current.version,
      rules: store.current.rules.length,
      belowMinLevel: store.current.belowLevel.size,
      minLevel: config.rules.minLevel,
    });
    worker = new DetectorWorker({
      transport,
      store,
      groupId: config.groupId,
      detectorId: config.detectorId,
      topics: config.topics,
      changelogPartitions,
      maxBatchRecords: config.maxBatchRecords,
      partitionConcurrency: config.partitionConcurrency,
      members: config.membersPerWorker,
      evaluationThreads: config.evaluationThreads,
      disableRuleAfterHosts: config.disableRuleAfterHosts,
      maxAlertBytes: config.maxAlertBytes,
      maxGroups: config.correlation.maxGroups,
      maxAlertsPerBatch: config.maxAlertsPerBatch,
      health: config.health.enabled,
      silentAfterMs: config.health.silentAfterMs,
      maxTrackedHosts: config.health.maxHosts,
      maxEventsPerGroup: config.correlation.maxEventsPerGroup,
      maxClockSkewMs: config.correlation.maxClockSkewMs,
      maxChangelogRecordBytes: config.correlation.maxChangelogRecordBytes,
      restoreTimeoutMs: config.correlation.restoreTimeoutMs,
      metrics,
      log,
    });
    await worker.start();
    log.info('detector started', { group: config.groupId, input: config.topics.input });
    lagTimer = setInterval(() => {
      transport
        .lag(config.groupId, config.topics.input)
        .then((ls) => {
          for (const l of ls) metrics.setLag(l.topic, l.partition, l.lag);
        })
        .catch(() => {});
    }, 5000);
    lagTimer.unref();
    const w = worker;
    await new Promise<void>((resolve, reject) => {
      if (signal.aborted) resolve();
      signal.addEventListener('abort', () => resolve(), { once: true });
      w.done.then(resolve, reject);
    });
  } finally {
    if (lagTimer) clearInterval(lagTimer);
    store.stop();
    await worker?.stop().catch((err) => log.warn('stopping worker failed', { err }));
    await rules?.stop().catch(() => {});
    await transport.close();
    await telemetry?.close();
    log.info('detector stopped');
  }
}

export const command = {
  summary: 'run a detector worker: raw events → alerts, transactional, hot rules',
  async run(argv: string[]): Promise<number> {
    const args = commandArgs(argv, {
      usage: USAGE,
      options: { config: { type: 'string' } },
      required: ['config'],
    });
    if (typeof args === 'number') return args;
    const config = loadConfig(detectorConfigSchema, args.values.config);
    const ac = new AbortController();
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => ac.abort());
    await runDetector(config, ac.signal);
    return 0;
  },
};
