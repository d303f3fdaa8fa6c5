/**
 * `edr sinks resend`: re-delivers alerts parked on the undeliverable topic, through the sink instance that parked
 * each (its `edr-sink` header), selected by that sink, rule id and the time it was parked (the record timestamp).
 * Meant for after the cause is fixed (a webhook replaced, a recipient corrected).
 *
 * Exactly once across runs: each alert id resent is journalled (fsynced) in `stateDir/<sink>.resent` before the
 * run moves on, and an id found there, or in the sink's own output (the file sink reads its files back), is
 * "already delivered"; an id parked twice is sent once. The journal has its own lock, so a resend runs beside the
 * live sink, and two resends of one sink do not run at once. Each run reads the topic up to its end as it was at
 * the start, in a consumer group of its own (`edr-sink-resend-<uuid>`, under the sinks' group prefix). A
 * retryable failure is tried `retry.maxAttempts` times (5 when the sink sets none: an operator waits for this
 * command) and then counted as failed: the alert stays parked for the next run.
 */
import { randomUUID } from 'node:crypto';
import { commandArgs } from '../infra/command-args.js';
import { EdrError } from '../infra/errors.js';
import { KafkaTransport } from '../infra/kafka/transport.js';
import { createLogger, type Logger } from '../infra/log.js';
import { abortableDelay, retry } from '../infra/retry.js';
import { type InRecord, requireTopics, type Transport } from '../infra/transport.js';
import { projectCodec } from '../schemas/codec.js';
import { topics as topicTable } from '../schemas/topics.js';
import type { Alert } from '../schemas/types.js';
import { loadSinksConfig, type SinksConfig } from './config.js';
import { resolvePolicy } from './deliver/deliver.js';
import { foldAlerts } from './deliver/fold.js';
import { backoffOf, classify, retryAfterOf, retryDelayMs, stopping } from './deliver/retry-policy.js';
import { sendWithin } from './deliver/sender.js';
import { DeliveredStore } from './delivered-store.js';
import { registry } from './registry.js';
import type { Sink } from './sink.js';

const USAGE = `usage: edr sinks resend --config FILE [--sink NAME ...] [--rule ID ...] [--from TIME] [--to TIME]

Re-delivers alerts parked on the undeliverable topic through the sink that parked them, each exactly once:
ids resent are journalled in stateDir/<sink>.resent, so a second run sends nothing twice.

  --config FILE   sinks config (the sinks, their stateDir and topics)
  --sink NAME     only alerts this sink parked (repeatable); default every sink of the config
  --rule ID       only alerts of this rule id (repeatable)
  --from TIME     only alerts parked at or after TIME (ISO 8601, or ms since the epoch)
  --to TIME       only alerts parked at or before TIME
`;

/** Attempts per alert when the sink's config sets no limit. */
const RESEND_ATTEMPTS = 5;

export interface ResendOptions {
  /** Sink instances whose parked alerts are resent; default all of the config. */
  sinks?: string[];
  ruleIds?: string[];
  fromMs?: number;
  toMs?: number;
  log?: Logger;
  /** Stops the run (what was resent stays journalled). */
  signal?: AbortSignal;
}

export interface ResendSummary {
  /** Parked records that match the selection. */
  selected: number;
  delivered: number;
  /** Resent by an earlier run, found in the sink's output, or parked twice. */
  alreadyDelivered: number;
  failed: number;
}

interface Target {
  sink: Sink;
  store: DeliveredStore;
  policy: ReturnType<typeof resolvePolicy>;
}

