/**
 * The one delivery loop, shared by every sink: one consumer group per sink instance (`edr-sink-<name>`), so a
 * slow or failing sink never holds back another. Per consumed batch: decode (undecodable → dead-letter topic),
 * route, drop what this instance already handled (the journal on disk, see delivered-store.ts), redact, fold
 * identical alerts (same rule and host, event times within the fold window), group into messages, then send each
 * under the instance's concurrency and rate limits, retrying with capped exponential backoff and jitter, or as
 * long as Retry-After says. A message given up (permanent error, or the retry budget spent) is parked on the
 * undeliverable topic with the reason and the sink moves on. A batch's offsets commit only when each of its
 * alerts is delivered, parked, or held (below).
 *
 * Throttling across batches: once a message for a rule and host went out, identical alerts arriving within the
 * fold window are held — written to the journal with their original record and fsynced before their offsets
 * commit — and sent as one summary when the window closes (the window stays open while they keep coming). A held
 * alert is owed a delivery: the journal brings it back after a crash. Without this, a slow storm (one alert per
 * batch) would be one message per alert; holding in memory only would lose them in a crash.
 */

import { EdrError, errorMessage } from '../../infra/errors.js';
import type { Logger } from '../../infra/log.js';
import { abortableDelay } from '../../infra/retry.js';
import {
  type Batch,
  type Consumption,
  deadLetterRecord,
  type InRecord,
  type OutRecord,
  type Producer,
  type Transport,
} from '../../infra/transport.js';
import type { Codec } from '../../schemas/codec.js';
import { levelRank } from '../../schemas/levels.js';
import type { Alert } from '../../schemas/types.js';
import type { Route, SinkInstanceConfig, SinksConfig } from '../config.js';
import { DeliveredStore } from '../delivered-store.js';
import { createRedactor, type Redactor } from '../redact.js';
import { registry } from '../registry.js';
import {
  alertsOf,
  type Fold,
  type Message,
  type Sink,
  type SinkContext,
  type SinkDefaults,
} from '../sink.js';

