/**
 * Rule evaluation on worker threads. The thread talking to Kafka (fetches, transactions) is busy with the
 * client's own work; decoding, evaluating and encoding alerts on another core lets both run at once. A batch's
 * record values go over as one transferred buffer; what comes back is the indexes of records that matched (with
 * rule, fields and the encoded alert) or did not decode, the alerts in one transferred buffer. A thread runs the
 * same function as the inline path (`evaluateRecords`), so there is one evaluation whatever runs the rules.
 *
 * A thread holds the compiled rule set of one snapshot version at a time: the pool sends a snapshot (the order of
 * its documents, and those the thread does not hold yet) before the first batch that needs it, and a thread
 * handles its messages in order, so a batch is never evaluated against another version than the one it was sent
 * with. A thread keeps what it compiled, so a one-rule change compiles that rule there too.
 */
import { Worker } from 'node:worker_threads';
import { EdrError, errorMessage } from '../infra/errors.js';
import type { Logger } from '../infra/log.js';
import type { InRecord } from '../infra/transport.js';
import type { EvalSet, Evaluation } from './evaluate.js';
import type { RuleSnapshot } from './rule-store.js';
import { CompileCache, compileDocs, createEngine } from './sigma/engine.js';
import type { RuleLimits } from './sigma/limits.js';
import { docKey, type SigmaDoc } from './sigma/parse.js';

/** A document without its (function-valued, so not cloneable) source locator. */
type PortableDoc = SigmaDoc extends infer D ? (D extends SigmaDoc ? Omit<D, 'at'> : never) : never;

/**
 * A rule set as it crosses to a thread: the documents in order, by key, and only those the thread has not been
 * sent before (a one-rule change sends one document, not the whole set).
 */
export interface RulesMessage {
  type: 'rules';
  version: string;
  /** Who the alerts say detected them. */
  detectorId: string;
  /** The set's documents in the store's order, by `docKey`. */
  order: string[];
  /** The documents of `order` not sent to this thread before. */
  docs: Array<{ key: string; doc: PortableDoc }>;
  disabled: string[];
  /** Rules below the alert level that no correlation needs: not evaluated. */
  unevaluated: string[];
  /** The limits the store compiled within: the thread must reject what the store rejected. */
  limits: RuleLimits;
  maxAlertBytes?: number;
}

export interface BatchMessage {
  type: 'batch';
  id: number;
  data: Uint8Array;
  /** Record i's value is data[bounds[2i]..bounds[2i+1]). */
  bounds: Int32Array;
}

/** An `Evaluation` as it comes back from a thread: the alerts in one transferred buffer. */
export interface EvalResult extends Omit<Evaluation, 'alerts'> {
  /** Match i's encoded Alert is alerts[alertBounds[2i]..alertBounds[2i+1]). */
  alerts: Uint8Array;
  alertBounds: Int32Array;
}

/** A thread's result as the in-process evaluation returns it (each alert a view of the transferred buffer). */
function unpacked(r: EvalResult): Evaluation {
  const data = Buffer.from(r.alerts.buffer, r.alerts.byteOffset, r.alerts.byteLength);
  const alerts = new Array<Buffer>(r.matches.length);
  for (let k = 0; k < alerts.length; k++)
    alerts[k] = data.subarray(r.alertBounds[2 * k]!, r.alertBounds[2 * k + 1]!);
  return { matches: r.matches, alerts, undecodable: r.undecodable, failed: r.failed };
}

/**
 * An evaluation thread's rule set: compiles what a RulesMessage describes exactly as the store did (same documents,
 * same order, same limits), keeping the documents and compiled rules of the previous set, so a one-rule change
 * compiles one rule here too, and the engine keeps the candidate index of every unchanged log source.
 */
export class ThreadRules {
  private docs = new Map<string, SigmaDoc>();
  private cache = new CompileCache();
  private limits = '';
  private last: EvalSet | undefined;

  /** Documents the last `apply` compiled (the others it reused). */
  get compiled(): number {
    return this.cache.compiled;
  }

