/**
 * `edr up` / `edr down`: the pipeline on this host, and exactly what runs of it: a local Kafka broker (unless
 * --brokers names an existing cluster) with every topic of the topics table, the collector (when it can capture:
 * root and the native addon), a detector worker on the project's rules (or --rules DIR), and an alert router
 * writing alerts to a file. A stage that cannot run says why in its line; none is pretended.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { generateKeyFiles, readPublicKey } from '../detector/rule-signing.js';
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
        rules, detector/rules) that also follows the rules topic, trusting the key pair made once in
        .edr/rules-signing.{key,pub}, and an alert router writing every alert to .edr/alerts/alerts.jsonl.
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
export function localConfigs(o: {
  stateDir: string;
  /** The `kafka:` section as written in YAML (secrets as references); each service gets its own client id. */
  kafka: Record<string, unknown>;
  rulesDir: string;
  /** The public key the detector trusts rules-topic records with. */
  rulesPublicKey: string;
}) {
  const kafka = (clientId: string) => ({ ...o.kafka, clientId });
  return {
    collector: {
      kafka: kafka('edr-collector'),
      source: { type: 'ebpf' },
      spool: { dir: path.join(o.stateDir, 'collector-spool') },
    },
    detector: {
      kafka: kafka('edr-detector'),
      rules: { dir: path.resolve(o.rulesDir), publicKeys: [path.resolve(o.rulesPublicKey)] },
    },
    sinks: {
      kafka: kafka('edr-sinks'),
      stateDir: path.join(o.stateDir, 'sinks-state'),
      sinks: { 'alerts-file': { type: 'file', directory: alertsDir(o.stateDir), file: 'alerts.jsonl' } },
      routes: [{ to: ['alerts-file'] }],
    },
  };
}

/**
 * The local pipeline's rules signing key pair in the state dir, made on the first `edr up` and kept: the detector
 * follows the rules topic and accepts only records signed with it (`edr rules push --signing-key` the .key file).
 */
export function localRulesKey(state: string): {
  privateKey: string;
  publicKey: string;
  keyId: string;
  made: boolean;
} {
  const privateKey = path.join(state, 'rules-signing.key');
  const publicKey = path.join(state, 'rules-signing.pub');
  if (existsSync(publicKey) && existsSync(privateKey))
    return { privateKey, publicKey, keyId: readPublicKey(publicKey).id, made: false };
  return { ...generateKeyFiles(state, 'rules-signing'), made: true };
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
    const transport = new KafkaTransport(upConfig, createLogger({ component: 'up' }, 'error'));
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
    const key = localRulesKey(stateDir);
    process.stdout.write(
      `rules key  ${(key.made ? 'made' : 'ready').padEnd(9)} ${key.publicKey} (key id ${key.keyId}; ` +
        `sign pushes with: npx edr rules push DIR --brokers ${brokers.join(',')} --signing-key ${key.privateKey})\n`,
    );
    const configs = localConfigs({ stateDir, kafka, rulesDir: values.rules, rulesPublicKey: key.publicKey });
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
