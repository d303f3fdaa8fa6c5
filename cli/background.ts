/**
 * The pipeline's services as `edr up` runs them on this host: detached `edr <service> --config FILE` processes,
 * with config, pid and log in the state folder (.edr/<name>.yaml, .pid, .log). `edr down` stops them.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, statSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { repoRoot } from '../infra/paths.js';

export interface BackgroundService {
  state: 'started' | 'running' | 'unavailable' | 'failed';
  /** One line for `edr up`, saying what runs or why not. */
  detail: string;
}

export interface BackgroundSpec {
  /** File stem in the state folder, e.g. 'detector'. */
  name: string;
  /** The `edr` subcommand, given `--config FILE`. */
  command: string;
  /** The service's config, written as YAML under a line saying who wrote it. */
  config: Record<string, unknown>;
  /** A log line fragment that says the service is up. */
  ready: string;
  timeoutMs?: number;
}

/** A service's config file as `edr up` writes it. */
export const configText = (config: Record<string, unknown>): string =>
  `# written by edr up: the local pipeline\n${stringify(config)}`;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function runningPid(stateDir: string, name: string): Promise<number | undefined> {
  try {
    const pid = Number((await readFile(path.join(stateDir, `${name}.pid`), 'utf8')).trim());
    return Number.isInteger(pid) && pid > 0 && alive(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

export async function startBackground(stateDir: string, spec: BackgroundSpec): Promise<BackgroundService> {
  const logFile = path.join(stateDir, `${spec.name}.log`);
  const running = await runningPid(stateDir, spec.name);
  if (running !== undefined) return { state: 'running', detail: `pid ${running}, log ${logFile}` };
  await mkdir(stateDir, { recursive: true });
  const config = path.join(stateDir, `${spec.name}.yaml`);
  await writeFile(config, configText(spec.config));
  // Only this run's lines count: the log is appended to across runs.
  const logStart = existsSync(logFile) ? statSync(logFile).size : 0;
  const out = openSync(logFile, 'a');
  const child = spawn(
    process.execPath,
    [path.join(repoRoot, 'dist', 'cli', 'edr.js'), spec.command, '--config', config],
    { detached: true, stdio: ['ignore', out, out] },
  );
  closeSync(out);
  const pid = child.pid;
  if (pid === undefined) return { state: 'failed', detail: 'could not spawn node' };
  let exitCode: number | null | undefined;
  child.on('exit', (code) => {
    exitCode = code;
  });
  child.unref();
  await writeFile(path.join(stateDir, `${spec.name}.pid`), `${pid}\n`);
  const deadline = Date.now() + (spec.timeoutMs ?? 30_000);
  while (Date.now() < deadline) {
    const mine = (await readFile(logFile).catch(() => Buffer.alloc(0))).subarray(logStart).toString();
    if (exitCode !== undefined) {
      await rm(path.join(stateDir, `${spec.name}.pid`), { force: true });
      const last = mine.trim().split('\n').pop() ?? '';
      return { state: 'failed', detail: `exited (${exitCode}): ${last.slice(0, 300)}` };
    }
    if (mine.includes(spec.ready))
      return { state: 'started', detail: `pid ${pid}, config ${config}, log ${logFile}` };
    await sleep(200);
  }
  return {
    state: 'started',
    detail: `pid ${pid} (not ready after ${spec.timeoutMs ?? 30_000} ms: see ${logFile})`,
  };
}

/** SIGTERM (services flush and close), SIGKILL after 20 s. */
export async function stopBackground(stateDir: string, name: string): Promise<boolean> {
  const pid = await runningPid(stateDir, name);
  if (pid === undefined) return false;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 20_000;
  while (alive(pid) && Date.now() < deadline) await sleep(100);
  if (alive(pid)) process.kill(pid, 'SIGKILL');
  await rm(path.join(stateDir, `${name}.pid`), { force: true });
  return true;
}
