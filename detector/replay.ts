/**
 * `edr replay`: evaluates a rule set over history held in Kafka (the audit topic by default) in a consumer group
 * of its own (`edr-replay-<run id>`), from the offsets for --from to those for --to (or the end offsets captured
 * at start). Alerts carry the run id (and their ids include it), so they never mix with live ones; they are
 * written with the input offsets in one transaction per batch, so a run interrupted and started again with the
 * same run id resumes where it had committed, without repeating alerts.
 */
import { randomBytes } from 'node:crypto';
import { commandArgs } from '../infra/command-args.js';
import { loadConfig } from '../infra/config.js';
import { EdrError } from '../infra/errors.js';
import { commandKafkaConfig, kafkaUsage } from '../infra/kafka/config.js';
import { KafkaTransport } from '../infra/kafka/transport.js';
import { createLogger } from '../infra/log.js';
import { abortableDelay, settled } from '../infra/retry.js';
import type { Batch, Consumption, OutRecord, Transport } from '../infra/transport.js';
import { isLevel, LEVEL_ORDER, type Level } from '../schemas/levels.js';
import { topics as table } from '../schemas/topics.js';
import { encodedAlertRecord } from './alerts.js';
import { detectorConfigSchema } from './config.js';
import { type EvalSet, evaluateRecords } from './evaluate.js';
import { docId, RuleStore } from './rule-store.js';
import type { CompiledRule } from './sigma/engine.js';
import type { RuleLimits } from './sigma/limits.js';

const USAGE = `usage: edr replay --rules DIR --from TIME [--to TIME] [--config FILE] [--brokers LIST] [options]

  --rules DIR         the rule set to evaluate
  --from TIME         start: ISO 8601 time (2026-11-26T10:00:00Z) or epoch milliseconds
  --to TIME           end (exclusive); default: the end of the topic when the run first starts
  --topic T           audit (default), raw, or a topic name
  --hosts LIST        only events of these host ids or host names (comma-separated)
  --run-id ID         names the run (default: generated); the same id resumes an interrupted run
  --alerts-topic T    where alerts go (default: the alerts topic; alerts carry the run id)
  --parallel N        consumers in this process sharing the partitions (default 2)
  --min-level L       the least level that alerts: informational, low, medium, high, critical (default: the
                      config's rules.minLevel, else low); rules below it are not replayed
${kafkaUsage('a detector config: its kafka section, topic names and rules.minLevel are used')}
`;

export function parseTime(s: string): number {
  if (/^\d+$/.test(s)) return Number(s);
  const t = Date.parse(s);
  if (Number.isNaN(t)) throw new EdrError('EDR_DETECTOR_USAGE', `not a time: '${s}' (ISO 8601 or epoch ms)`);
  return t;
}

export interface ReplayOptions {
  transport: Transport;
  rulesDir: string;
  topic: string;
  alertsTopic: string;
  fromMs: number;
  toMs: number | undefined;
  hosts: string[] | undefined;
  runId: string;
  parallel: number;
  /** The least level that alerts (default informational: every rule); rules below it are not evaluated. */
  minLevel?: Level;
  /** What one rule may cost to load (default DEFAULT_RULE_LIMITS; a detector config's rules.limits). */
  limits?: RuleLimits | undefined;
  /** Progress line sink (stderr in the CLI). */
  progress?: (line: string) => void;
  signal?: AbortSignal;
  /** Tests only: adjusts the compiled rules before the run (to make one throw, as the worker's tests do). */
  adjustRules?: (rules: readonly CompiledRule[]) => void;
}

export interface ReplayResult {
  runId: string;
  events: number;
  matchesByRule: Map<string, number>;
  completed: boolean;
  /** Correlation rules in the rule set, which replay does not evaluate ("id (title)"). */
  skippedCorrelations: string[];
  /** Rules below the alert level, not evaluated ("id (title)"). */
  belowLevel: string[];
  /** Records skipped because a rule threw on them ... */
  skipped: number;
  /** ... and the first 100 of them ("topic/partition@offset: reason"). */
  skippedRecords: string[];
}

