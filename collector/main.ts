/**
 * `edr collector --config FILE`: captures every exec on this host and publishes it to Kafka. SIGTERM or SIGINT
 * stops the capture, publishes what it captured (or leaves it in the spool when the broker is down) and a
 * STOPPED record, then exits 0. A replay source ends by itself at the end of its file.
 */
import { commandArgs } from '../infra/command-args.js';
import { loadConfig } from '../infra/config.js';
import { KafkaTransport } from '../infra/kafka/transport.js';
import { createLogger } from '../infra/log.js';
import { Collector } from './collector.js';
import { collectorConfigSchema } from './config.js';

const help = `usage: edr collector --config FILE

  Captures every exec on this host (eBPF, needs root) and publishes it to the raw and audit topics,
  spooling to disk while the broker is unreachable. SIGTERM/SIGINT: flush and stop.

  --config FILE   YAML: kafka (brokers, ...), source (type: ebpf | replay), spool, publish, enrich,
                  hashing, topics, host; see collector/config.ts
`;

export const command = {
  summary: 'capture execs on this host and publish them (eBPF; replay for demos)',
  async run(argv: string[]): Promise<number> {
    const args = commandArgs(argv, {
      usage: help,
      options: { config: { type: 'string', short: 'c' } },
      required: ['config'],
      missing: 'edr collector: --config FILE is required\n\n',
    });
    if (typeof args === 'number') return args;
    const config = loadConfig(collectorConfigSchema, args.values.config);
    const log = createLogger({ component: 'collector' });
    const transport = new KafkaTransport(config.kafka, log.child({ component: 'kafka' }));
    let collector: Collector;
    try {
      collector = new Collector({ config, transport, log });
    } catch (err) {
      await transport.close();
      throw err;
    }
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals): void => {
      signals++;
      if (signals > 1) {
        log.warn('second signal: exiting without flushing (the spool keeps what it has)', { signal: sig });
        process.exit(130);
      }
      log.info('stopping', { signal: sig });
      void collector.stop();
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    try {
      await collector.run();
    } finally {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      await transport.close();
    }
    return 0;
  },
};
