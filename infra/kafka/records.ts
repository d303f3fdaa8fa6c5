/** Records between the transport's shape and kafkajs's: messages to send, fetched messages, and partitioning. */
import type { EachBatchPayload, ICustomPartitioner, IHeaders, Message } from 'kafkajs';
import { partitionFor } from '../partitioner.js';
import type { InRecord, OutRecord } from '../transport.js';

function toMessage(r: OutRecord): Message {
  const m: Message = { key: r.key, value: r.value };
  if (r.headers) m.headers = r.headers as IHeaders;
  if (r.partition !== undefined) m.partition = r.partition;
  if (r.timestampMs !== undefined) m.timestamp = String(r.timestampMs);
  return m;
}

/** A record's size in a record batch, near enough: its bytes plus per-record and per-header framing. */
function recordBytes(r: OutRecord): number {
  let n = 24 + (r.key?.length ?? 0) + (r.value?.length ?? 0);
  for (const k in r.headers) n += 8 + k.length + (r.headers[k]?.length ?? 0);
  return n;
}

/** `records` in order, cut into runs of at most `maxBytes` (a record larger than that goes alone). */
export function sizedChunks(records: OutRecord[], maxBytes: number): OutRecord[][] {
  const out: OutRecord[][] = [];
  let chunk: OutRecord[] = [];
  let bytes = 0;
  for (const r of records) {
    const n = recordBytes(r);
    if (chunk.length > 0 && bytes + n > maxBytes) {
      out.push(chunk);
      chunk = [];
      bytes = 0;
    }
    chunk.push(r);
    bytes += n;
  }
  if (chunk.length > 0) out.push(chunk);
  return out;
}

export function byTopic(records: OutRecord[]): Array<{ topic: string; messages: Message[] }> {
  const map = new Map<string, Message[]>();
  for (const r of records) {
    let list = map.get(r.topic);
    if (list === undefined) {
      list = [];
      map.set(r.topic, list);
    }
    list.push(toMessage(r));
  }
  return [...map].map(([topic, messages]) => ({ topic, messages }));
}

/**
 * Kafka's default mapping, as the Java client and the memory transport compute it (`partitionFor`, which remembers
 * each string key's hash); without a key, round robin over the partitions that have a leader. kafkajs's own
 * partitioner hashed and filtered the partition list for every record.
 */
export const keyPartitioner: ICustomPartitioner = () => {
  let counter = Math.floor(Math.random() * 0x7fffffff);
  return ({ partitionMetadata, message }) => {
    if (message.partition !== null && message.partition !== undefined) return message.partition;
    const key = message.key ?? null;
    if (key !== null) return partitionFor(key, partitionMetadata.length, () => 0);
    const available = partitionMetadata.filter((p) => p.leader >= 0);
    const from = available.length > 0 ? available : partitionMetadata;
    counter = (counter + 1) & 0x7fffffff;
    return from[counter % from.length]!.partitionId;
  };
};

const NO_HEADERS: Record<string, Buffer> = Object.freeze({}) as Record<string, Buffer>;

export function toInRecord(
  topic: string,
  partition: number,
  m: EachBatchPayload['batch']['messages'][number],
): InRecord {
  // Most records carry no headers: they share one frozen empty object instead of each allocating its own.
  let headers: Record<string, Buffer> = NO_HEADERS;
  const hs = m.headers;
  for (const k in hs) {
    const v = hs[k];
    if (v === undefined) continue;
    const one = Array.isArray(v) ? v[v.length - 1] : v;
    if (one === undefined) continue;
    if (headers === NO_HEADERS) headers = {};
    headers[k] = typeof one === 'string' ? Buffer.from(one) : one;
  }
  return {
    topic,
    partition,
    offset: Number(m.offset),
    key: m.key ?? null,
    value: m.value ?? null,
    headers,
    timestampMs: Number(m.timestamp),
  };
}
