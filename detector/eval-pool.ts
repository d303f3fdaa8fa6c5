/**
 * Rule evaluation on worker threads. The thread talking to Kafka (fetches, transactions) is busy with the
 * client's own work; decoding, evaluating and encoding alerts on another core lets both run at once. A batch's
 * record values go over as one transferred buffer; what comes back is the indexes of records that matched (with
 * rule, fields and the encoded alert) or did not decode, the alerts in one transferred buffer. The inline path
 * encodes alerts with the same function (`encodeMatchAlert`), so there is one alert path whatever runs the rules.
 *
 * A thread holds the compiled rule set of one snapshot version at a time: the pool sends a snapshot's documents
 * before the first batch that needs it, and a thread handles its messages in order, so a batch is never evaluated
 * against another version than the one it was sent with.
 */
import { Worker } from 'node:worker_threads';
import { EdrError, errorMessage } from '../infra/errors.js';
import type { Logger } from '../infra/log.js';
import type { InRecord } from '../infra/transport.js';
import { projectCodec } from '../schemas/codec.js';
import type { ExecveEvent } from '../schemas/types.js';
import { encodeMatchAlert, ruleInfo } from './alerts.js';
import type { RuleSnapshot } from './rule-store.js';
import { type CompiledRule, compileDocs, createEngine, type Engine, evaluateExecve } from './sigma/engine.js';
import type { SigmaDoc } from './sigma/parse.js';

/** A document without its (function-valued, so not cloneable) source locator. */
type PortableDoc = SigmaDoc extends infer D ? (D extends SigmaDoc ? Omit<D, 'at'> : never) : never;

/** A rule set as it crosses to a thread. */
export interface RulesMessage {
  type: 'rules';
  version: string;
  /** Who the alerts say detected them. */
  detectorId: string;
  docs: PortableDoc[];
  disabled: string[];
  /** Rules below the alert level that no correlation needs: not evaluated. */
  unevaluated: string[];
}

export interface BatchMessage {
  type: 'batch';
  id: number;
  data: Uint8Array;
  /** Record i's value is data[bounds[2i]..bounds[2i+1]). */
  bounds: Int32Array;
}

export interface EvalResult {
  /** Records evaluated: all of them, or up to the one at which a rule threw (evaluate again from there). */
  next: number;
  matches: Array<{
    index: number;
    rule: number;
    ruleId: string;
    fields: Array<{ field: string; value: string }>;
    /** The event's host id (the alert's key). */
    hostId: string;
  }>;
  /** The encoded Alert of each match, in order: match i's is alerts[alertBounds[2i]..alertBounds[2i+1]). */
  alerts: Uint8Array;
  alertBounds: Int32Array;
  /** Records that did not decode, with the codec's error code and message. */
  undecodable: Array<{ index: number; code: string; message: string }>;
  /** Rules that threw on record `next`, with why: to disable before evaluating on. */
  culprits: Array<{ ruleId: string; message: string }>;
}

/** Compiles the rule set a RulesMessage describes, exactly as the store did (same documents, same order). */
export function engineOf(m: RulesMessage): EvalSet {
  const docs: SigmaDoc[] = m.docs.map((d) => ({ ...d, at: () => d.line }));
  const disabled = new Set([...m.disabled, ...m.unevaluated]);
  const rules = compileDocs(docs).rules.filter((r) => !disabled.has(r.id));
  return { engine: createEngine(rules), rules, version: m.version, detectorId: m.detectorId };
}

/** The rules of `snap` below its alert level that it does not evaluate. */
export function unevaluated(snap: RuleSnapshot): string[] {
  const evaluated = new Set(snap.rules.map((r) => r.id));
  return [...snap.belowLevel].filter((id) => !evaluated.has(id));
}

/** A compiled rule set and what its alerts carry. */
export interface EvalSet {
  engine: Engine;
  rules: readonly CompiledRule[];
  version: string;
  detectorId: string;
}

/** The rules that throw on `event` when evaluated alone, with their errors (to find what broke a whole set). */
export function rulesThatThrow(
  rules: readonly CompiledRule[],
  event: ExecveEvent,
): Array<{ rule: CompiledRule; err: unknown }> {
  const out: Array<{ rule: CompiledRule; err: unknown }> = [];
  for (const rule of rules) {
    try {
      evaluateExecve(createEngine([rule]), event);
    } catch (err) {
      out.push({ rule, err });
    }
  }
  return out;
}

