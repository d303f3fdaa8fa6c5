#!/usr/bin/env node
/**
 * `edr`: the one command-line entry point. A process's subcommand lives with the process it drives (the pipeline's
 * own, up, down and broker, live here) and is loaded only when called, so `edr rules check` does not pay for the
 * Kafka client or the native addon.
 */
import { EdrError } from '../infra/errors.js';
import type { Command } from './command.js';

const commands: Record<string, () => Promise<{ command: Command }>> = {
  acls: () => import('./acls.js'),
  broker: () => import('./broker.js'),
  collector: () => import('../collector/main.js'),
  down: () => import('./down.js'),
  up: () => import('./up.js'),
  detector: () => import('../detector/main.js'),
  hunt: () => import('../detector/hunt.js'),
  replay: () => import('../detector/replay.js'),
  rules: () => import('../detector/rules-cli.js'),
  sinks: () => import('../sinks/main.js'),
  topics: () => import('./topics.js'),
};

async function usage(): Promise<string> {
  const names = Object.keys(commands).sort();
  const lines = await Promise.all(
    names.map(async (n) => `  ${n.padEnd(8)} ${(await commands[n]!()).command.summary}`),
  );
  return `usage: edr <command> [options]\n\ncommands:\n${lines.join('\n')}\n\nedr <command> --help for a command's options\n`;
}

async function main(): Promise<number> {
  const [name, ...rest] = process.argv.slice(2);
  if (name === undefined || name === '--help' || name === '-h') {
    process.stdout.write(await usage());
    return name === undefined ? 2 : 0;
  }
  const load = commands[name];
  if (load === undefined) {
    process.stderr.write(`edr: unknown command '${name}'\n\n${await usage()}`);
    return 2;
  }
  const { command } = await load();
  return command.run(rest);
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof EdrError) process.stderr.write(`edr: ${err.message} [${err.code}]\n`);
    else process.stderr.write(`edr: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
