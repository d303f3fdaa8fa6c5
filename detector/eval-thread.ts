/** An evaluation thread of `EvalPool`: rule sets and packed batches in, results out, in message order. */
import { parentPort, workerData } from 'node:worker_threads';
import { errorMessage } from '../infra/errors.js';
import {
  type BatchMessage,
  type EvalResult,
  packBuffers,
  type RulesMessage,
  ThreadRules,
} from './eval-pool.js';
import { type EvalSet, evaluateRecords } from './evaluate.js';
import type { CompiledRule } from './sigma/engine.js';

// Tests only (EvalPool's testHook): adjusts each compiled set, as a test does to the in-process one.
const hookUrl = (workerData as { testHook?: string } | null)?.testHook;
const hook =
  hookUrl === undefined
    ? undefined
    : ((await import(hookUrl)) as { adjustRules: (rules: readonly CompiledRule[]) => void }).adjustRules;

// Kept across rule sets: a change compiles only the documents it changed, here as in the store.
const rules = new ThreadRules();
let set: EvalSet | undefined;
let setError: string | undefined;

parentPort?.on('message', (m: RulesMessage | BatchMessage) => {
  if (m.type === 'rules') {
    try {
      set = rules.apply(m);
      hook?.(set.rules);
      setError = undefined;
    } catch (err) {
      set = undefined;
      setError = `compiling rule set ${m.version}: ${errorMessage(err)}`;
    }
    return;
  }
  try {
    if (set === undefined) throw new Error(setError ?? 'no rule set');
    const data = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
    const { alerts, ...rest } = evaluateRecords(set, { data, bounds: m.bounds });
    const packed = packBuffers(alerts);
    const result: EvalResult = { ...rest, alerts: packed.data, alertBounds: packed.bounds };
    parentPort!.postMessage({ id: m.id, result }, [
      result.alerts.buffer as ArrayBuffer,
      result.alertBounds.buffer as ArrayBuffer,
    ]);
  } catch (err) {
    parentPort!.postMessage({ id: m.id, error: errorMessage(err) });
  }
});
