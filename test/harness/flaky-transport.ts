/** Helpers for the collector's unit tests: a transport whose broker can be "down", and reading topics back. */
import { EdrError } from '../../infra/errors.js';
import { MemoryTransport } from '../../infra/memory-transport.js';
import type { InRecord, Producer, Transport } from '../../infra/transport.js';

/** The in-memory transport behind a switch: while `down`, connecting and publishing fail as Kafka's would. */
export class FlakyTransport extends MemoryTransport {
  down = false;
  publishCalls = 0;

  override async producer(): Promise<Producer> {
    if (this.down)
      throw new EdrError('EDR_KAFKA', 'connecting producer: connection refused', { retryable: true });
    const inner = await super.producer();
    return {
      publish: async (records) => {
        this.publishCalls++;
        if (this.down) throw new EdrError('EDR_KAFKA', 'publishing: connection refused', { retryable: true });
        await inner.publish(records);
      },
      close: () => inner.close(),
    };
  }
}

/** Every record of `topic` so far, in partition then offset order. */
export async function readAll(transport: Transport, topic: string, expected: number): Promise<InRecord[]> {
  const got: InRecord[] = [];
  const consumption = await transport.consume({
    groupId: `read-${topic}-${Math.random()}`,
    topics: [topic],
    start: 'earliest',
    handler: async (batch) => {
      got.push(...batch.records);
    },
  });
  const deadline = Date.now() + 10_000;
  while (got.length < expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  await consumption.stop();
  return got.sort((a, b) => a.partition - b.partition || a.offset - b.offset);
}