// ---- routing ----

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
  /** Closes every throttle window now, sending what is held (tests; an operator's flush). */
  flushHeld(): Promise<void>;
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

  // Kafka being unavailable is never a reason to lose an alert: the batch is tried again.
  const publishOrRetry = async (records: OutRecord[], topic: string) => {
    try {
      await deps.producer.publish(records);
    } catch (err) {
      throw new EdrError('EDR_SINK_PARK_FAILED', `cannot publish to ${topic}: ${errorMessage(err)}`, {
        retryable: true,
        cause: err,
      });
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
    await publishOrRetry(out, deps.topics.undeliverable);
    await store.add(alertsOf(message).map((a) => a.alertId));
    log.error('alerts parked as undeliverable', {
      err,
      alerts: out.length,
      attempts,
      topic: deps.topics.undeliverable,
    });
  };

  /**
   * Sends one message with retries; true when delivered, false when parked. Throws (retryable) only when
   * stopping, or when the journal or Kafka cannot record the outcome: then the batch is tried again.
   */
  const deliver = async (
    message: Message,
    signal: AbortSignal,
    records: Map<string, InRecord>,
  ): Promise<boolean> => {
    for (let n = 1; ; n++) {
      const wait = policy.bucket.reserve();
      if (wait > 0) await abortableDelay(wait, signal);
      if (signal.aborted) throw stopping();
      try {
        await attempt(message, signal);
        await store.add(alertsOf(message).map((a) => a.alertId));
        return true;
      } catch (raw) {
        if (signal.aborted) throw stopping();
        const err = raw instanceof EdrError ? raw : classify(raw, false);
        if (err.code === 'EDR_SINK_STATE_WRITE') throw err;
        if (!err.retryable || n >= policy.retry.maxAttempts) {
          await park(message, err, n, records);
          return false;
        }
        const retryAfter = err.details['retryAfterMs'];
        const delay = retryDelayMs(n, typeof retryAfter === 'number' ? retryAfter : undefined, policy.retry);
        log.warn('delivery failed, retrying', { err, attempt: n, delayMs: delay });
        await abortableDelay(delay, signal);
      }
    }
  };

  // ---- throttle windows ----
  // After a message for a rule and host, identical alerts within the fold window are held (journalled with their
  // record, fsynced, then their offsets commit) and sent as one summary when the window closes; the window stays
  // open while they keep coming. So a slow storm (one alert per batch) is one message per window, not one per
  // alert. Held alerts survive a crash in the journal and are sent at the next start.
  interface Held {
    alert: Alert;
    record: InRecord;
  }
  interface Window {
    timer: NodeJS.Timeout | undefined;
    held: Held[];
  }
  const windows = new Map<string, Window>();
  const flushes = new Set<Promise<void>>();
  const stopAc = new AbortController();
  const windowMs = policy.fold === false ? 0 : policy.fold;

  const arm = (key: string, w: Window, ms: number) => {
    clearTimeout(w.timer);
    if (stopAc.signal.aborted) return;
    w.timer = setTimeout(() => flushWindow(key), ms);
    // The consumer keeps the process alive while it runs; a window must not keep it alive after a stop.
    w.timer.unref();
  };
  const openWindow = (key: string): Window => {
    let w = windows.get(key);
    if (w === undefined) {
      w = { timer: undefined, held: [] };
      windows.set(key, w);
      arm(key, w, windowMs);
    }
    return w;
  };
  const flushWindow = (key: string): void => {
    const w = windows.get(key);
    if (w === undefined) return;
    clearTimeout(w.timer);
    w.timer = undefined;
    if (w.held.length === 0) {
      windows.delete(key);
      return;
    }
    const held = w.held;
    w.held = [];
    const run = (async () => {
      const records = new Map(held.map((h) => [h.alert.alertId, h.record]));
      const messages = groupMessages(
        foldAlerts(
          held.map((h) => h.alert),
          policy.fold,
        ),
        policy.messages,
      );
      for (const m of messages) await deliver(m, stopAc.signal, records);
    })();
    const p = run.then(
      () => arm(key, w, windowMs),
      (err: unknown) => {
        if (stopAc.signal.aborted) return; // still in the journal: sent at the next start
        log.error('held alerts not sent; trying again', { err });
        w.held.unshift(...held.filter((h) => store.isHeld(h.alert.alertId)));
        arm(key, w, Math.max(windowMs, 1000));
      },
    );
    flushes.add(p);
    void p.finally(() => flushes.delete(p));
  };
  const MAX_HELD = 10_000;

  // Alerts held when the last run stopped are owed a summary: send them now.
  for (const e of store.held()) {
    const record: InRecord = {
      topic: e.topic,
      partition: e.partition,
      offset: e.offset,
      key: e.recordKey === null ? null : Buffer.from(e.recordKey, 'base64'),
      value: Buffer.from(e.value, 'base64'),
      headers: {},
      timestampMs: 0,
    };
    let a: Alert;
    try {
      a = deps.codec.decodeAs('dev.edr.v1.Alert', record.value!);
    } catch {
      continue;
    }
    let w = windows.get(e.key);
    if (w === undefined) {
      w = { timer: undefined, held: [] };
      windows.set(e.key, w);
      arm(e.key, w, 0);
    }
    w.held.push({ alert: policy.redactor ? policy.redactor.alert(a) : a, record });
  }

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
      await publishOrRetry(dead, deps.topics.deadLetter);
    }
    const folds = foldAlerts(alerts, policy.fold);
    const hold = folds.filter((f) => windows.has(f.key));
    if (hold.length > 0) {
      await store.hold(
        hold.flatMap((f) =>
          f.alerts.map((a) => {
            const r = records.get(a.alertId)!;
            return {
              id: a.alertId,
              key: f.key,
              topic: r.topic,
              partition: r.partition,
              offset: r.offset,
              recordKey: r.key === null ? null : r.key.toString('base64'),
              value: (r.value ?? Buffer.alloc(0)).toString('base64'),
            };
          }),
        ),
      );
      for (const f of hold) {
        const w = openWindow(f.key);
        for (const a of f.alerts) w.held.push({ alert: a, record: records.get(a.alertId)! });
        if (w.held.length >= MAX_HELD) flushWindow(f.key);
      }
    }
    const messages = groupMessages(
      folds.filter((f) => !hold.includes(f)),
      policy.messages,
    );
    let next = 0;
    const worker = async () => {
      while (next < messages.length) {
        const m = messages[next++]!;
        if ((await deliver(m, batch.signal, records)) && policy.fold !== false) {
          for (const f of m.folds) openWindow(f.key);
        }
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
    start: config.startFrom ?? module.defaults.startFrom,
    retryBackoffMs: 1000,
    handler,
  });
  log.info('sink started', { groupId: `edr-sink-${name}`, topic: deps.topics.alerts });
  let stopped: Promise<void> | undefined;
  return {
    name,
    consumption,
    async flushHeld() {
      for (const key of [...windows.keys()]) flushWindow(key);
      await Promise.allSettled([...flushes]);
    },
    stop() {
      stopped ??= (async () => {
        await consumption.stop().catch((err) => log.warn('consumer stop failed', { err }));
        stopAc.abort();
        for (const w of windows.values()) clearTimeout(w.timer);
        await Promise.allSettled([...flushes]);
        const held = [...windows.values()].reduce((n, w) => n + w.held.length, 0);
        if (held > 0) log.info('held alerts kept for the next start', { alerts: held });
        await sink.close().catch((err) => log.warn('sink close failed', { err }));
        await store.close();
      })();
      return stopped;
    },
  };
}
