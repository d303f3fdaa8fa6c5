/**
 * `edr up` / `edr down`: the pipeline on this host. Starts what exists of it and says exactly what runs:
 * a local Kafka broker (unless --brokers names an existing cluster) with every topic of the topics table.
 * The collector, detector and sinks join here as they land; nothing is printed for a stage that does not run.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startBackgroundCollector, stopBackgroundCollector } from '../collector/background.js';
import { allTopics } from '../schemas/topics.js';
import type { Command } from './cli.js';
import { runningBroker, startBroker, stopRunningBroker } from './kafka/broker.js';
import { KafkaTransport, kafkaConfigSchema } from './kafka-transport.js';
import { createLogger } from './log.js';
import { repoRoot } from './paths.js';

const help = `usage: edr up [--brokers HOST:PORT,...] [--port N]
       edr down

  up    start a local Kafka broker in .edr/kafka (port 9092) unless --brokers is given, create the topics,
        and start the collector in the background when it can capture (root, native addon built)
  down  stop the collector and the local broker
`;

const stateDir = path.join(repoRoot, '.edr');
const brokerDir = path.join(stateDir, 'kafka');

export const command: Command = {
  summary: 'start the pipeline on this host',
  async run(argv) {
    const { values } = parseArgs({
      args: argv,
      options: {
        brokers: { type: 'string' },
        port: { type: 'string', default: '9092' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
    if (values.help) {
      process.stdout.write(help);
      return 0;
    }
    let brokers: string[];
    if (values.brokers) {
      brokers = values.brokers.split(',');
    } else {
      const running = await runningBroker(brokerDir);
      if (running) {
        brokers = [`127.0.0.1:${running.port}`];
        process.stdout.write(`kafka      running   ${brokers[0]} (pid ${running.pid}, ${brokerDir})\n`);
      } else {
        const b = await startBroker({ dir: brokerDir, port: Number(values.port), detached: true });
        brokers = b.brokers;
        process.stdout.write(`kafka      started   ${brokers[0]} (pid ${b.pid}, log ${b.logFile})\n`);
      }
    }
    const transport = new KafkaTransport(
      kafkaConfigSchema.parse({ brokers, clientId: 'edr-up' }),
      createLogger({ component: 'up' }),
    );
    try {
      await transport.createTopics(
        allTopics.map((t) => ({
          name: t.name,
          partitions: t.partitions,
          cleanupPolicy: t.cleanupPolicy,
          retentionMs: t.retentionMs,
        })),
      );
    } finally {
      await transport.close();
    }
    for (const t of allTopics) {
      process.stdout.write(
        `topic      ready     ${t.name} (${t.partitions} partitions, ${t.cleanupPolicy})\n`,
      );
    }
    const collector = await startBackgroundCollector(stateDir, brokers);
    process.stdout.write(`collector  ${collector.state.padEnd(9)} ${collector.detail}\n`);
    process.stdout.write('\nstop it with: npx edr down\n');
    return 0;
  },
};

export const down: Command = {
  summary: 'stop the local pipeline',
  async run() {
    const collector = await stopBackgroundCollector(stateDir);
    process.stdout.write(collector ? 'collector  stopped\n' : 'collector  was not running\n');
    const stopped = await stopRunningBroker(brokerDir);
    process.stdout.write(stopped ? 'kafka      stopped\n' : 'kafka      was not running\n');
    return 0;
  },
};