export async function replay(o: ReplayOptions): Promise<ReplayResult> {
  const log = createLogger({ component: 'replay', runId: o.runId });
  const store = new RuleStore({
    dir: o.rulesDir,
    log,
    limits: o.limits,
    ...(o.minLevel ? { minLevel: o.minLevel } : {}),
  });
  store.refreshDir();
  const snap = store.current;
  o.adjustRules?.(snap.rules);
  const below = snap.docs.filter((d) => snap.belowLevel.has(docId(d))).map((d) => `${docId(d)} (${d.title})`);
  if (snap.rules.length === 0) {
    throw new EdrError(
      'EDR_DETECTOR_NO_RULES',
      below.length > 0
        ? `no rule at or above level ${snap.minLevel} in ${o.rulesDir} (${below.length} below it; see --min-level)`
        : `no rule compiled from ${o.rulesDir}`,
    );
  }
  if (below.length > 0) log.warn(`rules below level ${snap.minLevel} are not replayed`, { rules: below });
  // Said, not silently dropped: the summary lists them too.
  const skippedCorrelations = snap.correlations.map((c) => `${c.id} (${c.title})`);
  if (skippedCorrelations.length > 0)
    log.warn('correlation rules are not replayed (the rules they name are)', {
      correlations: skippedCorrelations,
    });
  const groupId = `edr-replay-${o.runId}`;
  const starts = await settled(() => o.transport.offsetsForTime(o.topic, o.fromMs));
  const toMs = o.toMs;
  const stops = await settled(() =>
    toMs === undefined ? o.transport.endOffsets(o.topic) : o.transport.offsetsForTime(o.topic, toMs),
  );
  const stopAt = new Map(stops.map((s) => [s.partition, s.offset]));
  const committed = new Map(
    (await settled(() => o.transport.lag(groupId, o.topic))).map((l) => [l.partition, l.committed]),
  );
  // Where each partition stands: the next offset to evaluate (a resumed run continues from its commit).
  const pos = new Map<number, number>();
  const base = new Map<number, number>();
  for (const s of starts) {
    const c = committed.get(s.partition) ?? -1;
    const at = c >= 0 ? c : s.offset;
    pos.set(s.partition, at);
    base.set(s.partition, at);
  }
  const remaining = () => [...pos].reduce((a, [p, at]) => a + Math.max(0, (stopAt.get(p) ?? 0) - at), 0);
  const total = remaining();
  const hosts = o.hosts === undefined ? undefined : new Set(o.hosts);
  const matchesByRule = new Map<string, number>();
  let events = 0;
  let skipped = 0;
  const skippedRecords: string[] = [];
  const started = Date.now();
  let finish!: () => void;
  const finished = new Promise<void>((r) => {
    finish = r;
  });
  // Done when every record up to the stop offsets is evaluated *and* its transaction committed: the group's
  // committed offsets reach what the transforms covered (`pos`). A batch whose transaction fails is evaluated
  // again, so waiting on commits (not on transforms) is what makes an interrupted run's alerts complete.
  let checking = false;
  let ended = false;
  const check = () => {
    if (checking || remaining() > 0) return;
    checking = true;
    void (async () => {
      while (!ended) {
        const lag = await o.transport.lag(groupId, o.topic).catch(() => undefined);
        const committed = new Map((lag ?? []).map((l) => [l.partition, l.committed]));
        const behind = [...pos].some(([p, at]) => at > (base.get(p) ?? 0) && (committed.get(p) ?? -1) < at);
        if (lag !== undefined && !behind) return finish();
        await abortableDelay(100);
      }
    })();
  };
  check();
  const set: EvalSet = {
    engine: snap.engine,
    rules: snap.rules,
    version: snap.version,
    detectorId: `replay-${o.runId}`,
    runId: o.runId,
  };
  const transform = async (batch: Batch): Promise<OutRecord[]> => {
    const out: OutRecord[] = [];
    const stop = stopAt.get(batch.partition) ?? 0;
    const counted = pos.get(batch.partition) ?? 0;
    let n = 0;
    while (n < batch.records.length && batch.records[n]!.offset < stop) n++;
    const records = n === batch.records.length ? batch.records : batch.records.slice(0, n);
    // Undecodable history is skipped: the live detector dead-lettered it already.
    const res = evaluateRecords(set, records, (e, i) => {
      if (hosts !== undefined && !hosts.has(e.hostId) && !hosts.has(e.hostname)) return false;
      // A batch evaluated again (its transaction failed) is counted once in the summary.
      if (records[i]!.offset >= counted) events++;
      return true;
    });
    // A record a rule threw on is skipped and reported, not fatal: one crafted event must not stop a run.
    for (const f of res.failed) {
      const r = records[f.index]!;
      if (r.offset < counted) continue; // reported when first evaluated
      skipped++;
      const line = `${r.topic}/${r.partition}@${r.offset}: ${f.reason}`;
      if (skippedRecords.length < 100) skippedRecords.push(line);
      log.warn('record skipped: a rule threw on it', {
        topic: r.topic,
        partition: r.partition,
        offset: r.offset,
        err: f.reason,
      });
    }
    const ctx = { ruleSetVersion: snap.version, replayRunId: o.runId };
    for (let k = 0; k < res.matches.length; k++) {
      const m = res.matches[k]!;
      if (snap.belowLevel.has(m.ruleId)) continue; // evaluated only as a correlation's input
      const r = records[m.index]!;
      out.push(encodedAlertRecord(o.alertsTopic, m.hostId, res.alerts[k]!, r, ctx));
      if (r.offset >= counted) matchesByRule.set(m.ruleId, (matchesByRule.get(m.ruleId) ?? 0) + 1);
    }
    const last = batch.records[batch.records.length - 1]!;
    pos.set(batch.partition, Math.max(pos.get(batch.partition) ?? 0, last.offset + 1));
    setImmediate(check);
    return out;
  };
  const consumptions: Consumption[] = [];
  const ticker = setInterval(() => {
    const left = remaining();
    const done = total - left;
    const secs = (Date.now() - started) / 1000;
    const rate = done / Math.max(secs, 0.001);
    const eta = rate > 0 ? Math.round(left / rate) : 0;
    o.progress?.(
      `replay ${o.runId}: ${done}/${total} records (${events} events) ${Math.round(rate)}/s lag ${left} ETA ${eta}s`,
    );
  }, 1000);
  try {
    if (remaining() > 0) {
      for (let i = 0; i < o.parallel; i++) {
        consumptions.push(
          await settled(() =>
            o.transport.consumeTransform({
              groupId,
              topics: [o.topic],
              start: { timestampMs: o.fromMs },
              maxBatchRecords: 2000,
              transactionalIdPrefix: groupId,
              // Batches in fetch order: a resumed run has shown lost and repeated alerts with overlapping jobs.
              overlapFetches: false,
              transform,
            }),
          ),
        );
      }
    }
    const aborted = new Promise<void>((r) => o.signal?.addEventListener('abort', () => r(), { once: true }));
    await Promise.race([finished, aborted, ...consumptions.map((c) => c.done)]);
  } finally {
    ended = true;
    clearInterval(ticker);
    await Promise.all(consumptions.map((c) => c.stop()));
  }
  return {
    runId: o.runId,
    events,
    matchesByRule,
    completed: remaining() === 0,
    skippedCorrelations,
    belowLevel: below,
    skipped,
    skippedRecords,
  };
}