  apply(m: RulesMessage): EvalSet {
    const limits = JSON.stringify(m.limits);
    if (limits !== this.limits) {
      // Compiled under other limits: nothing of it can be reused.
      this.cache = new CompileCache();
      this.limits = limits;
    }
    for (const { key, doc } of m.docs) this.docs.set(key, { ...doc, at: () => doc.line });
    const docs = m.order.map((key) => {
      const doc = this.docs.get(key);
      if (doc === undefined) throw new Error(`rule set ${m.version}: document ${key} was never sent`);
      return doc;
    });
    this.docs = new Map(m.order.map((key, i) => [key, docs[i]!]));
    const disabled = new Set([...m.disabled, ...m.unevaluated]);
    const rules = compileDocs(docs, { limits: m.limits }, this.cache).rules.filter(
      (r) => !disabled.has(r.id),
    );
    this.last = {
      engine: createEngine(rules, {}, this.last?.engine),
      rules,
      version: m.version,
      detectorId: m.detectorId,
      ...(m.maxAlertBytes === undefined ? {} : { maxAlertBytes: m.maxAlertBytes }),
    };
    return this.last;
  }
}

/** The rules of `snap` below its alert level that it does not evaluate. */
export function unevaluated(snap: RuleSnapshot): string[] {
  const evaluated = new Set(snap.rules.map((r) => r.id));
  return [...snap.belowLevel].filter((id) => !evaluated.has(id));
}

/** The message that brings a thread holding the documents `holds` to `snap`. */
export function rulesMessage(
  snap: RuleSnapshot,
  detectorId: string,
  holds: ReadonlySet<string>,
  maxAlertBytes?: number,
): RulesMessage {
  const order = snap.docs.map(docKey);
  const docs: RulesMessage['docs'] = [];
  snap.docs.forEach((d, i) => {
    const key = order[i]!;
    if (holds.has(key)) return;
    const { at: _, ...doc } = d;
    docs.push({ key, doc });
  });
  return {
    type: 'rules',
    version: snap.version,
    detectorId,
    order,
    docs,
    disabled: [...snap.disabled.keys()],
    unevaluated: unevaluated(snap),
    limits: { ...snap.limits },
    ...(maxAlertBytes === undefined ? {} : { maxAlertBytes }),
  };
}

/** Values packed into one buffer: value i is data[bounds[2i]..bounds[2i+1]). */
export interface Packed {
  data: Uint8Array;
  bounds: Int32Array;
}

/** Record values packed into one buffer (transferred to the thread, not copied again). */
export function pack(records: readonly InRecord[]): Packed {
  return packWith(records.length, (i) => records[i]!.value);
}

/** Buffers packed into one: buffer i is data[bounds[2i]..bounds[2i+1]) (null packs as empty). */
export function packBuffers(values: ReadonlyArray<Uint8Array | null>): Packed {
  return packWith(values.length, (i) => values[i]!);
}

/**
 * Values of one fetch usually lie in order in one response buffer, a few bytes of record framing apart: then the
 * whole span is copied at once and the bounds point into it, instead of one copy per value. One pass finds out.
 */
function packWith(n: number, at: (i: number) => Uint8Array | null): Packed {
  const bounds = new Int32Array(2 * n);
  let buffer: ArrayBufferLike | undefined;
  let start = 0;
  let end = 0;
  let bytes = 0;
  let shared = true;
  for (let i = 0; i < n; i++) {
    const v = at(i);
    if (v === null) {
      bounds[2 * i] = bounds[2 * i + 1] = end; // empty, at the span's current end (kept in order)
      continue;
    }
    const off = v.byteOffset;
    const len = v.byteLength;
    if (buffer === undefined) {
      buffer = v.buffer;
      start = off;
      for (let j = 0; j < 2 * i; j++) bounds[j] = off; // nulls before the first value
    } else if (shared && (off < end || v.buffer !== buffer)) shared = false;
    end = off + len;
    bounds[2 * i] = off;
    bounds[2 * i + 1] = end;
    bytes += len;
  }
  if (buffer !== undefined && shared && end - start - bytes <= (end - start) / 8) {
    for (let j = 0; j < 2 * n; j++) bounds[j] = bounds[j]! - start;
    // Its own ArrayBuffer (not the pool's), uninitialised: it is overwritten whole, then transferred.
    const data = Buffer.allocUnsafeSlow(end - start);
    data.set(new Uint8Array(buffer, start, end - start));
    return { data, bounds };
  }
  let total = 0;
  for (let i = 0; i < n; i++) {
    bounds[2 * i] = total;
    total += at(i)?.byteLength ?? 0;
    bounds[2 * i + 1] = total;
  }
  const data = Buffer.allocUnsafeSlow(total);
  for (let i = 0; i < n; i++) {
    const v = at(i);
    if (v !== null) data.set(v, bounds[2 * i]!);
  }
  return { data, bounds };
}

