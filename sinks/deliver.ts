/**
 * The one delivery loop, shared by every sink: one consumer group per sink instance (`edr-sink-<name>`), so a
 * slow or failing sink never holds back another. Per consumed batch: decode, route, drop what this instance
 * already handled (dedup journal on disk), redact, fold identical alerts, group into messages, then send each
 * under the instance's concurrency and rate limits, retrying with capped exponential backoff and jitter (or as
 * long as Retry-After says). A message given up (permanent error, or retries spent) is parked on the
 * undeliverable topic with the reason. The batch's offsets commit only when every alert in it is delivered or
 * parked.
 *
 * Why folding is per batch: an alert's offset may commit only once the alert is in a delivered message, so alerts
 * cannot wait for later batches without stalling the partition. In a storm the batches are full (up to
 * maxBatchRecords), so a storm becomes about one message per batch.
 */
import { abortableDelay, deadLetterRecord } from '../infra/batch-runner.js';
import { EdrError, errorMessage } from '../infra/errors.js';
import type { Logger } from '../infra/log.js';
import type { Batch, Consumption, InRecord, OutRecord, Producer, Transport } from '../infra/transport.js';
import type { Codec } from '../schemas/codec.js';
import type { Alert } from '../schemas/types.js';
import { levels, type Route, type SinkInstanceConfig, type SinksConfig } from './config.js';
import { DeliveredStore } from './delivered-store.js';
import { createRedactor, type Redactor } from './redact.js';
import { registry } from './registry.js';
import { alertsOf, type Fold, type Message, type Sink, type SinkContext, type SinkDefaults } from './sink.js';

// ---- routing ----

function levelRank(level: string): number {
  const i = (levels as readonly string[]).indexOf(level.toLowerCase());
  return Math.max(i, 0);
}

