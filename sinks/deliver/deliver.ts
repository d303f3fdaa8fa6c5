/**
 * The one delivery loop, shared by every sink: one consumer group per sink instance (`edr-sink-<name>`), so a
 * slow or failing sink never holds back another. Per consumed batch: decode (undecodable → dead-letter topic),
 * route, drop what this instance already handled (the journal on disk, see delivered-store.ts), redact, fold
 * identical alerts (same rule and host, event times within the fold window), group into messages, then send each
 * under the instance's concurrency and rate limits, retrying with capped exponential backoff and jitter, or as
 * long as Retry-After says, without limit by default while the batch's offsets stay uncommitted (a stop leaves
 * the batch to Kafka). A message given up (permanent error, or a configured retry budget spent) is parked on
 * the undeliverable topic with the reason and the sink moves on. A batch's offsets commit only when each of its
 * alerts is delivered, parked, or held (below).
 *
 * Throttling across batches: once a message for a rule and host went out, identical alerts arriving within the
 * fold window are held — written to the journal with their original record and fsynced before their offsets
 * commit — and sent as one summary when the window closes (the window stays open while they keep coming). A held
 * alert is owed a delivery: the journal brings it back after a crash. Without this, a slow storm (one alert per
 * batch) would be one message per alert; holding in memory only would lose them in a crash.
 */

import type { Logger } from '../../infra/log.js';
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
import type { Alert } from '../../schemas/types.js';
import type { Route, SinkInstanceConfig, SinksConfig } from '../config.js';
import { DeliveredStore } from '../delivered-store.js';
import { createRedactor, type Redactor } from '../redact.js';
import { registry } from '../registry.js';
import type { Fold, Message, Sink, SinkContext, SinkDefaults } from '../sink.js';
import { foldAlerts, groupMessages, type MessageGrouping } from './fold.js';
import { Outage } from './outage.js';
import { TokenBucket } from './rate-limit.js';
import { type RetryPolicy, stopping } from './retry-policy.js';
import { router } from './route.js';
import { Sender } from './sender.js';
import { type Held, heldEntry, heldRecord, ThrottleWindows } from './throttle.js';

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
  /** Alerts waiting for a peer that fails with retryable errors (sinks have no metrics exporter: a gauge to read). */
  alertsWaiting(): number;
  stop(): Promise<void>;
}

interface Policy {
  fold: number | false;
  redactor: Redactor | undefined;
  messages: MessageGrouping;
  concurrency: number;
  bucket: TokenBucket;
  retry: RetryPolicy;
  timeoutMs: number;
  maxThrottleWindows: number;
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
    maxThrottleWindows: c.maxThrottleWindows,
  };
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
  const store = await DeliveredStore.open({
    dir: deps.stateDir,
    name,
    windowMs: config.dedup.windowMs,
    maxEntries: config.dedup.maxEntries,
    log,
  });
  let sink: Sink;
  try {
    const ctx: SinkContext = { name, log, timeoutMs: config.timeoutMs };
    sink = await (deps.makeSink ? deps.makeSink(ctx) : module.create(config as never, ctx));
    if (sink.delivered) await store.add(await sink.delivered());
  } catch (err) {
    await store.close();
    throw err;
  }
  const loop = new SinkLoop({ name, policy, wants, store, sink, deps, log });
  // Alerts held when the last run stopped are owed a summary: send them now.
  loop.restoreHeld();
  const consumption = await deps.transport.consume({
    groupId: `edr-sink-${name}`,
    topics: [deps.topics.alerts],
    maxBatchRecords: config.maxBatchRecords,
    start: config.startFrom ?? module.defaults.startFrom,
    retryBackoffMs: 1000,
    handler: (batch) => loop.handle(batch),
  });
  log.info('sink started', { groupId: `edr-sink-${name}`, topic: deps.topics.alerts });
  let stopped: Promise<void> | undefined;
  return {
    name,
    consumption,
    flushHeld: () => loop.windows.flushAll(),
    alertsWaiting: () => loop.outage.waiting,
    stop() {
      stopped ??= (async () => {
        await consumption.stop().catch((err) => log.warn('consumer stop failed', { err }));
        await loop.stop();
      })();
      return stopped;
    },
  };
}

interface SinkLoopOptions {
  name: string;
  policy: Policy;
  /** Whether an alert is routed to this instance. */
  wants: (a: Alert) => boolean;
  store: DeliveredStore;
  sink: Sink;
  deps: DeliverDeps;
  log: Logger;
}

/** The alert record each alert of a batch (or of a window) came in, by alert id: what is parked or journalled. */
type Records = Map<string, InRecord>;

/** One sink instance's handling of consumed batches and of its throttle windows. */
class SinkLoop {
  readonly windows: ThrottleWindows;
  readonly outage: Outage;
  readonly #sender: Sender;