// Position of each rule in its set, built once per set (a set lives until the next rule change).
const positions = new WeakMap<readonly CompiledRule[], Map<CompiledRule, number>>();

/**
 * Decodes and evaluates the `bounds.length / 2` packed records. Stops at the first record on which a rule
 * throws, naming each rule that throws on it alone.
 */
export function evaluatePacked(set: EvalSet, data: Buffer, bounds: Int32Array): EvalResult {
  const codec = projectCodec();
  const alerts: Buffer[] = [];
  const ctx = { ruleSetVersion: set.version, detectorId: set.detectorId, runId: null };
  const result: Omit<EvalResult, 'alerts' | 'alertBounds'> = {
    next: bounds.length / 2,
    matches: [],
    undecodable: [],
    culprits: [],
  };
  let index = positions.get(set.rules);
  if (index === undefined) {
    index = new Map(set.rules.map((r, i) => [r, i]));
    positions.set(set.rules, index);
  }
  for (let i = 0; i < bounds.length / 2; i++) {
    let decoded: ReturnType<typeof codec.view>;
    const record = data.subarray(bounds[2 * i]!, bounds[2 * i + 1]!);
    try {
      decoded = codec.view(record);
    } catch (err) {
      result.undecodable.push({
        index: i,
        code: (err as EdrError).code ?? 'EDR_SCHEMA_CORRUPT',
        message: errorMessage(err),
      });
      continue;
    }
    if (decoded.name !== 'dev.edr.v1.ExecveEvent') continue;
    let matches: ReturnType<typeof evaluateExecve>;
    try {
      matches = evaluateExecve(set.engine, decoded.value);
    } catch {
      const thrown = rulesThatThrow(set.rules, decoded.value);
      // An error no single rule reproduces: skip the event's matches rather than loop.
      if (thrown.length === 0) continue;
      result.culprits = thrown.map((t) => ({ ruleId: t.rule.id, message: errorMessage(t.err) }));
      result.next = i;
      break;
    }
    for (const m of matches) {
      const e = decoded.value;
      result.matches.push({
        index: i,
        rule: index.get(m.rule)!,
        ruleId: m.rule.id,
        fields: m.fields,
        hostId: e.hostId,
      });
      alerts.push(encodeMatchAlert(codec, record, e, ruleInfo(m.rule), m.fields, ctx));
    }
  }
  const packed = packBuffers(alerts);
  return { ...result, alerts: packed.data, alertBounds: packed.bounds };
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
  pending: Map<number, { resolve: (r: EvalResult) => void; reject: (err: unknown) => void }>;
}

export class EvalPool {
  private readonly threads: Array<Thread | undefined>;
  private nextId = 1;
  private closed = false;

  constructor(
    size: number,
    private readonly log: Logger,
    private readonly detectorId: string,
  ) {
    this.threads = new Array(Math.max(1, size)).fill(undefined);
  }

  /** Evaluates `records` against `snap` on the least busy thread. */
  evaluate(snap: RuleSnapshot, records: readonly InRecord[]): Promise<EvalResult> {
    if (this.closed)
      return Promise.reject(new EdrError('EDR_DETECTOR_EVAL_CLOSED', 'evaluation pool is closed'));
    let best = 0;
    for (let i = 1; i < this.threads.length; i++) {
      if ((this.threads[i]?.pending.size ?? 0) < (this.threads[best]?.pending.size ?? 0)) best = i;
    }
    const t = this.thread(best);
    if (t.version !== snap.version) {
      const m: RulesMessage = {
        type: 'rules',
        version: snap.version,
        detectorId: this.detectorId,
        docs: snap.docs.map(({ at: _, ...d }) => d),
        disabled: [...snap.disabled.keys()],
        unevaluated: unevaluated(snap),
      };
      t.worker.postMessage(m);
      t.version = snap.version;
    }
    const id = this.nextId++;
    const { data, bounds } = pack(records);
    const m: BatchMessage = { type: 'batch', id, data, bounds };
    const transfer = [data.buffer as ArrayBuffer, bounds.buffer as ArrayBuffer];
    return new Promise<EvalResult>((resolve, reject) => {
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
    const worker = new Worker(new URL('./eval-thread.js', import.meta.url));
    worker.unref();
    const t: Thread = { worker, version: undefined, pending: new Map() };
    worker.on('message', (msg: { id: number; result?: EvalResult; error?: string }) => {
      const p = t.pending.get(msg.id);
      if (p === undefined) return;
      t.pending.delete(msg.id);
      if (msg.result !== undefined) p.resolve(msg.result);
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
