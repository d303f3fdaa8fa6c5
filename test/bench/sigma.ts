/**
 * Sigma engine throughput on generated execve events (deterministic): (a) the linux process_creation and auditd
 * execve rules, (b) the whole SigmaHQ corpus with log source routing off. Each figure is set against the naive
 * path (every routed rule evaluated on every event) measured in the same run, as a ratio.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  type CompiledRule,
  createEngine,
  type Engine,
  evaluateExecve,
  loadRules,
} from '../../detector/sigma/engine.js';
import type { ExecveEvent } from '../../schemas/types.js';
import { generateEvents } from '../fixtures/events.js';
import { ACTIVE, SIGMA } from '../fixtures/sigma-corpus.js';

const MIN_MS = Number(process.env['EDR_BENCH_MS'] ?? 2000);

/**
 * Events per second of CPU time for one engine: passes over the events until MIN_MS of CPU time have been
 * used. CPU time, not wall time, so that other work on a shared machine does not count against a core.
 */
function throughput(engine: Engine, events: readonly ExecveEvent[]): { eps: number } {
  for (let i = 0; i < Math.min(events.length, 2000); i++) evaluateExecve(engine, events[i]!); // warm-up, builds routes
  let n = 0;
  const start = process.cpuUsage();
  let usedMs = 0;
  while (usedMs < MIN_MS) {
    for (let i = 0; i < 1000; i++) {
      evaluateExecve(engine, events[n % events.length]!);
      n++;
    }
    const u = process.cpuUsage(start);
    usedMs = (u.user + u.system) / 1000;
  }
  return { eps: (n / usedMs) * 1000 };
}

function fmt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

function scenario(
  name: string,
  rules: readonly CompiledRule[],
  routing: boolean,
  events: readonly ExecveEvent[],
): void {
  collect();
  const fastEngine = createEngine(rules, { routing });
  const naiveEngine = createEngine(rules, { routing, index: false });
  // The same matches on the same events: both paths do the same work.
  const sample = events.slice(0, 500);
  const count = (e: Engine) => sample.reduce((n, ev) => n + evaluateExecve(e, ev).length, 0);
  const fastMatches = count(fastEngine);
  const naiveMatches = count(naiveEngine);
  collect();
  const fast = throughput(fastEngine, events);
  collect();
  const naive = throughput(naiveEngine, events);
  process.stdout.write(
    `${name}: ${rules.length} rules, routing ${routing ? 'on' : 'off'}\n` +
      `  candidate index  ${fmt(fast.eps).padStart(11)} events/s/core  (${fastMatches} matches on the first 500 events)\n` +
      `  naive baseline   ${fmt(naive.eps).padStart(11)} events/s/core  (${naiveMatches} matches on the first 500 events)\n` +
      `  ratio            ${(fast.eps / naive.eps).toFixed(1).padStart(11)}x\n`,
  );
}

/** Every active SigmaHQ rule, compiled, with file names from the corpus root. */
function loadCorpus(): { rules: CompiledRule[]; ms: number } {
  const t0 = process.hrtime.bigint();
  const rules: CompiledRule[] = [];
  for (const d of ACTIVE) {
    for (const r of loadRules(join(SIGMA, d)).rules) {
      r.doc.file = `${d}/${r.doc.file}`;
      rules.push(r);
    }
  }
  return { rules, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
}

/** A full collection between figures, so one figure does not pay for the garbage of the previous setup. */
const collect: () => void = (() => {
  v8.setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
})();

/** Live heap: what the rules, the engine and its caches hold, after a collection. */
function heap(): string {
  collect();
  const mem = process.memoryUsage();
  return `heap used ${fmt(mem.heapUsed / 1048576)} MiB (rss ${fmt(mem.rss / 1048576)} MiB)`;
}

function main(): void {
  if (!existsSync(join(SIGMA, 'rules'))) {
    process.stderr.write(`bench sigma: SigmaHQ corpus not found at ${SIGMA}\n`);
    process.exitCode = 1;
    return;
  }
  const events = generateEvents(20_000, 1);
  const first = loadCorpus();
  process.stdout.write(
    `sigma bench: ${first.rules.length} rules loaded and compiled in ${fmt(first.ms)} ms; ${events.length} ` +
      `generated execve events (each evaluated as process_creation and as auditd EXECVE); ` +
      `>= ${MIN_MS} ms of CPU time per figure\n`,
  );
  // (a) is a detector holding only its linux rules: the rest of the corpus is dropped before measuring.
  const linux = first.rules.filter(
    (r) =>
      (r.logsource.product === 'linux' && r.logsource.category === 'process_creation') ||
      r.doc.file.startsWith('rules/linux/auditd/execve/'),
  );
  first.rules.length = 0;
  scenario('(a) linux process_creation + auditd execve', linux, true, events);
  process.stdout.write(`  ${heap()}\n`);
  const all = loadCorpus().rules;
  scenario('(b) whole corpus, log source routing off', all, false, events);
  process.stdout.write(`  ${heap()}\n`);
}

main();