export const command = {
  summary: 'evaluate a rule set over history held in Kafka (own group per run id, resumable)',
  async run(argv: string[]): Promise<number> {
    const args = commandArgs(argv, {
      usage: USAGE,
      options: {
        rules: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        topic: { type: 'string' },
        hosts: { type: 'string' },
        'run-id': { type: 'string' },
        'alerts-topic': { type: 'string' },
        parallel: { type: 'string' },
        'min-level': { type: 'string' },
        config: { type: 'string' },
        brokers: { type: 'string' },
      },
      required: ['rules', 'from'],
    });
    if (typeof args === 'number') return args;
    const { values } = args;
    const level = values['min-level'];
    if (level !== undefined && !isLevel(level)) {
      process.stderr.write(`edr replay: --min-level must be one of ${LEVEL_ORDER.join(', ')}\n`);
      return 2;
    }
    let minLevel = level ?? 'low';
    const file = values.config === undefined ? undefined : loadConfig(detectorConfigSchema, values.config);
    const transport = new KafkaTransport(
      commandKafkaConfig({ fromFile: file?.kafka, brokers: values.brokers, clientId: 'edr-replay' }),
      createLogger({ component: 'kafka' }),
    );
    const names: Record<'audit' | 'raw' | 'alerts', string> = file
      ? { audit: file.topics.audit, raw: file.topics.input, alerts: file.topics.alerts }
      : { audit: table.audit.name, raw: table.raw.name, alerts: table.alerts.name };
    if (level === undefined && file) minLevel = file.rules.minLevel;
    const limits: RuleLimits | undefined = file?.rules.limits;
    const t = values.topic ?? 'audit';
    const topic = t === 'audit' ? names.audit : t === 'raw' ? names.raw : t;
    const runId =
      values['run-id'] ??
      `${new Date().toISOString().replace(/[:.]/g, '')}-${randomBytes(3).toString('hex')}`;
    const ac = new AbortController();
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => ac.abort());
    const tty = process.stderr.isTTY;
    try {
      const r = await replay({
        transport,
        rulesDir: values.rules,
        topic,
        alertsTopic: values['alerts-topic'] ?? names.alerts,
        fromMs: parseTime(values.from),
        toMs: values.to === undefined ? undefined : parseTime(values.to),
        hosts: values.hosts?.split(',').filter((h) => h !== ''),
        runId,
        parallel: Math.max(1, Number(values.parallel ?? 2)),
        minLevel,
        limits,
        progress: (line) => process.stderr.write(tty ? `\r${line}\x1b[K` : `${line}\n`),
        signal: ac.signal,
      });
      if (tty) process.stderr.write('\n');
      const lines = [...r.matchesByRule]
        .sort((a, b) => b[1] - a[1])
        .map(([id, n]) => `${String(n).padStart(8)}  ${id}`);
      process.stdout.write(
        `run ${r.runId}: ${r.completed ? 'complete' : 'interrupted (run again with --run-id to resume)'}; ` +
          `${r.events} events evaluated in this session\nmatches per rule:\n${lines.join('\n') || '       0'}\n` +
          (r.skippedCorrelations.length > 0
            ? `correlations not replayed:\n${r.skippedCorrelations.map((c) => `          ${c}`).join('\n')}\n`
            : '') +
          (r.skippedRecords.length > 0
            ? `${r.skipped} records skipped (a rule threw on them):\n${r.skippedRecords.map((c) => `          ${c}`).join('\n')}\n`
            : '') +
          (r.belowLevel.length > 0
            ? `rules below level ${minLevel}, not replayed (--min-level to include them):\n${r.belowLevel.map((c) => `          ${c}`).join('\n')}\n`
            : ''),
      );
      return r.completed ? 0 : 1;
    } finally {
      await transport.close();
    }
  },
};
