/**
 * Rule evaluation on worker threads. The thread talking to Kafka (fetches, transactions) is busy with the
 * client's own work; decoding and evaluating on another core lets both run at once. A batch's record values go
 * over as one transferred buffer; what comes back is small: the indexes of records that matched (with rule and
 * fields) or did not decode. Alerts are still built on the main thread, from its own snapshot of the same
 * version, so there is one alert path whatever runs the rules.
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
import type { RuleSnapshot } from './rule-store.js';
import { type CompiledRule, compileDocs, createEngine, type Engine, evaluateExecve } from './sigma/engine.js';
import type { SigmaDoc } from './sigma/parse.js';

/** A document without its (function-valued, so not cloneable) source locator. */
type PortableDoc = SigmaDoc extends infer D ? (D extends SigmaDoc ? Omit<D, 'at'> : never) : never;

/** A rule set as it crosses to a thread. */
export interface RulesMessage {
  type: 'rules';
  version: string;
  docs: PortableDoc[];
  disabled: string[];
}

export interface BatchMessage {
  type: 'batch';
  id: number;
  data: Uint8Array;
  /** Start of each record's value in `data`, and the end of the last: records.length + 1 entries. */
  offsets: Int32Array;
}

export interface EvalResult {
  /** Records evaluated: all of them, or up to the one at which a rule threw (evaluate again from there). */
  next: number;
  matches: Array<{
    index: number;
    rule: number;
    ruleId: string;
    fields: Array<{ field: string; value: string }>;
  }>;
  /** Records that did not decode, with the codec's error code and message. */
  undecodable: Array<{ index: number; code: string; message: string }>;
  /** Rules that threw on record `next`, with why: to disable before evaluating on. */
  culprits: Array<{ ruleId: string; message: string }>;
}

/** Compiles the rule set a RulesMessage describes, exactly as the store did (same documents, same order). */
export function engineOf(m: RulesMessage): { engine: Engine; rules: CompiledRule[] } {
  const docs: SigmaDoc[] = m.docs.map((d) => ({ ...d, at: () => d.line }));
  const disabled = new Set(m.disabled);
  const rules = compileDocs(docs).rules.filter((r) => !disabled.has(r.id));
  return { engine: createEngine(rules), rules };
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
 * Decodes and evaluates the `offsets.length - 1` packed records. Stops at the first record on which a rule
 * throws, naming each rule that throws on it alone.
 */
export function evaluatePacked(
  set: { engine: Engine; rules: readonly CompiledRule[] },
  data: Buffer,
  offsets: Int32Array,
): EvalResult {
  const codec = projectCodec();
  const result: EvalResult = { next: offsets.length - 1, matches: [], undecodable: [], culprits: [] };
  let index = positions.get(set.rules);
  if (index === undefined) {
    index = new Map(set.rules.map((r, i) => [r, i]));
    positions.set(set.rules, index);
  }
  for (let i = 0; i < offsets.length - 1; i++) {
    let decoded: ReturnType<typeof codec.view>;
    try {
      decoded = codec.view(data.subarray(offsets[i]!, offsets[i + 1]!));
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
      return result;
    }
    for (const m of matches) {
      result.matches.push({ index: i, rule: index.get(m.rule)!, ruleId: m.rule.id, fields: m.fields });
    }
  }
  return result;
}

/** Record values packed into one buffer (transferred to the thread, not copied again). */
export function pack(records: readonly InRecord[]): { data: Uint8Array; offsets: Int32Array } {
  const offsets = new Int32Array(records.length + 1);
  let total = 0;
  for (let i = 0; i < records.length; i++) {
    offsets[i] = total;
    total += records[i]!.value?.length ?? 0;
  }
  offsets[records.length] = total;
  const data = new Uint8Array(total);
  for (let i = 0; i < records.length; i++) {
    const v = records[i]!.value;
    if (v !== null) data.set(v, offsets[i]!);
  }
  return { data, offsets };
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
        docs: snap.docs.map(({ at: _, ...d }) => d),
        disabled: [...snap.disabled.keys()],
      };
      t.worker.postMessage(m);
      t.version = snap.version;
    }
    const id = this.nextId++;
    const { data, offsets } = pack(records);
    const m: BatchMessage = { type: 'batch', id, data, offsets };
    const transfer = [data.buffer as ArrayBuffer, offsets.buffer as ArrayBuffer];
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
