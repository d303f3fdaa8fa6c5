/**
 * `edr up` / `edr down`: the pipeline on this host, and exactly what runs of it: a local Kafka broker (unless
 * --brokers names an existing cluster) with every topic of the topics table, the collector (when it can capture:
 * root and the native addon), a detector worker on the project's rules (or --rules DIR), and an alert router
 * writing alerts to a file. A stage that cannot run says why in its line; none is pretended.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startBackgroundCollector } from '../collector/background.js';
import { allTopics } from '../schemas/topics.js';
import { type BackgroundService, startBackground, stopBackground, yamlList } from './background.js';
import type { Command } from './cli.js';
import { runningBroker, startBroker, stopRunningBroker } from './kafka/broker.js';
import { kafkaConfigSchema } from './kafka/config.js';
import { KafkaTransport } from './kafka/transport.js';
import { createLogger } from './log.js';
import { repoRoot } from './paths.js';

const help = `usage: edr up [--brokers HOST:PORT,...] [--port N] [--rules DIR]
       edr down

  up    start a local Kafka broker in .edr/kafka (port 9092) unless --brokers is given, create the topics,
        and start in the background: the collector (when it can capture: root, native addon built), a
        detector worker on --rules DIR (default: the project's rules, detector/rules), and an alert router
        writing every alert to .edr/alerts/alerts.jsonl
  down  stop them all and the local broker
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
        rules: { type: 'string', default: path.join(repoRoot, 'detector', 'rules') },
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
    const kafka = (clientId: string) => [
      'kafka:',
      `  brokers: ${yamlList(brokers)}`,
      `  clientId: ${clientId}`,
    ];
    const show = (name: string, s: BackgroundService) =>
      process.stdout.write(`${name.padEnd(10)} ${s.state.padEnd(9)} ${s.detail}\n`);
    show('collector', await startBackgroundCollector(stateDir, brokers));
    show(
      'detector',
      await startBackground(stateDir, {
        name: 'detector',
        command: 'detector',
        ready: '"msg":"detector started"',
        config: [
          '# written by edr up: the local pipeline',
          ...kafka('edr-detector'),
          'rules:',
          `  dir: ${JSON.stringify(path.resolve(values.rules))}`,
          '',
        ].join('\n'),
      }),
    );
    const alertsDir = path.join(stateDir, 'alerts');
    show(
      'sinks',
      await startBackground(stateDir, {
        name: 'sinks',
        command: 'sinks',
        ready: '"msg":"sink started"',
        config: [
          '# written by edr up: the local pipeline',
          ...kafka('edr-sinks'),
          `stateDir: ${JSON.stringify(path.join(stateDir, 'sinks-state'))}`,
          'sinks:',
          '  alerts-file:',
          '    type: file',
          `    directory: ${JSON.stringify(alertsDir)}`,
          '    file: alerts.jsonl',
          'routes:',
          '  - { to: [alerts-file] }',
          '',
        ].join('\n'),
      }),
    );
    process.stdout.write(`\nalerts are written to ${path.join(alertsDir, 'alerts.jsonl')}\n`);
    process.stdout.write('\nstop it with: npx edr down\n');
    return 0;
  },
};

export const down: Command = {
  summary: 'stop the local pipeline',
  async run() {
    for (const name of ['collector', 'detector', 'sinks']) {
      const stopped = await stopBackground(stateDir, name);
      process.stdout.write(`${name.padEnd(10)} ${stopped ? 'stopped' : 'was not running'}\n`);
    }
    const stopped = await stopRunningBroker(brokerDir);
    process.stdout.write(stopped ? 'kafka      stopped\n' : 'kafka      was not running\n');
    return 0;
  },
};
