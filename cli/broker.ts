/** `edr broker start|stop|status`: the development broker, kept in .edr/kafka unless --dir says otherwise. */
import path from 'node:path';
import { commandArgs } from '../infra/command-args.js';
import {
  answersApiVersions,
  fetchKafka,
  runningBroker,
  startBroker,
  stopRunningBroker,
} from '../infra/kafka/broker.js';
import { repoRoot } from '../infra/paths.js';
import type { Command } from './command.js';

const help = `usage: edr broker <start|stop|status|fetch> [--dir DIR] [--port N] [--fresh]

  start   start a single-node KRaft broker in the background (default port 9092)
  stop    stop it (SIGTERM, then SIGKILL after 20 s)
  status  say whether it runs and answers requests; exit 1 if not
  fetch   only fetch the Kafka jars from Maven Central
`;

export const command: Command = {
  summary: 'run a local Apache Kafka broker for development and tests',
  async run(argv) {
    const args = commandArgs(argv, {
      usage: help,
      options: {
        dir: { type: 'string', default: path.join(repoRoot, '.edr', 'kafka') },
        port: { type: 'string', default: '9092' },
        fresh: { type: 'boolean', default: false },
      },
      allowPositionals: true,
    });
    if (typeof args === 'number') return args;
    const { values } = args;
    const action = args.positionals[0];
    if (action === undefined) {
      process.stdout.write(help);
      return 2;
    }
    const dir = values.dir;
    switch (action) {
      case 'fetch':
        await fetchKafka((l) => process.stderr.write(`${l}\n`));
        return 0;
      case 'start': {
        const running = await runningBroker(dir);
        if (running) {
          process.stdout.write(`broker already running: pid ${running.pid}, 127.0.0.1:${running.port}\n`);
          return 0;
        }
        await fetchKafka((l) => process.stderr.write(`${l}\n`));
        const b = await startBroker({ dir, port: Number(values.port), fresh: values.fresh, detached: true });
        process.stdout.write(`broker started: pid ${b.pid}, ${b.brokers.join(',')}, log ${b.logFile}\n`);
        return 0;
      }
      case 'stop': {
        const stopped = await stopRunningBroker(dir);
        process.stdout.write(stopped ? 'broker stopped\n' : 'no broker running\n');
        return 0;
      }
      case 'status': {
        const running = await runningBroker(dir);
        if (!running) {
          process.stdout.write('no broker running\n');
          return 1;
        }
        const ok = await answersApiVersions(running.port);
        process.stdout.write(
          `broker pid ${running.pid} on 127.0.0.1:${running.port}: ${ok ? 'answering' : 'NOT answering'}\n`,
        );
        return ok ? 0 : 1;
      }
      default:
        process.stderr.write(`edr broker: unknown action '${action}'\n${help}`);
        return 2;
    }
  },
};
