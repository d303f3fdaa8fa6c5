/**
 * `edr sinks --config FILE`: the alert router. Starts every configured sink instance (or those named with
 * --sink), each in its own consumer group, and runs until SIGTERM/SIGINT, when each finishes the batch in hand.
 */
import { commandArgs } from '../infra/command-args.js';
import { KafkaTransport } from '../infra/kafka/transport.js';
import { createLogger, type Logger } from '../infra/log.js';
import { requireTopics, type Transport } from '../infra/transport.js';
import { projectCodec } from '../schemas/codec.js';
import { topics as topicTable } from '../schemas/topics.js';
import { loadSinksConfig, type SinksConfig } from './config.js';
import { type RunningSink, startSink } from './deliver/deliver.js';

const USAGE = `usage: edr sinks --config FILE [--sink NAME ...] [--check]
       edr sinks resend --config FILE [--sink NAME ...] [--rule ID ...] [--from TIME] [--to TIME]

  --config FILE   sinks config (YAML): kafka, stateDir, sinks, routes (see sinks/README.md)
  --sink NAME     run only this sink instance (repeatable); default all
  --check         check the config (every problem at once) and exit

  resend          re-deliver alerts parked on the undeliverable topic (edr sinks resend --help)
`;

export interface Router {
  sinks: RunningSink[];
  /** Rejects when a sink's consumption fails for good. */
  done: Promise<void>;
  stop(): Promise<void>;
}

/** Runs the router over `transport` (which the caller closes). */
export async function runSinks(
  config: SinksConfig,
  transport: Transport,
  opts: { only?: string[]; log?: Logger } = {},
): Promise<Router> {
  const log = opts.log ?? createLogger({ component: 'sinks' });
  const names = Object.keys(config.sinks).filter((n) => !opts.only?.length || opts.only.includes(n));
  const { undeliverable, deadLetter } = topicTable;
  if (config.createTopics) {
    // The topics this process writes to; existing ones are left as they are.
    await transport.createTopics([
      { ...undeliverable, name: config.topics.undeliverable },
      { ...deadLetter, name: config.topics.deadLetter },
    ]);
  }
  await requireTopics(transport, Object.values(config.topics), 'sinks');
  const producer = await transport.producer();
  const sinks: RunningSink[] = [];
  const stop = async () => {
    await Promise.all(sinks.map((s) => s.stop()));
    await producer.close();
  };
  try {
    for (const name of names) {
      sinks.push(
        await startSink(name, config.sinks[name]!, {
          transport,
          producer,
          codec: projectCodec(),
          log,
          topics: config.topics,
          stateDir: config.stateDir,
          routes: config.routes,
        }),
      );
    }
  } catch (err) {
    await stop();
    throw err;
  }
  const done = Promise.all(sinks.map((s) => s.consumption.done)).then(() => {});
  done.catch(() => {});
  return { sinks, done, stop };
}

export const command = {
  summary: 'route alerts to email, Slack and files',
  async run(argv: string[]): Promise<number> {
    // Loaded only when called, like every subcommand.
    if (argv[0] === 'resend') return (await import('./resend.js')).command.run(argv.slice(1));
    const args = commandArgs(argv, {
      usage: USAGE,
      options: {
        config: { type: 'string' },
        sink: { type: 'string', multiple: true },
        check: { type: 'boolean', default: false },
      },
      required: ['config'],
    });
    if (typeof args === 'number') return args;
    const { values } = args;
    const config = loadSinksConfig(values.config);
    const unknown = (values.sink ?? []).filter((n) => !(n in config.sinks));
    if (unknown.length > 0) {
      process.stderr.write(`edr sinks: no sink named ${unknown.join(', ')} in ${values.config}\n`);
      return 2;
    }
    if (values.check) {
      const n = Object.keys(config.sinks).length;
      process.stdout.write(`${values.config}: ok (${n} sink(s), ${config.routes.length} route(s))\n`);
      return 0;
    }
    const log = createLogger({ component: 'sinks' });
    // Listening from the start: a stop asked for while the consumers are still joining is a graceful one too.
    const signalled = new Promise<string>((resolve) => {
      for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => resolve(sig));
    });
    const transport = new KafkaTransport(config.kafka);
    let router: Router;
    try {
      router = await runSinks(config, transport, { only: values.sink ?? [], log });
    } catch (err) {
      await transport.close();
      throw err;
    }
    let code = 0;
    await Promise.race([
      signalled.then((sig) => log.info('stopping', { signal: sig })),
      router.done.catch((err) => {
        log.error('a sink failed', { err });
        code = 1;
      }),
    ]);
    await router.stop();
    await transport.close();
    return code;
  },
};