interface Thread {
  worker: Worker;
  version: string | undefined;
  /** Keys of the documents the thread holds (those of the last set sent to it). */
  holds: Set<string>;
  pending: Map<number, { resolve: (r: Evaluation) => void; reject: (err: unknown) => void }>;
}

export class EvalPool {
  private readonly threads: Array<Thread | undefined>;
  private nextId = 1;
  private closed = false;

  /**
   * `testHook`: a module each thread loads whose `adjustRules(rules)` runs on every rule set it compiles (tests
   * only: it lets a test make a rule throw on a thread as it can in-process). Never set from a config.
   */
  constructor(
    size: number,
    private readonly log: Logger,
    private readonly detectorId: string,
    private readonly opts: { maxAlertBytes?: number | undefined; testHook?: URL | undefined } = {},
  ) {
    this.threads = new Array(Math.max(1, size)).fill(undefined);
  }

  /** Evaluates `records` against `snap` on the least busy thread (`evaluateRecords` there). */
  evaluate(snap: RuleSnapshot, records: readonly InRecord[]): Promise<Evaluation> {
    if (this.closed)
      return Promise.reject(new EdrError('EDR_DETECTOR_EVAL_CLOSED', 'evaluation pool is closed'));
    let best = 0;
    for (let i = 1; i < this.threads.length; i++) {
      if ((this.threads[i]?.pending.size ?? 0) < (this.threads[best]?.pending.size ?? 0)) best = i;
    }
    const t = this.thread(best);
    if (t.version !== snap.version) {
      t.worker.postMessage(rulesMessage(snap, this.detectorId, t.holds, this.opts.maxAlertBytes));
      t.version = snap.version;
      t.holds = new Set(snap.docs.map(docKey));
    }
    const id = this.nextId++;
    const { data, bounds } = pack(records);
    const m: BatchMessage = { type: 'batch', id, data, bounds };
    const transfer = [data.buffer as ArrayBuffer, bounds.buffer as ArrayBuffer];
    return new Promise<Evaluation>((resolve, reject) => {
      t.pending.set(id, { resolve, reject });
      t.worker.postMessage(m, transfer);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.threads.map((t) => t?.worker.terminate()));
  }

  private thread(i: number): Thread {
    const existing = this.threads[i];
    if (existing !== undefined) return existing;
    const worker = new Worker(new URL('./eval-thread.js', import.meta.url), {
      workerData: { testHook: this.opts.testHook?.href },
    });
    worker.unref();
    const t: Thread = { worker, version: undefined, holds: new Set(), pending: new Map() };
    worker.on('message', (msg: { id: number; result?: EvalResult; error?: string }) => {
      const p = t.pending.get(msg.id);
      if (p === undefined) return;
      t.pending.delete(msg.id);
      if (msg.result !== undefined) p.resolve(unpacked(msg.result));
      else
        p.reject(new EdrError('EDR_DETECTOR_EVAL', `evaluation thread: ${msg.error}`, { retryable: true }));
    });
    // A dead thread fails what it held as retryable (the transport runs those batches again) and is replaced.
    const fail = (why: string) => {
      if (this.threads[i] === t) this.threads[i] = undefined;
      if (!this.closed) this.log.error('evaluation thread failed; starting another', { reason: why });
      for (const p of t.pending.values()) {
        p.reject(
          new EdrError('EDR_DETECTOR_EVAL_THREAD', `evaluation thread failed: ${why}`, { retryable: true }),
        );
      }
      t.pending.clear();
    };
    worker.on('error', (err) => fail(errorMessage(err)));
    worker.on('exit', (code) => fail(`exited with code ${code}`));
    this.threads[i] = t;
    return t;
  }
}
