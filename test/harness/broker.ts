/**
 * The broker tests run against. The test runner (test/run.ts) starts one per run and passes its address in
 * EDR_TEST_KAFKA_BROKERS; a test file run on its own starts one for its process instead. Either way, a broker
 * that cannot start fails the test with the broker's own log tail: Kafka tests never skip.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type Broker, startBroker } from '../../infra/kafka/broker.js';
import { kafkaConfigSchema } from '../../infra/kafka/config.js';
import { KafkaTransport } from '../../infra/kafka/transport.js';

let own: Promise<Broker> | undefined;

export async function testBrokers(): Promise<string[]> {
  const fromRunner = process.env['EDR_TEST_KAFKA_BROKERS'];
  if (fromRunner) return fromRunner.split(',');
  own ??= (async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-test-kafka-'));
    const b = await startBroker({ dir });
    process.once('exit', () => {
      try {
        process.kill(b.pid, 'SIGKILL');
      } catch {}
    });
    return b;
  })();
  return (await own).brokers;
}

export async function stopOwnBroker(): Promise<void> {
  if (own) await (await own).stop();
  own = undefined;
}

export async function testTransport(clientId = 'edr-test'): Promise<KafkaTransport> {
  return new KafkaTransport(kafkaConfigSchema.parse({ brokers: await testBrokers(), clientId }));
}