  constructor(private readonly o: SinkLoopOptions) {
    const { policy, deps } = o;
    this.outage = new Outage({ log: o.log });
    this.#sender = new Sender({
      outage: this.outage,
      name: o.name,
      sink: o.sink,
      store: o.store,
      producer: deps.producer,
      undeliverableTopic: deps.topics.undeliverable,
      bucket: policy.bucket,
      retry: policy.retry,
      timeoutMs: policy.timeoutMs,
      log: o.log,
    });
    this.windows = new ThrottleWindows({
      windowMs: policy.fold === false ? 0 : policy.fold,
      send: (held, signal) => this.#sendHeld(held, signal),
      stillHeld: (id) => o.store.isHeld(id),
      maxWindows: policy.maxThrottleWindows,
      log: o.log,
    });
  }

  /** Puts the alerts the journal holds back in their windows, which close at once. */
  restoreHeld(): void {
    for (const e of this.o.store.held()) {
      const record = heldRecord(e);
      let a: Alert;
      try {
        a = this.o.deps.codec.decodeAs('dev.edr.v1.Alert', record.value!);
      } catch {
        continue;
      }
      this.windows.restore(e.key, { alert: this.#redact(a), record });
    }
  }

  /**
   * One consumed batch: resolves when each of its alerts is delivered, parked or held, so its offsets may commit;
   * throws (retryable) when it is to be tried again.
   */
  async handle(batch: Batch): Promise<void> {
    const { records, alerts } = await this.#take(batch);
    const folds = foldAlerts(alerts, this.o.policy.fold);
    const held = await this.#hold(folds, records);
    const messages = groupMessages(
      folds.filter((f) => !held.includes(f)),
      this.o.policy.messages,
    );
    await this.#deliverAll(messages, batch.signal, records);
    if (batch.signal.aborted) throw stopping();
  }

  async stop(): Promise<void> {
    const held = await this.windows.stop();
    if (held > 0) this.o.log.info('held alerts kept for the next start', { alerts: held });
    await this.o.sink.close().catch((err) => this.o.log.warn('sink close failed', { err }));
    await this.o.store.close();
  }

  /**
   * The batch's alerts this instance still has to handle: decoded (the undecodable go to the dead-letter topic),
   * routed here, not handled before nor repeated in the batch, redacted.
   */
  async #take(batch: Batch): Promise<{ records: Records; alerts: Alert[] }> {
    const { deps, store, log } = this.o;
    const records: Records = new Map();
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
      if (!this.o.wants(a) || store.has(a.alertId) || records.has(a.alertId)) continue;
      records.set(a.alertId, r);
      alerts.push(this.#redact(a));
    }
    if (dead.length > 0) {
      log.warn('undecodable alerts sent to the dead-letter topic', {
        count: dead.length,
        topic: deps.topics.deadLetter,
      });
      await this.#sender.publish(dead, deps.topics.deadLetter);
    }
    return { records, alerts };
  }

  /** Holds the folds whose throttle window is open: journalled (fsynced) first. Returns them. */
  async #hold(folds: readonly Fold[], records: Records): Promise<Fold[]> {
    const hold = folds.filter((f) => this.windows.has(f.key));
    if (hold.length === 0) return hold;
    await this.o.store.hold(
      hold.flatMap((f) => f.alerts.map((a) => heldEntry(a.alertId, f.key, records.get(a.alertId)!))),
    );
    for (const f of hold) {
      this.windows.hold(
        f.key,
        f.alerts.map((a) => ({ alert: a, record: records.get(a.alertId)! })),
      );
    }
    return hold;
  }

  /** Sends the messages, `concurrency` at a time; a message delivered opens its folds' throttle windows. */
  async #deliverAll(messages: readonly Message[], signal: AbortSignal, records: Records): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < messages.length) {
        const m = messages[next++]!;
        if ((await this.#sender.deliver(m, signal, records)) && this.o.policy.fold !== false) {
          for (const f of m.folds) this.windows.open(f.key);
        }
      }
    };
    const results = await Promise.allSettled(
      Array.from({ length: Math.min(this.o.policy.concurrency, messages.length) }, worker),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** A closed window's alerts, as summaries. */
  async #sendHeld(held: readonly Held[], signal: AbortSignal): Promise<void> {
    const records: Records = new Map(held.map((h) => [h.alert.alertId, h.record]));
    const messages = groupMessages(
      foldAlerts(
        held.map((h) => h.alert),
        this.o.policy.fold,
      ),
      this.o.policy.messages,
    );
    for (const m of messages) await this.#sender.deliver(m, signal, records);
  }

  #redact(a: Alert): Alert {
    return this.o.policy.redactor ? this.o.policy.redactor.alert(a) : a;
  }
}
