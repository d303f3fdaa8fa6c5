/**
 * Writer schemas by fingerprint on the compacted schemas topic (key: fingerprint in hex, value: the canonical
 * form). Every writer publishes its schemas when it starts; every reader follows the topic and registers what it
 * finds, so a record from a newer or older writer decodes by Avro's resolution rules instead of being refused.
 */
import { randomUUID } from 'node:crypto';
import type { Consumption, Transport } from '../infra/transport.js';
import type { Codec } from './codec.js';
import { topics } from './topics.js';

export function fingerprintKey(fp: bigint): string {
  return fp.toString(16).padStart(16, '0');
}

export async function publishWriterSchemas(
  transport: Transport,
  codec: Codec,
  topic: string = topics.schemas.name,
): Promise<void> {
  const producer = await transport.producer();
  try {
    await producer.publish(
      [...codec.writerSchemas()].map(([fp, canonical]) => ({
        topic,
        key: fingerprintKey(fp),
        value: Buffer.from(canonical),
      })),
    );
  } finally {
    await producer.close();
  }
}

export interface SchemaFollower {
  /**
   * Waits until the schema with this fingerprint is known (true) or `timeoutMs` passed (false): a record can
   * arrive moments before its writer's schema does.
   */
  resolve(fingerprint: bigint, timeoutMs?: number): Promise<boolean>;
  stop(): Promise<void>;
}

export async function followWriterSchemas(
  transport: Transport,
  codec: Codec,
  topic: string = topics.schemas.name,
): Promise<SchemaFollower> {
  const known = new Set<string>([...codec.writerSchemas().keys()].map(fingerprintKey));
  let waiters: Array<() => void> = [];
  // A group of its own, from the beginning: every reader needs the whole (compacted) topic.
  const consumption: Consumption = await transport.consume({
    groupId: `edr-schemas-${randomUUID()}`,
    topics: [topic],
    start: 'earliest',
    handler: async (batch) => {
      for (const r of batch.records) {
        if (r.value === null) continue;
        // A malformed entry must not stop the follower: it is skipped, and its records stay undecodable.
        try {
          known.add(fingerprintKey(codec.addWriterSchema(r.value.toString('utf8'))));
        } catch {}
      }
      const w = waiters;
      waiters = [];
      for (const f of w) f();
    },
  });
  return {
    async resolve(fingerprint, timeoutMs = 5000) {
      const key = fingerprintKey(fingerprint);
      const deadline = Date.now() + timeoutMs;
      while (!known.has(key)) {
        const left = deadline - Date.now();
        if (left <= 0) return false;
        await new Promise<void>((r) => {
          const t = setTimeout(r, left);
          waiters.push(() => {
            clearTimeout(t);
            r();
          });
        });
      }
      return true;
    },
    stop: () => consumption.stop(),
  };
}
