/**
 * Reading the compacted rules topic. Every worker follows it from the beginning in a group of its own (so each
 * sees every rule), and `edr rules list|push` read it once to the end. The topic is written without transactions
 * (`edr rules push` publishes plain records), so its end offset is the offset after its last record.
 */
import { randomBytes } from 'node:crypto';
import { settled } from '../infra/retry.js';
import type { Consumption, InRecord, Transport } from '../infra/transport.js';

export interface RuleRecord {
  key: string;
  value: string | null;
}

function toRuleRecord(r: InRecord): RuleRecord | undefined {
  if (r.key === null) return undefined;
  return { key: r.key.toString('utf8'), value: r.value === null ? null : r.value.toString('utf8') };
}

/**
 * Follows the topic: `apply` gets each batch of records in order. `ready` resolves once everything that was in
 * the topic at start has been applied (or after `readyTimeoutMs`, so a broken topic does not block detection).
 */
export async function followRulesTopic(
  transport: Transport,
  topic: string,
  groupPrefix: string,
  apply: (records: RuleRecord[]) => void,
  readyTimeoutMs = 30_000,
): Promise<{ ready: Promise<void>; consumption: Consumption }> {
  const ends = await settled(() => transport.endOffsets(topic));
  const pending = new Map(ends.filter((e) => e.offset > 0).map((e) => [e.partition, e.offset]));
  let markReady!: () => void;
  const ready = new Promise<void>((r) => {
    markReady = r;
  });
  if (pending.size === 0) markReady();
  const timer = setTimeout(markReady, readyTimeoutMs);
  timer.unref();
  const consumption = await transport.consume({
    // A fresh group per start: a worker must read the whole compacted topic each time it starts.
    groupId: `${groupPrefix}-${randomBytes(6).toString('hex')}`,
    topics: [topic],
    start: 'earliest',
    handler: async (batch) => {
      apply(batch.records.map(toRuleRecord).filter((r): r is RuleRecord => r !== undefined));
      const last = batch.records[batch.records.length - 1];
      const end = pending.get(batch.partition);
      if (last !== undefined && end !== undefined && last.offset >= end - 1) {
        pending.delete(batch.partition);
        if (pending.size === 0) {
          clearTimeout(timer);
          markReady();
        }
      }
    },
  });
  return { ready, consumption };
}

/** The topic's current content: rule id → YAML (deleted rules absent). */
export async function readRulesTopic(transport: Transport, topic: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const { ready, consumption } = await followRulesTopic(
    transport,
    topic,
    'edr-rules-cli',
    (records) => {
      for (const r of records) {
        if (r.value === null) out.delete(r.key);
        else out.set(r.key, r.value);
      }
    },
    60_000,
  );
  await ready;
  await consumption.stop();
  return out;
}
