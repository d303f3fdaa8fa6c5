/**
 * The collector as `edr up` runs it on this host: detached, config in .edr/collector.yaml (pointing at the
 * pipeline's brokers), pid in .edr/collector.pid, log in .edr/collector.log. It runs only where it can capture
 * for real (root, the native addon built); otherwise `edr up` says why and starts nothing.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, statSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { repoRoot } from '../infra/paths.js';

export interface BackgroundCollector {
  state: 'started' | 'running' | 'unavailable' | 'failed';
  /** One line for `edr up`, saying what runs or why not. */
  detail: string;
}

const addonFile = (): string =>
  process.env['EDR_NATIVE_ADDON'] ?? path.join(repoRoot, 'native', 'build', 'Release', 'edr_capture.node');

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function runningPid(stateDir: string): Promise<number | undefined> {
  try {
    const pid = Number((await readFile(path.join(stateDir, 'collector.pid'), 'utf8')).trim());
    return Number.isInteger(pid) && pid > 0 && alive(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

export async function startBackgroundCollector(
  stateDir: string,
  brokers: string[],
): Promise<BackgroundCollector> {
  const running = await runningPid(stateDir);
  if (running !== undefined)
    return { state: 'running', detail: `pid ${running}, log ${path.join(stateDir, 'collector.log')}` };
  if (process.getuid?.() !== 0) {
    return { state: 'unavailable', detail: 'not started: the eBPF capture needs root (run edr up as root)' };
  }
  if (!existsSync(addonFile())) {
    return {
      state: 'unavailable',
      detail: `not started: native addon not built (${addonFile()}); run native/setup.sh then npm run build:native`,
    };
  }
  await mkdir(stateDir, { recursive: true });
  const config = path.join(stateDir, 'collector.yaml');
  const logFile = path.join(stateDir, 'collector.log');
  await writeFile(
    config,
    [
      '# written by edr up: the local pipeline',
      'kafka:',
      `  brokers: [${brokers.map((b) => JSON.stringify(b)).join(', ')}]`,
      '  clientId: edr-collector',
      'source:',
      '  type: ebpf',
      'spool:',
      `  dir: ${JSON.stringify(path.join(stateDir, 'collector-spool'))}`,
      '',
    ].join('\n'),
  );
  // Only this run's lines count: the log is appended to across runs.
  const logStart = existsSync(logFile) ? statSync(logFile).size : 0;
  const out = openSync(logFile, 'a');
  const child = spawn(
    process.execPath,
    [path.join(repoRoot, 'dist', 'infra', 'cli.js'), 'collector', '--config', config],
    {
      detached: true,
      stdio: ['ignore', out, out],
    },
  );
  closeSync(out);
  const pid = child.pid;
  if (pid === undefined) return { state: 'failed', detail: 'could not spawn node' };
  let exitCode: number | null | undefined;
  child.on('exit', (code) => {
    exitCode = code;
  });
  child.unref();
  await writeFile(path.join(stateDir, 'collector.pid'), `${pid}\n`);
  // Wait until it attached and reached the broker, or died saying why.
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    const mine = (await readFile(logFile).catch(() => Buffer.alloc(0))).subarray(logStart).toString();
    if (exitCode !== undefined) {
      await rm(path.join(stateDir, 'collector.pid'), { force: true });
      const last = mine.trim().split('\n').pop() ?? '';
      return { state: 'failed', detail: `exited (${exitCode}): ${last.slice(0, 300)}` };
    }
    if (mine.includes('"msg":"connected to the broker"')) break;
    await sleep(200);
  }
  return { state: 'started', detail: `pid ${pid}, config ${config}, log ${logFile}` };
}

/** SIGTERM (it flushes), SIGKILL after 20 s. */
export async function stopBackgroundCollector(stateDir: string): Promise<boolean> {
  const pid = await runningPid(stateDir);
  if (pid === undefined) return false;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 20_000;
  while (alive(pid) && Date.now() < deadline) await sleep(100);
  if (alive(pid)) process.kill(pid, 'SIGKILL');
  await rm(path.join(stateDir, 'collector.pid'), { force: true });
  return true;
}