function globToRegExp(glob: string): RegExp {
  const body = glob
    .split('*')
    .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${body}$`, 'i');
}

/** A route as a predicate on alerts (regular expressions compiled once). */
export function compileRoute(r: Route): (a: Alert) => boolean {
  const titles = r.titles?.map((t) => new RegExp(t, 'i'));
  const hosts = r.hosts?.map(globToRegExp);
  const tags = r.tags?.map((t) => t.toLowerCase());
  const min = r.minLevel === undefined ? undefined : levelRank(r.minLevel);
  return (a) => {
    if (min !== undefined && levelRank(a.ruleLevel) < min) return false;
    if (r.source === 'live' && a.replayRunId !== null) return false;
    if (r.source === 'replay' && a.replayRunId === null) return false;
    if (r.ruleIds && !r.ruleIds.includes(a.ruleId)) return false;
    if (tags) {
      const have = a.ruleTags.map((t) => t.toLowerCase());
      if (!tags.some((t) => have.some((h) => h === t || h.startsWith(`${t}.`)))) return false;
    }
    if (titles && !titles.some((re) => re.test(a.ruleTitle))) return false;
    if (hosts && !hosts.some((re) => re.test(a.event.hostname) || re.test(a.event.hostId))) return false;
    return true;
  };
}

/** Whether any route naming `sink` takes the alert. */
export function router(routes: readonly Route[], sink: string): (a: Alert) => boolean {
  const mine = routes.filter((r) => r.to.includes(sink)).map(compileRoute);
  return (a) => mine.some((m) => m(a));
}

// ---- folding and messages (pure) ----

export function foldKey(a: Alert): string {
  return `${a.ruleId} ${a.event.hostId}`;
}

/**
 * Folds alerts of the same rule and host whose event times lie within `windowMs` of the fold's first into one
 * Fold; `false` gives each alert its own. Folds come in the order of their first alert.
 */
export function foldAlerts(alerts: readonly Alert[], windowMs: number | false): Fold[] {
  const out: Fold[] = [];
  const open = new Map<string, Fold>();
  const windowNs = windowMs === false ? 0n : BigInt(windowMs) * 1_000_000n;
  for (const a of alerts) {
    const t = a.event.timeNs;
    const key = foldKey(a);
    const f = windowMs === false ? undefined : open.get(key);
    const anchor = f === undefined ? 0n : f.alerts[0]!.event.timeNs;
    if (f !== undefined && t - anchor <= windowNs && anchor - t <= windowNs) {
      f.alerts.push(a);
      if (t < f.firstSeenNs) f.firstSeenNs = t;
      if (t > f.lastSeenNs) f.lastSeenNs = t;
      continue;
    }
    const nf: Fold = { key, alerts: [a], firstSeenNs: t, lastSeenNs: t };
    out.push(nf);
    open.set(key, nf);
  }
  return out;
}

/** Groups folds into messages: all in one, by digest window (first-seen times), or one each. */
export function groupMessages(
  folds: readonly Fold[],
  mode: 'batch' | { digestWindowMs: number } | 'each',
): Message[] {
  if (folds.length === 0) return [];
  if (mode === 'batch') return [{ folds: [...folds] }];
  if (mode === 'each') return folds.map((f) => ({ folds: [f] }));
  const windowNs = BigInt(mode.digestWindowMs) * 1_000_000n;
  const sorted = [...folds].sort((a, b) =>
    a.firstSeenNs < b.firstSeenNs ? -1 : a.firstSeenNs > b.firstSeenNs ? 1 : 0,
  );
  const out: Message[] = [];
  let cur: Message | undefined;
  let start = 0n;
  for (const f of sorted) {
    if (cur === undefined || f.firstSeenNs - start > windowNs) {
      cur = { folds: [] };
      start = f.firstSeenNs;
      out.push(cur);
    }
    cur.folds.push(f);
  }
  return out;
}

// ---- retry policy (pure) ----

export interface RetryPolicy {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  maxRetryAfterMs: number;
}

/**
 * Pause after failed attempt `attempt` (1-based): what Retry-After said (capped), else capped exponential
 * backoff with "equal jitter" (half fixed, half random), so retrying sinks do not hammer a peer in step.
 */
export function retryDelayMs(
  attempt: number,
  retryAfterMs: number | undefined,
  p: RetryPolicy,
  random: () => number = Math.random,
): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, p.maxRetryAfterMs);
  const exp = Math.min(p.maxBackoffMs, p.initialBackoffMs * 2 ** Math.min(attempt - 1, 30));
  return Math.round(exp / 2 + (random() * exp) / 2);
}

/** Anything a sink threw, as an EdrError: unknown errors are bugs or bad input, not retried. */
export function classify(err: unknown, timedOut: boolean): EdrError {
  if (err instanceof EdrError) return err;
  if (timedOut)
    return new EdrError('EDR_SINK_TIMEOUT', 'delivery timed out', { retryable: true, cause: err });
  return new EdrError('EDR_SINK_FAILED', errorMessage(err), { cause: err });
}

// ---- rate limit ----

/** Token bucket: `perSecond` messages on average, `burst` at once. Concurrent takers queue by reservation. */
export class TokenBucket {
  private tokens: number;
  private last: number;
  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly now: () => number = Date.now,
  ) {
    this.tokens = burst;
    this.last = now();
  }

  /** Milliseconds the caller must wait before its message may go (0: now). Reserves the token. */
  reserve(): number {
    if (this.perSecond <= 0) return 0;
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) / 1000) * this.perSecond);
    this.last = t;
    this.tokens -= 1;
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens / this.perSecond) * 1000);
  }
}

// ---- the loop ----

export interface DeliverDeps {
  transport: Transport;
  /** For the undeliverable and dead-letter topics. */
  producer: Producer;
  codec: Codec;
  log: Logger;
  topics: SinksConfig['topics'];
  stateDir: string;
  routes: readonly Route[];
  /** Replaces the registry's `create` (tests drive the loop with a scripted sink). */
  makeSink?: (ctx: SinkContext) => Sink | Promise<Sink>;
}

export interface RunningSink {
  name: string;
  consumption: Consumption;
  stop(): Promise<void>;
}

interface Policy {
  fold: number | false;
  redactor: Redactor | undefined;
  messages: 'batch' | { digestWindowMs: number } | 'each';
  concurrency: number;
  bucket: TokenBucket;
  retry: RetryPolicy;
  timeoutMs: number;
}

export function resolvePolicy(c: SinkInstanceConfig, d: SinkDefaults): Policy {
  const redact = c.redact ?? d.redact;
  return {
    fold: c.fold === undefined ? (d.fold ? 300_000 : false) : c.fold === false ? false : c.fold.windowMs,
    redactor:
      redact === false ? undefined : createRedactor(typeof redact === 'object' ? redact.patterns : []),
    messages: d.oneMessagePerBatch ? 'batch' : c.digest ? { digestWindowMs: c.digest.windowMs } : 'each',
    concurrency: c.concurrency,
    bucket: new TokenBucket(c.messagesPerSecond ?? d.messagesPerSecond, c.burst),
    retry: c.retry,
    timeoutMs: c.timeoutMs,
  };
}

function stopping(): EdrError {
  return new EdrError('EDR_SINK_STOPPING', 'stopping: the rest is redelivered', { retryable: true });
}

/** Starts one sink instance: its sink, its dedup journal, its consumer group. */
export async function startSink(
  name: string,
  config: SinkInstanceConfig,
  deps: DeliverDeps,
): Promise<RunningSink> {
  const log = deps.log.child({ component: 'sink', sink: name, type: config.type });
  const module = registry[config.type];
  const policy = resolvePolicy(config, module.defaults);
  const wants = router(deps.routes, name);
  const store = await DeliveredStore.open({ dir: deps.stateDir, name, windowMs: config.dedup.windowMs });
  let sink: Sink;
  try {
    const ctx: SinkContext = { name, log, timeoutMs: config.timeoutMs };
    sink = await (deps.makeSink ? deps.makeSink(ctx) : module.create(config as never, ctx));
    if (sink.delivered) await store.add(await sink.delivered());
  } catch (err) {
    await store.close();
    throw err;
  }

  const attempt = async (message: Message, signal: AbortSignal): Promise<void> => {
    const timeout = AbortSignal.timeout(policy.timeoutMs);
    const both = AbortSignal.any([signal, timeout]);
    const sent = sink.send(message, both);
    // A client that ignores the signal (nodemailer) still cannot hold the loop past the timeout.
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(both.reason);
      both.addEventListener('abort', onAbort, { once: true });
    });
    sent.catch(() => {});
    aborted.catch(() => {});
    try {
      await Promise.race([sent, aborted]);
    } catch (err) {
      if (signal.aborted) throw stopping();
      throw classify(err, timeout.aborted);
    } finally {
      both.removeEventListener('abort', onAbort!);
    }
  };

  const park = async (message: Message, err: EdrError, attempts: number, records: Map<string, InRecord>) => {
    const out: OutRecord[] = [];
    for (const a of alertsOf(message)) {
      const r = records.get(a.alertId);
      if (r === undefined) continue;
      const rec = deadLetterRecord(deps.topics.undeliverable, r, err);
      // The undeliverable topic is keyed by alert id; the original bytes (full, unredacted event) are kept.
      rec.key = a.alertId;
      rec.headers = { ...rec.headers, 'edr-sink': name, 'edr-attempts': String(attempts) };
      out.push(rec);
    }
    await deps.producer.publish(out);
    await store.add(alertsOf(message).map((a) => a.alertId));
    log.error('alerts parked as undeliverable', {
      err,
      alerts: out.length,
      attempts,
      topic: deps.topics.undeliverable,
    });
  };

  const deliver = async (message: Message, signal: AbortSignal, records: Map<string, InRecord>) => {
    for (let n = 1; ; n++) {
      const wait = policy.bucket.reserve();
      if (wait > 0) await abortableDelay(wait, signal);
      if (signal.aborted) throw stopping();
      try {
        await attempt(message, signal);
        await store.add(alertsOf(message).map((a) => a.alertId));
        return;
      } catch (raw) {
        if (signal.aborted) throw stopping();
        const err = raw instanceof EdrError ? raw : classify(raw, false);
        if (err.code === 'EDR_SINK_STATE_WRITE') throw err;
        if (!err.retryable || n >= policy.retry.maxAttempts) {
          await park(message, err, n, records);
          return;
        }
        const retryAfter = err.details['retryAfterMs'];
        const delay = retryDelayMs(n, typeof retryAfter === 'number' ? retryAfter : undefined, policy.retry);
        log.warn('delivery failed, retrying', { err, attempt: n, delayMs: delay });
        await abortableDelay(delay, signal);
      }
    }
  };

  const handler = async (batch: Batch): Promise<void> => {
    const records = new Map<string, InRecord>();
    const alerts: Alert[] = [];
    const dead: OutRecord[] = [];
    for (const r of batch.records) {
      let a: Alert;
      try {
        a = deps.codec.decodeAs('dev.edr.v1.Alert', r.value ?? Buffer.alloc(0));
      } catch (err) {
        dead.push(deadLetterRecord(deps.topics.deadLetter, r, err));
        continue;
      }
      if (!wants(a) || store.has(a.alertId) || records.has(a.alertId)) continue;
      records.set(a.alertId, r);
      alerts.push(policy.redactor ? policy.redactor.alert(a) : a);
    }
    if (dead.length > 0) {
      log.warn('undecodable alerts sent to the dead-letter topic', {
        count: dead.length,
        topic: deps.topics.deadLetter,
      });
      await deps.producer.publish(dead);
    }
    const messages = groupMessages(foldAlerts(alerts, policy.fold), policy.messages);
    let next = 0;
    const worker = async () => {
      while (next < messages.length) {
        const m = messages[next++]!;
        await deliver(m, batch.signal, records);
      }
    };
    const results = await Promise.allSettled(
      Array.from({ length: Math.min(policy.concurrency, messages.length) }, worker),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    if (batch.signal.aborted) throw stopping();
  };

  const consumption = await deps.transport.consume({
    groupId: `edr-sink-${name}`,
    topics: [deps.topics.alerts],
    maxBatchRecords: config.maxBatchRecords,
    retryBackoffMs: 1000,
    handler,
  });
  log.info('sink started', { groupId: `edr-sink-${name}`, topic: deps.topics.alerts });
  let stopped: Promise<void> | undefined;
  return {
    name,
    consumption,
    stop() {
      stopped ??= (async () => {
        await consumption.stop().catch((err) => log.warn('consumer stop failed', { err }));
        await sink.close().catch((err) => log.warn('sink close failed', { err }));
        await store.close();
      })();
      return stopped;
    },
  };
}