/** Resends the parked alerts `opts` selects; resolves with what happened once the topic is read to its end. */
export async function resend(
  config: SinksConfig,
  transport: Transport,
  opts: ResendOptions = {},
): Promise<ResendSummary> {
  const log = (opts.log ?? createLogger({ component: 'sinks' })).child({ component: 'resend' });
  const names = new Set(opts.sinks?.length ? opts.sinks : Object.keys(config.sinks));
  for (const n of names) {
    if (!Object.hasOwn(config.sinks, n))
      throw new EdrError('EDR_SINK_RESEND_USAGE', `no sink named ${n} in the config`);
  }
  const topic = config.topics.undeliverable;
  await requireTopics(transport, [topic], 'sinks resend');
  // Read up to the end as it is now: what is parked during the run waits for the next one.
  const ends = new Map((await transport.endOffsets(topic)).map((p) => [p.partition, p.offset]));
  const starts = opts.fromMs === undefined ? [] : await transport.offsetsForTime(topic, opts.fromMs);
  const reached = new Map(starts.map((p) => [p.partition, p.offset]));
  const summary: ResendSummary = { selected: 0, delivered: 0, alreadyDelivered: 0, failed: 0 };
  const targets = new Map<string, Promise<Target>>();
  const stop = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
  const codec = projectCodec();

  const target = (name: string): Promise<Target> => {
    let t = targets.get(name);
    if (t === undefined) {
      t = openTarget(config, name, log);
      targets.set(name, t);
    }
    return t;
  };

  const handle = async (r: InRecord): Promise<void> => {
    const name = r.headers['edr-sink']?.toString();
    if (name === undefined || !names.has(name)) return;
    if (opts.fromMs !== undefined && r.timestampMs < opts.fromMs) return;
    if (opts.toMs !== undefined && r.timestampMs > opts.toMs) return;
    let alert: Alert;
    try {
      alert = codec.decodeAs('dev.edr.v1.Alert', r.value ?? Buffer.alloc(0));
    } catch (err) {
      // Its rule cannot be known: reported whatever the selection by rule, never silently skipped.
      summary.selected++;
      summary.failed++;
      log.error('parked record does not decode; not resent', {
        err,
        partition: r.partition,
        offset: r.offset,
      });
      return;
    }
    if (opts.ruleIds?.length && !opts.ruleIds.includes(alert.ruleId)) return;
    summary.selected++;
    const t = await target(name);
    if (t.store.has(alert.alertId)) {
      summary.alreadyDelivered++;
      return;
    }
    try {
      await deliverOne(t, alert, signal);
    } catch (err) {
      if (signal.aborted) throw stopping();
      summary.failed++;
      log.error('alert not resent', { err, sink: name, alertId: alert.alertId, ruleId: alert.ruleId });
      return;
    }
    await t.store.add([alert.alertId]);
    summary.delivered++;
  };

  const pending = () => [...ends].filter(([p, end]) => (reached.get(p) ?? 0) < end).map(([p]) => p);
  try {
    if (pending().length > 0) {
      const groupId = `edr-sink-resend-${randomUUID()}`;
      const consumption = await transport.consume({
        groupId,
        topics: [topic],
        start: opts.fromMs === undefined ? 'earliest' : { timestampMs: opts.fromMs },
        maxBatchRecords: 100,
        handler: async (batch) => {
          for (const r of batch.records) {
            if (r.offset >= (ends.get(r.partition) ?? 0)) break;
            await handle(r);
            reached.set(r.partition, r.offset + 1);
            batch.ack(r);
          }
        },
      });
      try {
        // Done when every partition is read to its end; committed offsets also count (past transaction markers).
        while (pending().length > 0 && !signal.aborted) {
          // A consumption that fails (a state directory locked by another resend, say) ends the run with its error.
          await Promise.race([abortableDelay(200, signal), consumption.done]);
          for (const l of await transport.lag(groupId, topic)) {
            if (l.committed > (reached.get(l.partition) ?? 0)) reached.set(l.partition, l.committed);
          }
        }
      } finally {
        stop.abort();
        await consumption.stop();
      }
      await consumption.done;
    }
  } finally {
    stop.abort();
    for (const t of targets.values()) {
      const x = await t.catch(() => undefined);
      await x?.sink.close().catch(() => {});
      await x?.store.close();
    }
  }
  return summary;
}

