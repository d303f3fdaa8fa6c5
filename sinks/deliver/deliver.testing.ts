/** Helpers for the delivery loop's unit tests: alerts at given times, and one sink instance over memory. */
import { createLogger } from '../../infra/log.js';
import { MemoryTransport } from '../../infra/memory-transport.js';
import { projectCodec } from '../../schemas/codec.js';
import type { Alert } from '../../schemas/types.js';
import { sampleAlert, sampleEvent } from '../../test/fixtures/events.js';
import { waitFor } from '../../test/harness/names.js';
import { parseSinksConfig } from '../config.js';
import type { Sink } from '../sink.js';
import { startSink } from './deliver.js';

export const at = (i: number) => 1_795_000_000_000_000_000n + BigInt(i) * 1_000_000_000n; // i seconds

/** Alert `a<i>`, its event `i` seconds into the test's day. */
export function alert(i: number, over: Partial<Alert> = {}, ev: Partial<Alert['event']> = {}): Alert {
  return sampleAlert({ alertId: `a${i}`, event: sampleEvent({ timeNs: at(i), ...ev }), ...over });
}

/**
 * A memory transport with the sinks' topics and one Slack-typed instance `s` (no rate limit) that every alert is
 * routed to; `instance` adds to its config. `start` runs it with the given sink in place of Slack's;
 * `consumed` waits until it has handled everything published.
 */
export async function memorySink(stateDir: string, instance: Record<string, unknown>) {
  process.env['DELIVER_TEST_URL'] = 'http://127.0.0.1:1/unused';
  const codec = projectCodec();
  const transport = new MemoryTransport();
  const topics = { alerts: 'alerts', undeliverable: 'undeliverable', deadLetter: 'dead' };
  await transport.createTopics([
    { name: 'alerts', partitions: 1 },
    { name: 'undeliverable', partitions: 1 },
    { name: 'dead', partitions: 1 },
  ]);
  const cfg = parseSinksConfig({
    kafka: { brokers: ['127.0.0.1:1'] },
    topics,
    stateDir,
    sinks: {
      s: { type: 'slack', webhookUrl: { env: 'DELIVER_TEST_URL' }, messagesPerSecond: 0, ...instance },
    },
    routes: [{ to: ['s'] }],
  });
  const producer = await transport.producer();
  const start = (sink: Sink) =>
    startSink('s', cfg.sinks['s']!, {
      transport,
      producer,
      codec,
      log: createLogger({}, 'error'),
      topics,
      stateDir,
      routes: cfg.routes,
      makeSink: () => sink,
    });
  const publish = (alerts: Array<Alert | Buffer>) =>
    producer.publish(
      alerts.map((a) => ({
        topic: 'alerts',
        key: 'k',
        value: Buffer.isBuffer(a) ? a : codec.encode('dev.edr.v1.Alert', a),
      })),
    );
  const consumed = () =>
    waitFor('all consumed', async () =>
      (await transport.lag('edr-sink-s', 'alerts')).every((l) => l.lag === 0),
    );
  return { codec, transport, start, publish, consumed };
}
