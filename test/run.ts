/**
 * `npm test`: starts one Kafka broker for the whole run (fresh storage, free loopback ports), runs every compiled
 * test file against it with node:test, and stops the broker at the end, whatever happened. A broker that cannot
 * start fails the run with its log tail: Kafka tests never skip.
 *
 * Usage: node dist/test/run.js [FILTER...]  (FILTER: substrings of test file paths below dist/, to run only those)
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startBroker } from '../infra/kafka/broker.js';
import { repoRoot } from '../infra/paths.js';

async function testFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await testFiles(full)));
    else if (entry.name.endsWith('.test.js')) out.push(full);
  }
  return out.sort();
}

async function main(): Promise<number> {
  const filters = process.argv.slice(2);
  const dist = path.join(repoRoot, 'dist');
  // Filters match the path below dist/, so the checkout's own folder name never matches them all.
  const files = (await testFiles(dist)).filter(
    (f) => filters.length === 0 || filters.some((x) => path.relative(dist, f).includes(x)),
  );
  if (files.length === 0) {
    process.stderr.write(`no test files match ${filters.join(' ')}\n`);
    return 1;
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'edr-test-kafka-'));
  process.stderr.write(`starting the test broker in ${dir}\n`);
  let broker: Awaited<ReturnType<typeof startBroker>>;
  try {
    broker = await startBroker({ dir });
  } catch (err) {
    process.stderr.write(`the test broker did not start: ${(err as Error).message}\n`);
    return 1;
  }
  process.stderr.write(`test broker on ${broker.brokers.join(',')} (pid ${broker.pid})\n`);
  const stopBroker = async () => {
    await broker.stop();
    await rm(dir, { recursive: true, force: true });
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      void stopBroker().finally(() => process.exit(130));
    });
  }
  try {
    return await new Promise<number>((resolve) => {
      const child = spawn(process.execPath, ['--test', '--test-reporter=spec', ...files], {
        stdio: 'inherit',
        env: {
          ...process.env,
          EDR_TEST_KAFKA_BROKERS: broker.brokers.join(','),
          EDR_LOG_LEVEL: process.env['EDR_LOG_LEVEL'] ?? 'error',
          // In CI every end-to-end test must run: one that cannot (not root, no BTF) fails instead of skipping.
          ...(process.env['CI'] ? { EDR_E2E_REQUIRED: '1' } : {}),
        },
      });
      child.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
    });
  } finally {
    await stopBroker();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(
      `test runner failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
