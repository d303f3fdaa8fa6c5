/**
 * `npm test`: starts one Kafka broker for the whole run (fresh storage, free loopback ports), runs every compiled
 * test file against it with node:test, and stops the broker at the end, whatever happened. A broker that cannot
 * start fails the run with its log tail: Kafka tests never skip.
 *
 * Usage: node dist/test/run.js [FILTER...]  (FILTER: substrings of test file paths below dist/, to run only those)
 *
 * The failover tests (test/e2e/failover-*) are a step of their own: without a filter they are left out, and
 * `npm run test:failover` runs them (`node dist/test/run.js e2e/failover-`). They start their own brokers (they
 * kill them), so a run of only them starts no shared broker. They are not in `npm test` yet: they find detector and
 * sink failures after a broker fault that are still being fixed (issue 15).
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

/** The separate step's files: slow, each with brokers of its own. */
const SEPARATE_STEP = 'test/e2e/failover-';

async function main(): Promise<number> {
  const filters = process.argv.slice(2);
  const dist = path.join(repoRoot, 'dist');
  // Filters match the path below dist/, so the checkout's own folder name never matches them all.
  const files = (await testFiles(dist)).filter((f) => {
    const rel = path.relative(dist, f);
    return filters.length === 0 ? !rel.startsWith(SEPARATE_STEP) : filters.some((x) => rel.includes(x));
  });
  if (files.length === 0) {
    process.stderr.write(`no test files match ${filters.join(' ')}\n`);
    return 1;
  }
  if (files.every((f) => path.relative(dist, f).startsWith(SEPARATE_STEP))) return runTests(files, []);
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
    return await runTests(files, broker.brokers);
  } finally {
    await stopBroker();
  }
}

function runTests(files: string[], brokers: string[]): Promise<number> {
  return new Promise<number>((resolve) => {
    const child = spawn(process.execPath, ['--test', '--test-reporter=spec', ...files], {
      stdio: 'inherit',
      env: {
        ...process.env,
        ...(brokers.length > 0 ? { EDR_TEST_KAFKA_BROKERS: brokers.join(',') } : {}),
        EDR_LOG_LEVEL: process.env['EDR_LOG_LEVEL'] ?? 'error',
        // In CI every end-to-end test must run: one that cannot (not root, no BTF) fails instead of skipping.
        ...(process.env['CI'] ? { EDR_E2E_REQUIRED: '1' } : {}),
      },
    });
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
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
