/**
 * Exec storm: bpf/build/exec-storm fork+execs /bin/true as fast as it can, once without the capture
 * (baseline) and once with it, and this prints what the capture received, what it dropped, and its CPU
 * per 1,000 execs against the storm's own CPU. Needs root and `npm run build:native`.
 *
 *   node dist/test/bench/exec-storm.js
 *   EDR_BENCH_EXECS (default 20000), EDR_BENCH_WORKERS (default: cores), EDR_BENCH_WAKEUP_BYTES (default 65536)
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type ExecCaptureStats, openExecCapture } from '../../native/index.js';

interface StormResult {
  execs: number;
  workers: number;
  failedWorkers: number;
  elapsedNs: number;
  cpuUserNs: number;
  cpuSysNs: number;
}

const here = path.dirname(fileURLToPath(import.meta.url));
const execs = Number(process.env.EDR_BENCH_EXECS ?? 20000);
const workers = Number(process.env.EDR_BENCH_WORKERS ?? os.availableParallelism());
const wakeupBytes = Number(process.env.EDR_BENCH_WAKEUP_BYTES ?? 64 * 1024);

function generatorPath(): string {
  const candidates = [
    path.resolve(here, '..', '..', '..', 'bpf', 'build', 'exec-storm'), // dist/test/bench
    path.resolve(here, '..', '..', 'bpf', 'build', 'exec-storm'), // test/bench
  ];
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new Error(`exec storm generator not built (${candidates[0]}): run npm run build:native`);
  return found;
}

/** Runs the generator; resolves with what it reports (its own and its children's CPU). */
function storm(count: number, marker: string): Promise<StormResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(generatorPath(), [String(count), String(workers), '/bin/true', marker], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
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

const cpuSeconds = (r: StormResult): number => (r.cpuUserNs + r.cpuSysNs) / 1e9;
const rate = (r: StormResult): number => r.execs / (r.elapsedNs / 1e9);
const fmt = (n: number, digits = 3): string => n.toFixed(digits);

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.log('exec-storm: skipped, needs root for the eBPF capture');
    return;
  }
  const marker = `edr-bench-${process.pid}`;
  await storm(Math.min(500, execs), `${marker}-warmup`); // page cache, fork paths

  const baseline = await storm(execs, `${marker}-baseline`);

  const capture = openExecCapture({ wakeupBytes });
  const counted = { matching: 0, all: 0 };
  const runMarker = `${marker}-capture`;
  const pump = (async () => {
    for await (const batch of capture) {
      counted.all += batch.length;
      for (const e of batch) if (e.kind === 'exec' && e.argv[1] === runMarker) counted.matching++;
    }
  })();
  const cpuStart = process.cpuUsage();
  const withCapture = await storm(execs, runMarker);
  // Let the capture catch up: every exec seen, or 2 s without progress.
  let last = -1;
  let idleSince = Date.now();
  while (counted.matching < execs && Date.now() - idleSince < 2000) {
    if (counted.matching !== last) {
      last = counted.matching;
      idleSince = Date.now();
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const cpu = process.cpuUsage(cpuStart);
  await capture.close();
  await pump;
  const stats: ExecCaptureStats = capture.stats();

  const captureCpu = (cpu.user + cpu.system) / 1e6;
  const perThousand = captureCpu / (execs / 1000);
  const basePerThousand = cpuSeconds(baseline) / (execs / 1000);
  const result = {
    execsGenerated: execs,
    workers,
    wakeupBytes,
    execsPerSecondBaseline: Math.round(rate(baseline)),
    execsPerSecondWithCapture: Math.round(rate(withCapture)),
    eventsReceived: counted.matching,
    allEventsReceived: counted.all,
    kernelDrops: stats.ringDrops + stats.kernelMisses,
    queueDrops: stats.queueDrops,
    captureCpuSecondsPer1000Execs: perThousand,
    stormCpuSecondsPer1000ExecsBaseline: basePerThousand,
    captureCpuOverStormCpu: captureCpu / cpuSeconds(baseline),
    stormCpuWithOverWithoutCapture: cpuSeconds(withCapture) / cpuSeconds(baseline),
    execRateWithOverWithoutCapture: rate(withCapture) / rate(baseline),
    coreShareAt1000ExecsPerSecond: perThousand,
  };
  console.log(`exec storm: ${execs} execs of /bin/true from ${workers} workers (wakeupBytes ${wakeupBytes})`);
  console.log(
    `  baseline (no capture): ${fmt(baseline.elapsedNs / 1e9, 2)} s, ${result.execsPerSecondBaseline} execs/s, storm CPU ${fmt(cpuSeconds(baseline), 2)} s (${fmt(basePerThousand)} s per 1000 execs)`,
  );
  console.log(
    `  with capture:          ${fmt(withCapture.elapsedNs / 1e9, 2)} s, ${result.execsPerSecondWithCapture} execs/s, storm CPU ${fmt(cpuSeconds(withCapture), 2)} s`,
  );
  console.log(
    `  events received:  ${counted.matching} of ${execs} execs (${counted.all} events of every kind)`,
  );
  console.log(
    `  kernel drops:     ${result.kernelDrops} (ring full ${stats.ringDrops}, skipped runs ${stats.kernelMisses})`,
  );
  console.log(`  queue drops:      ${stats.queueDrops}`);
  console.log(
    `  capture CPU:      ${fmt(captureCpu, 2)} s = ${fmt(perThousand)} s per 1000 execs (${fmt(perThousand * 100, 1)}% of one core at 1000 execs/s; target <= 10%)`,
  );
  console.log(
    `  ratios:           capture CPU / baseline storm CPU ${fmt(result.captureCpuOverStormCpu)}, storm CPU with / without capture ${fmt(result.stormCpuWithOverWithoutCapture)}, exec rate with / without ${fmt(result.execRateWithOverWithoutCapture)}`,
  );
  console.log(`  result: ${JSON.stringify(result)}`);
  if (counted.matching !== execs) process.exitCode = 1;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
