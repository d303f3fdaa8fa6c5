/**
 * Publishing with a spool in front of the broker (Vector's disk buffer, in spirit). Records are published in the
 * order they are submitted, through one idempotent producer, one request in flight:
 *
 *   online    submitted records queue in memory and go out in batches.
 *   offline   the broker is unreachable (a publish failed or was not acknowledged within `timeoutMs`): what was
 *             queued, the unacknowledged batch first, goes to the spool, and so does everything submitted after;
 *             every `retryIntervalMs` a new producer tries to connect.
 *   draining  connected again: the spool is published chunk by chunk, its cursor committed after each
 *             acknowledgement, while new records still go to the spool behind it; when the reader catches up
 *             the publisher is online again. Old records always leave before new ones.
 *
 * A batch whose publish failed may still have reached the broker: it is sent again (counted in `resent`), the
 * only source of duplicates. A new producer is made after each outage, so the broker's idempotence state of the
 * old one (whose sequence numbers a failed send may have consumed) never gets in the way.
 */
import { EdrError } from '../infra/errors.js';
import type { Logger } from '../infra/log.js';
import { abortableDelay, backoffMs } from '../infra/retry.js';
import type { OutRecord, Producer, Transport } from '../infra/transport.js';
import type { Spool } from './spool.js';

/** One record of the collector's own: an event (to raw and audit) or a lifecycle record (audit only). */
export interface Outgoing {
  key: Buffer;
  value: Buffer;
  toRaw: boolean;
  toAudit: boolean;
  /** An exec event (counted in event totals), not a lifecycle or loss record. */
  event: boolean;
}

export interface PublisherOptions {
  rawTopic: string;
  auditTopic: string;
  batchMaxEvents: number;
  timeoutMs: number;
  retryIntervalMs: number;
  maxPendingEvents: number;
  /** Runs on each new connection before anything is published (topics, writer schemas). */
  onConnect?: (producer: Producer) => Promise<void>;
  /** A lifecycle record (not an event) was refused by a full spool. */
  onDroppedRecord?: (o: Outgoing) => void;
}

export type PublisherMode = 'online' | 'offline' | 'draining';

export interface PublisherCounters {
  mode: PublisherMode;
  /** A producer is connected (the broker was reached and not lost since). */
  connected: boolean;
  /** Events acknowledged by the broker (directly or from the spool). */
  eventsPublished: number;
  eventsSpooled: number;
  /** Events refused by a full spool: lost, reported in LOSS records. */
  spoolDropped: number;
  /** Events sent again after a publish that failed or timed out (possible duplicates). */
  resent: number;
  outages: number;
  pendingEvents: number;
  spoolBytes: number;
  spoolCorruptSegments: number;
  /** Spool writes the disk refused (full, I/O error); their records are in `spoolDropped`. */
  spoolWriteErrors: number;
  /** Spool fsyncs that failed (the data stays readable; its durability across a crash is in doubt). */
  spoolSyncErrors: number;
}

const FLAG_RAW = 1;
const FLAG_AUDIT = 2;
const FLAG_EVENT = 4;

/** Spool payload: u8 flags | u16 key length | key | value. */
export function toSpoolPayload(o: Outgoing): Buffer {
  const buf = Buffer.allocUnsafe(3 + o.key.length + o.value.length);
  buf[0] = (o.toRaw ? FLAG_RAW : 0) | (o.toAudit ? FLAG_AUDIT : 0) | (o.event ? FLAG_EVENT : 0);
  buf.writeUInt16LE(o.key.length, 1);
  o.key.copy(buf, 3);
  o.value.copy(buf, 3 + o.key.length);
  return buf;
}

export function fromSpoolPayload(buf: Buffer): Outgoing {
  const flags = buf[0]!;
  const keyLength = buf.readUInt16LE(1);
  return {
    toRaw: (flags & FLAG_RAW) !== 0,
    toAudit: (flags & FLAG_AUDIT) !== 0,
    event: (flags & FLAG_EVENT) !== 0,
    key: buf.subarray(3, 3 + keyLength),
    value: buf.subarray(3 + keyLength),
  };
}

const countEvents = (items: readonly Outgoing[]): number => items.reduce((n, o) => n + (o.event ? 1 : 0), 0);