async function openTarget(config: SinksConfig, name: string, log: Logger): Promise<Target> {
  const c = config.sinks[name]!;
  const module = registry[c.type];
  const store = await DeliveredStore.open({
    dir: config.stateDir,
    name: `${name}.resent`,
    // As long as a parked alert can still be on the topic.
    windowMs: Math.max(c.dedup.windowMs, topicTable.undeliverable.retentionMs),
  });
  try {
    const sink = await module.create(c as never, {
      name,
      log: log.child({ sink: name }),
      timeoutMs: c.timeoutMs,
    });
    if (sink.delivered) await store.add(await sink.delivered());
    return { sink, store, policy: resolvePolicy(c, module.defaults) };
  } catch (err) {
    await store.close();
    throw err;
  }
}

/** Sends one alert as a message of its own, redacted as the sink's policy says, retrying within the budget. */
async function deliverOne(t: Target, alert: Alert, signal: AbortSignal): Promise<void> {
  const { policy } = t;
  const a = policy.redactor ? policy.redactor.alert(alert) : alert;
  const message = { folds: foldAlerts([a], false) };
  await retry(
    async () => {
      const wait = policy.bucket.reserve();
      if (wait > 0) await abortableDelay(wait, signal);
      if (signal.aborted) throw stopping();
      await sendWithin(t.sink, message, signal, policy.timeoutMs);
    },
    {
      backoff: backoffOf(policy.retry),
      maxAttempts: policy.retry.maxAttempts ?? RESEND_ATTEMPTS,
      signal,
      retryIf: (err) => classify(err, false).retryable,
      delayFor: (err, n) => retryDelayMs(n, retryAfterOf(err), policy.retry),
    },
  );
}

/** A --from/--to value: ISO 8601 or ms since the epoch. */
function parseTime(option: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const ms = /^\d+$/.test(value) ? Number(value) : Date.parse(value);
  if (!Number.isFinite(ms)) {
    throw new EdrError(
      'EDR_SINK_RESEND_USAGE',
      `--${option}: not a time (ISO 8601 or ms since the epoch): ${value}`,
    );
  }
  return ms;
}

export const command = {
  summary: 're-deliver alerts parked on the undeliverable topic',
  async run(argv: string[]): Promise<number> {
    const args = commandArgs(argv, {
      usage: USAGE,
      options: {
        config: { type: 'string' },
        sink: { type: 'string', multiple: true },
        rule: { type: 'string', multiple: true },
        from: { type: 'string' },
        to: { type: 'string' },
      },
      required: ['config'],
    });
    if (typeof args === 'number') return args;
    const { values } = args;
    let fromMs: number | undefined;
    let toMs: number | undefined;
    try {
      fromMs = parseTime('from', values.from);
      toMs = parseTime('to', values.to);
    } catch (err) {
      process.stderr.write(`edr sinks resend: ${(err as Error).message}\n\n${USAGE}`);
      return 2;
    }
    const config = loadSinksConfig(values.config);
    const unknown = (values.sink ?? []).filter((n) => !Object.hasOwn(config.sinks, n));
    if (unknown.length > 0) {
      process.stderr.write(`edr sinks resend: no sink named ${unknown.join(', ')} in ${values.config}\n`);
      return 2;
    }
    const ac = new AbortController();
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => ac.abort());
    const transport = new KafkaTransport(config.kafka);
    let s: ResendSummary;
    try {
      s = await resend(config, transport, {
        sinks: values.sink ?? [],
        ruleIds: values.rule ?? [],
        ...(fromMs === undefined ? {} : { fromMs }),
        ...(toMs === undefined ? {} : { toMs }),
        signal: ac.signal,
      });
    } finally {
      await transport.close();
    }
    process.stdout.write(
      `resend: selected ${s.selected}, delivered ${s.delivered}, already delivered ${s.alreadyDelivered}, failed ${s.failed}${ac.signal.aborted ? ' (interrupted)' : ''}\n`,
    );
    return s.failed > 0 || ac.signal.aborted ? 1 : 0;
  },
};
