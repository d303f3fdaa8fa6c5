/**
 * `edr up` / `edr down`: the pipeline on this host, and exactly what runs of it: a local Kafka broker (unless
 * --brokers names an existing cluster) with every topic of the topics table, the collector (when it can capture:
 * root and the native addon), a detector worker on the project's rules (or --rules DIR), and an alert router
 * writing alerts to a file. A stage that cannot run says why in its line; none is pretended.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { commandArgs } from '../infra/command-args.js';
import { loadConfig, parseConfig } from '../infra/config.js';
import { runningBroker, startBroker, stopRunningBroker } from '../infra/kafka/broker.js';
import { kafkaConfigSchema, kafkaSectionFromEnv, kafkaUsage } from '../infra/kafka/config.js';
import { KafkaTransport } from '../infra/kafka/transport.js';
import { createLogger } from '../infra/log.js';
import { repoRoot } from '../infra/paths.js';
import { type BackgroundService, startBackground, stopBackground } from './background.js';
import type { Command } from './command.js';
import { createTableTopics } from './topics.js';

const help = `usage: edr up [--config FILE] [--brokers HOST:PORT,...] [--port N] [--rules DIR]
       edr down

  up    start a local Kafka broker in .edr/kafka (port 9092) unless brokers are given (--brokers, the
        config's or EDR_KAFKA_BROKERS), create the topics, and start in the background: the collector (when
        it can capture: root, native addon built), a detector worker on --rules DIR (default: the project's
        rules, detector/rules), and an alert router writing every alert to .edr/alerts/alerts.jsonl.
        The services connect with the same Kafka settings (one principal for all: for a fleet, give each
        service its own config and principal, see infra/deploy).
${kafkaUsage("any service's config: its kafka section is used (secrets as { env } or { file } references)")}
  down  stop them all and the local broker
`;

/**
 * The `kafka:` section up and its services use, as written in YAML (secrets stay references): --config's, else
 * the environment's. Checked here, so a mistake fails before anything starts.
 */
function kafkaSection(configFile: string | undefined): Record<string, unknown> {
  if (configFile === undefined) return kafkaSectionFromEnv();
  const file = loadConfig(z.looseObject({ kafka: z.record(z.string(), z.unknown()) }), configFile);
  parseConfig(kafkaConfigSchema, file.kafka, `${configFile}: kafka`);
  return file.kafka;
}

const stateDir = path.join(repoRoot, '.edr');
const brokerDir = path.join(stateDir, 'kafka');
const alertsDir = (state: string): string => path.join(state, 'alerts');

/** The configs `edr up` writes for the services it starts, as each process's config schema reads them. */
export function localConfigs(o: { stateDir: string; kafka: Record<string, unknown>; rulesDir: string }) {
  const kafka = (clientId: string) => ({ ...o.kafka, clientId });
  return {
    collector: {
      kafka: kafka('edr-collector'),
      source: { type: 'ebpf' },
      spool: { dir: path.join(o.stateDir, 'collector-spool') },
    },
    detector: { kafka: kafka('edr-detector'), rules: { dir: path.resolve(o.rulesDir) } },
    sinks: {
      kafka: kafka('edr-sinks'),
      stateDir: path.join(o.stateDir, 'sinks-state'),
      sinks: { 'alerts-file': { type: 'file', directory: alertsDir(o.stateDir), file: 'alerts.jsonl' } },
      routes: [{ to: ['alerts-file'] }],
    },
  };
}

const addonFile = (): string =>
  process.env['EDR_NATIVE_ADDON'] ?? path.join(repoRoot, 'native', 'build', 'Release', 'edr_capture.node');

/**
 * Why the collector cannot run on this host, or undefined when it can. It runs only where it can capture for
 * real (root, the native addon built); otherwise `edr up` says why and starts nothing.
 */
function collectorUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not started: the eBPF capture needs root (run edr up as root)';
  if (!existsSync(addonFile())) {
    return `not started: native addon not built (${addonFile()}); run native/setup.sh then npm run build:native`;
  }
  return undefined;
}

export const command: Command = {
  summary: 'start the pipeline on this host',
  async run(argv) {
    const args = commandArgs(argv, {
      usage: help,
      options: {
        config: { type: 'string' },
        brokers: { type: 'string' },
        port: { type: 'string', default: '9092' },
        rules: { type: 'string', default: path.join(repoRoot, 'detector', 'rules') },
      },
    });
    if (typeof args === 'number') return args;
    const { values } = args;
    const section = kafkaSection(values.config);
    let brokers = values.brokers?.split(',') ?? (section['brokers'] as string[] | undefined);
    if (brokers === undefined) {
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
    const kafka = { ...section, brokers };
    const upConfig = parseConfig(kafkaConfigSchema, { ...kafka, clientId: 'edr-up' }, 'kafka settings');
    const transport = new KafkaTransport(upConfig, createLogger({ component: 'up' }));
    try {
      for (const t of await createTableTopics(transport, { replication: upConfig.replicationFactor })) {
        const note = t.differences.length > 0 ? ` (differs: ${t.differences.join(', ')})` : '';
        process.stdout.write(`topic      ${t.state.padEnd(9)} ${t.name}${note}\n`);
      }
    } finally {
      await transport.close();
    }
    const show = (name: string, s: BackgroundService) =>
      process.stdout.write(`${name.padEnd(10)} ${s.state.padEnd(9)} ${s.detail}\n`);
    const configs = localConfigs({ stateDir, kafka, rulesDir: values.rules });
    const unavailable = collectorUnavailable();
    show(
      'collector',
      unavailable !== undefined
        ? { state: 'unavailable', detail: unavailable }
        : await startBackground(stateDir, {
            name: 'collector',
            command: 'collector',
            ready: '"msg":"connected to the broker"',
            config: configs.collector,
          }),
    );
    show(
      'detector',
      await startBackground(stateDir, {
        name: 'detector',
        command: 'detector',
        ready: '"msg":"detector started"',
        config: configs.detector,
      }),
    );
    show(
      'sinks',
      await startBackground(stateDir, {
        name: 'sinks',
        command: 'sinks',
        ready: '"msg":"sink started"',
        config: configs.sinks,
      }),
    );
    process.stdout.write(`\nalerts are written to ${path.join(alertsDir(stateDir), 'alerts.jsonl')}\n`);
    process.stdout.write('\nstop it with: npx edr down\n');
    return 0;
  },
};

export const down: Command = {
  summary: 'stop the local pipeline',
  async run(argv) {
    // Parsed only for --help: `edr down --help` must not stop the pipeline.
    const args = commandArgs(argv, { usage: help, options: {} });
    if (typeof args === 'number') return args;
    for (const name of ['collector', 'detector', 'sinks']) {
      const stopped = await stopBackground(stateDir, name);
      process.stdout.write(`${name.padEnd(10)} ${stopped ? 'stopped' : 'was not running'}\n`);
    }
    const stopped = await stopRunningBroker(brokerDir);
    process.stdout.write(stopped ? 'kafka      stopped\n' : 'kafka      was not running\n');
    return 0;
  },
};
