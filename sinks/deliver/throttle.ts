/**
 * Throttle windows: after a message for a rule and host, identical alerts within the fold window are held
 * (journalled with their record, fsynced, then their offsets commit) and sent as one summary when the window
 * closes; the window stays open while they keep coming. So a slow storm (one alert per batch) is one message per
 * window, not one per alert. Held alerts survive a crash in the journal and are sent at the next start.
 */
import type { Logger } from '../../infra/log.js';
import type { InRecord } from '../../infra/transport.js';
import type { Alert } from '../../schemas/types.js';
import type { HeldEntry } from '../delivered-store.js';

/** An alert held for its window's summary, with the record it came in (what is parked if it cannot be sent). */
export interface Held {
  alert: Alert;
  record: InRecord;
}

export interface ThrottleOptions {
  /** How long a window stays open after it opened or last sent. */
  windowMs: number;
  /** Sends held alerts (delivered or parked); a rejection keeps them held for another try. */
  send: (held: readonly Held[], signal: AbortSignal) => Promise<void>;
  /** Whether an alert is still owed a delivery (a failed send may have delivered or parked some). */
  stillHeld: (alertId: string) => boolean;
  /**
   * Open windows at most (DEFAULT_MAX_THROTTLE_WINDOWS): one per rule and host, so a fleet-wide storm of many
   * hosts must not grow them without bound. A new window beyond it closes the window opened longest ago: an
   * empty one is forgotten (its next alert is sent, not held), one holding alerts sends its summary now.
   */
  maxWindows?: number;
  log: Logger;
}

export const DEFAULT_MAX_THROTTLE_WINDOWS = 10_000;

interface Window {
  timer: NodeJS.Timeout | undefined;
  held: Held[];
}

/** A window holding this many alerts is sent at once, not when it closes. */
const MAX_HELD = 10_000;

/** The open windows of one sink instance, by fold key (rule and host). */
export class ThrottleWindows {
  readonly #windows = new Map<string, Window>();
  readonly #flushes = new Set<Promise<void>>();
  readonly #stop = new AbortController();
  /** Windows closed early because of maxWindows. */
  evicted = 0;

  constructor(private readonly opts: ThrottleOptions) {}

  has(key: string): boolean {
    return this.#windows.has(key);
  }

  /** Opens the key's window unless it is open: alerts like the message just sent are held until it closes. */
  open(key: string): void {
    this.#open(key);
  }

  /** Holds alerts (already journalled) in the key's window, opening it if it closed meanwhile. */
  hold(key: string, held: readonly Held[]): void {
    const w = this.#open(key);
    for (const h of held) w.held.push(h);
    if (w.held.length >= MAX_HELD) this.#flush(key);
  }

  /** An alert held when the last run stopped: its window closes at once. */
  restore(key: string, held: Held): void {
    let w = this.#windows.get(key);
    if (w === undefined) {
      w = { timer: undefined, held: [] };
      this.#windows.set(key, w);
      this.#arm(key, w, 0);
    }
    w.held.push(held);
  }

  /** Closes every window now and waits for what was held to be sent. */
  async flushAll(): Promise<void> {
    for (const key of [...this.#windows.keys()]) this.#flush(key);
    await Promise.allSettled([...this.#flushes]);
  }

  /** Stops the timers, aborts and awaits the sends in progress; returns how many alerts stay held. */
  async stop(): Promise<number> {
    this.#stop.abort();
    for (const w of this.#windows.values()) clearTimeout(w.timer);
    await Promise.allSettled([...this.#flushes]);
    return [...this.#windows.values()].reduce((n, w) => n + w.held.length, 0);
  }

  get size(): number {
    return this.#windows.size;
  }

  #open(key: string): Window {
    let w = this.#windows.get(key);
    if (w === undefined) {
      this.#makeRoom();
      w = { timer: undefined, held: [] };
      this.#windows.set(key, w);
      this.#arm(key, w, this.opts.windowMs);
    }
    return w;
  }

  /** Closes the window opened longest ago (Map order) when at maxWindows. */
  #makeRoom(): void {
    const max = this.opts.maxWindows ?? DEFAULT_MAX_THROTTLE_WINDOWS;
    if (this.#windows.size < max) return;
    const [key, w] = this.#windows.entries().next().value as [string, Window];
    this.evicted++;
    if (this.evicted === 1 || this.evicted % 1000 === 0)
      this.opts.log.warn('throttle windows at their bound: the oldest closed early', {
        maxWindows: max,
        evicted: this.evicted,
      });
    clearTimeout(w.timer);
    this.#windows.delete(key);
    if (w.held.length === 0) return;
    // Its held alerts are sent now; the window is not re-opened (a later alert of its key opens a new one).
    const held = w.held;
    w.held = [];
    const p = this.opts.send(held, this.#stop.signal).catch((err: unknown) => {
      if (this.#stop.signal.aborted) return;
      this.opts.log.error('held alerts not sent; trying again', { err });
      for (const h of held) if (this.opts.stillHeld(h.alert.alertId)) this.restore(key, h);
    });
    this.#flushes.add(p);
    void p.finally(() => this.#flushes.delete(p));
  }

  #arm(key: string, w: Window, ms: number): void {
    clearTimeout(w.timer);
    if (this.#stop.signal.aborted) return;
    w.timer = setTimeout(() => this.#flush(key), ms);
    // The consumer keeps the process alive while it runs; a window must not keep it alive after a stop.
    w.timer.unref();
  }

  #flush(key: string): void {
    const w = this.#windows.get(key);
    if (w === undefined) return;
    clearTimeout(w.timer);
    w.timer = undefined;
    if (w.held.length === 0) {
      this.#windows.delete(key);
      return;
    }
    const held = w.held;
    w.held = [];
    const p = this.opts.send(held, this.#stop.signal).then(
      () => this.#arm(key, w, this.opts.windowMs),
      (err: unknown) => {
        if (this.#stop.signal.aborted) return; // still in the journal: sent at the next start
        this.opts.log.error('held alerts not sent; trying again', { err });
        w.held.unshift(...held.filter((h) => this.opts.stillHeld(h.alert.alertId)));
        this.#arm(key, w, Math.max(this.opts.windowMs, 1000));
      },
    );
    this.#flushes.add(p);
    void p.finally(() => this.#flushes.delete(p));
  }
}

/** The journal entry of a held alert. */
export function heldEntry(alertId: string, key: string, r: InRecord): HeldEntry {
  return {
    id: alertId,
    key,
    topic: r.topic,
    partition: r.partition,
    offset: r.offset,
    recordKey: r.key === null ? null : r.key.toString('base64'),
    value: (r.value ?? Buffer.alloc(0)).toString('base64'),
  };
}

/** The record a journal entry keeps (its headers and timestamp are not kept). */
export function heldRecord(e: HeldEntry): InRecord {
  return {
    topic: e.topic,
    partition: e.partition,
    offset: e.offset,
    key: e.recordKey === null ? null : Buffer.from(e.recordKey, 'base64'),
    value: Buffer.from(e.value, 'base64'),
    headers: {},
    timestampMs: 0,
  };
}