export class Publisher {
  #mode: PublisherMode;
  #pending: Outgoing[] = [];
  #producer: Producer | undefined;
  #abandoned: Promise<unknown> = Promise.resolve();
  /** The last reason a reachable broker could not be used, so it is logged once. */
  #connectProblem: string | undefined;
  /** The last publish handed to the producer, settled or not (a timed-out one may still be retried by it). */
  #inflight: Promise<unknown> = Promise.resolve();
  /** Whether the last failed #publish got as far as sending (so its records may have landed). */
  #sent = false;
  #wake: (() => void) | undefined;
  #spaceWaiters: Array<() => void> = [];
  #stopping = false;
  #deadline = Number.POSITIVE_INFINITY;
  #loop: Promise<void> | undefined;
  readonly #counters = { eventsPublished: 0, eventsSpooled: 0, spoolDropped: 0, resent: 0, outages: 0 };

  constructor(
    private readonly transport: Transport,
    private readonly spool: Spool,
    private readonly options: PublisherOptions,
    private readonly log: Logger,
  ) {
    // A spool left by an earlier run goes out before anything new.
    this.#mode = spool.empty ? 'online' : 'offline';
  }

  get mode(): PublisherMode {
    return this.#mode;
  }

  start(): void {
    this.#loop ??= this.#run().catch((err: unknown) => {
      this.log.error('publisher stopped', { err });
      throw err;
    });
  }

  /** Queues records in order. Resolves at once unless too many wait in memory for an in-flight publish. */
  async submit(items: Outgoing[]): Promise<void> {
    if (items.length === 0) return;
    if (this.#mode === 'online') {
      for (const o of items) this.#pending.push(o);
      this.#kick();
      while (this.#mode === 'online' && this.#pending.length > this.options.maxPendingEvents) {
        await new Promise<void>((r) => this.#spaceWaiters.push(r));
      }
    } else {
      this.#toSpool(items);
    }
  }

  counters(): PublisherCounters {
    return {
      mode: this.#mode,
      connected: this.#producer !== undefined,
      ...this.#counters,
      pendingEvents: countEvents(this.#pending),
      spoolBytes: this.spool.bytes,
      spoolCorruptSegments: this.spool.corruptSegments,
      spoolWriteErrors: this.spool.writeErrors,
      spoolSyncErrors: this.spool.syncErrors,
    };
  }

  /**
   * Publishes what is queued and what the spool holds, waiting for the broker up to `timeoutMs`; what is left
   * then stays in the spool for the next run. Closes the producer (not the spool).
   */
  async stop(timeoutMs: number): Promise<void> {
    this.#stopping = true;
    this.#deadline = Date.now() + timeoutMs;
    this.#kick();
    this.start();
    await this.#loop;
    if (this.#pending.length > 0) this.#toSpool(this.#pending.splice(0));
    this.spool.sync();
    await this.#closeProducer();
  }

  #kick(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  #releaseSpace(): void {
    if (this.#pending.length > this.options.maxPendingEvents && this.#mode === 'online') return;
    for (const r of this.#spaceWaiters.splice(0)) r();
  }

  #toSpool(items: Outgoing[]): void {
    const stored = this.spool.append(items.map(toSpoolPayload));
    this.#counters.eventsSpooled += countEvents(items.slice(0, stored));
    if (stored < items.length) {
      const lost = items.slice(stored);
      this.#counters.spoolDropped += countEvents(lost);
      for (const o of lost) if (!o.event) this.options.onDroppedRecord?.(o);
    }
  }

  async #run(): Promise<void> {
    for (;;) {
      const timeLeft = this.#deadline - Date.now();
      if (this.#mode === 'online') {
        if (this.#pending.length === 0) {
          if (this.#stopping) return;
          await new Promise<void>((r) => {
            this.#wake = r;
          });
          continue;
        }
        const chunk = this.#pending.slice(0, this.options.batchMaxEvents);
        if (await this.#publish(chunk)) {
          this.#pending.splice(0, chunk.length);
          this.#counters.eventsPublished += countEvents(chunk);
        } else {
          // The unacknowledged chunk is still at the head of #pending: order is kept in the spool.
          if (this.#sent) this.#counters.resent += countEvents(chunk);
          this.#goOffline(this.#pending.splice(0));
        }
        this.#releaseSpace();
      } else if (this.#mode === 'offline') {
        if (this.#stopping && timeLeft <= 0) return;
        await this.#abandoned;
        if (await this.#connect()) this.#mode = 'draining';
        else {
          // Jittered (half the interval to all of it), so a fleet's collectors do not reconnect in step.
          const interval = this.options.retryIntervalMs;
          const pause = backoffMs(1, { initialMs: interval, maxMs: interval });
          await abortableDelay(Math.min(pause, Math.max(0, timeLeft)));
        }
      } else {
        if (this.#stopping && timeLeft <= 0) return;
        const read = this.spool.read(this.options.batchMaxEvents);
        if (read.payloads.length === 0) {
          this.spool.commit(read.end);
          this.#mode = 'online';
          this.log.info('spool drained; publishing directly', { component: 'publish' });
          this.#kick();
          continue;
        }
        const chunk = read.payloads.map(fromSpoolPayload);
        if (await this.#publish(chunk)) {
          this.spool.commit(read.end);
          this.#counters.eventsPublished += countEvents(chunk);
        } else {
          this.spool.rewind();
          if (this.#sent) this.#counters.resent += countEvents(chunk);
          this.#goOffline([]);
        }
      }
    }
  }

  #goOffline(spill: Outgoing[]): void {
    this.#mode = 'offline';
    this.#counters.outages++;
    this.#toSpool(spill);
    this.#releaseSpace();
    this.log.warn('broker unreachable; spooling to disk', {
      component: 'publish',
      spoolBytes: this.spool.bytes,
    });
    // Abandon the producer: a send it still retries must settle (or time out) before the spool drains, or it
    // could land after newer records.
    const old = this.#producer;
    this.#producer = undefined;
    if (old) {
      this.#abandoned = withTimeout(
        Promise.allSettled([this.#inflight, old.close()]),
        30_000,
        'closing producer',
      ).catch(() => {});
    }
  }

  async #connect(): Promise<boolean> {
    try {
      const connecting = this.transport.producer();
      // A connection that completes after we gave up on it is closed, not leaked.
      let gaveUp = false;
      connecting.then(
        (late) => {
          if (gaveUp) void late.close().catch(() => {});
        },
        () => {},
      );
      let producer: Producer;
      try {
        producer = await withTimeout(connecting, this.options.timeoutMs, 'connecting');
      } catch (err) {
        gaveUp = true;
        throw err;
      }
      try {
        await withTimeout(
          this.options.onConnect?.(producer) ?? Promise.resolve(),
          this.options.timeoutMs,
          'preparing topics',
        );
      } catch (err) {
        this.#abandoned = producer.close().catch(() => {});
        throw err;
      }
      this.#producer = producer;
      this.log.info('connected to the broker', { component: 'publish' });
      return true;
    } catch (err) {
      // Reachable but not usable (its topics missing, say) is the operator's to fix: said once, not every retry.
      const problem = err instanceof EdrError && err.code === 'EDR_TOPICS_MISSING' ? err.message : undefined;
      if (problem !== undefined && problem !== this.#connectProblem) {
        this.log.warn('cannot publish yet; spooling to disk', { component: 'publish', err });
      } else {
        this.log.debug('broker still unreachable', { component: 'publish', err });
      }
      this.#connectProblem = problem;
      return false;
    }
  }

  async #publish(chunk: readonly Outgoing[]): Promise<boolean> {
    this.#sent = false;
    if (this.#producer === undefined && !(await this.#connect())) return false;
    const records: OutRecord[] = [];
    for (const o of chunk) {
      if (o.toRaw) records.push({ topic: this.options.rawTopic, key: o.key, value: o.value });
      if (o.toAudit) records.push({ topic: this.options.auditTopic, key: o.key, value: o.value });
    }
    try {
      this.#sent = true;
      const publishing = this.#producer!.publish(records);
      this.#inflight = publishing.catch(() => {});
      await withTimeout(publishing, this.options.timeoutMs, 'publishing');
      return true;
    } catch (err) {
      this.log.warn('publish failed', { component: 'publish', err });
      return false;
    }
  }

  async #closeProducer(): Promise<void> {
    const p = this.#producer;
    this.#producer = undefined;
    await p?.close().catch(() => {});
    await this.#abandoned;
  }
}

function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new EdrError(
            'EDR_COLLECTOR_PUBLISH_TIMEOUT',
            `${what}: no answer from the broker within ${ms} ms`,
            {
              retryable: true,
            },
          ),
        ),
      ms,
    );
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}
