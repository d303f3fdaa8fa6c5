/**
 * Drives bpf/build/exec-storm (built by `npm run build:native`), the generator that fork+execs /bin/true as fast
 * as it can, for the exec-storm and collector-storm benchmarks. Settings come from the environment:
 * EDR_BENCH_EXECS (default 20000), EDR_BENCH_WORKERS (default: cores), EDR_BENCH_ROUNDS (default 2).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from '../../infra/paths.js';

export interface StormResult {
  execs: number;
  workers: number;
  failedWorkers: number;
  elapsedNs: number;
  /** The generator's own and its children's CPU. */
  cpuUserNs: number;
  cpuSysNs: number;
}

export const stormSettings = {
  execs: Number(process.env['EDR_BENCH_EXECS'] ?? 20000),
  workers: Number(process.env['EDR_BENCH_WORKERS'] ?? os.availableParallelism()),
  rounds: Math.max(1, Number(process.env['EDR_BENCH_ROUNDS'] ?? 2)),
};

function generatorPath(): string {
  const file = path.join(repoRoot, 'bpf', 'build', 'exec-storm');
  if (!existsSync(file))
    throw new Error(`exec storm generator not built (${file}): run npm run build:native`);
  return file;
}

/** Runs `count` execs of /bin/true carrying `marker` in argv; resolves with what the generator reports. */
export function storm(count: number, marker: string): Promise<StormResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      generatorPath(),
      [String(count), String(stormSettings.workers), '/bin/true', marker],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) reject(new Error(`exec-storm exited with ${code}: ${out}`));
      else resolve(JSON.parse(out) as StormResult);
    });
  });
}

export const cpuSeconds = (r: StormResult): number => (r.cpuUserNs + r.cpuSysNs) / 1e9;
export const rate = (r: StormResult): number => r.execs / (r.elapsedNs / 1e9);
export const fmt = (n: number, digits = 3): string => n.toFixed(digits);
