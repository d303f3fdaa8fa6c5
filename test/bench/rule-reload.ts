/**
 * The cost of applying a one-rule change, with the SigmaHQ corpus loaded as rules-topic records: (a) the linux
 * rules, (b) the whole active corpus. "whole set" is what every change cost before rules were compiled
 * incrementally, done here with the same functions in the same run: parse the record, compile every document,
 * hash them all for the version, a fresh engine whose first events build every candidate index again; on an
 * evaluation thread, every document cloned over and compiled again. "incremental" is RuleStore.applyTopic with its
 * caches (the Kafka client's thread), then the evaluation thread's side (the message and ThreadRules.apply).
 * Wall time, median of the changes: what the thread is kept from other work.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { setImmediate as turn } from 'node:timers/promises';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { rulesMessage, ThreadRules } from '../../detector/eval-pool.js';
import { RuleStore } from '../../detector/rule-store.js';
import { compileDocs, createEngine, type Engine, evaluateExecve } from '../../detector/sigma/engine.js';
import { parseRuleText, ruleFiles } from '../../detector/sigma/parse.js';
import { createLogger } from '../../infra/log.js';
import { generateEvents } from '../fixtures/events.js';
import { ACTIVE, SIGMA } from '../fixtures/sigma-corpus.js';

const CHANGES = 7;
const events = generateEvents(200, 1);

function records(dirs: string[]): Array<{ key: string; value: string }> {
  const out: Array<{ key: string; value: string }> = [];
  for (const d of dirs) {
    for (const f of ruleFiles(join(SIGMA, d)))
      out.push({ key: relative(SIGMA, f), value: readFileSync(f, 'utf8') });
  }
  return out;
}

function ms(f: () => void): number {
  const t = performance.now();
  f();
  return performance.now() - t;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** The first events after a change: they build whatever candidate index the engine does not have yet. */
const firstEvents = (engine: Engine) =>
  ms(() => {
    for (const e of events) evaluateExecve(engine, e);
  });

/**
 * A collection and a turn of the event loop between changes, as a detector has: compiled regular expressions are
 * freed by finalizers (safe-regex.ts), and re2-wasm's fixed memory would not hold a whole set compiled 14 times.
 */
const collect: () => void = (() => {
  v8.setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
})();

async function scenario(name: string, recs: Array<{ key: string; value: string }>): Promise<void> {
  const target = recs.find((r) => r.key.endsWith('proc_creation_lnx_base64_decode.yml'))!;
  const changed = (i: number) => ({
    key: target.key,
    value: target.value.replace(/^title: .*$/m, `title: v${i}`),
  });
  const store = new RuleStore({ log: createLogger({}, 'error') });
  const load = ms(() => store.applyTopic(recs));
  firstEvents(store.current.engine);
  const thread = new ThreadRules();
  let holds = new Set<string>();
  const first = rulesMessage(store.current, 'bench', holds);
  thread.apply(structuredClone(first));
  holds = new Set(first.order);

  const before = { kafka: [] as number[], events: [] as number[], thread: [] as number[] };
  const after = { kafka: [] as number[], events: [] as number[], thread: [] as number[] };
  for (let i = 0; i < CHANGES; i++) {
    collect();
    await turn();
    // Whole set: what the old build did for any change.
    let engine: Engine | undefined;
    let docs = store.current.docs;
    before.kafka.push(
      ms(() => {
        const r = parseRuleText(changed(i).value, `rules-topic:${target.key}`);
        docs = [...docs.filter((d) => d.file !== `rules-topic:${target.key}`), ...r.docs];
        const set = compileDocs(docs);
        const lines = set.rules.map(
          (x) => `r ${x.id} ${createHash('sha256').update(JSON.stringify(x.doc.raw)).digest('hex')}`,
        );
        createHash('sha256').update(lines.sort().join('\n')).digest('hex');
        engine = createEngine(set.rules);
      }),
    );
    before.events.push(firstEvents(engine!));
    collect();
    await turn();
    before.thread.push(
      ms(() => {
        const portable = structuredClone(docs.map(({ at: _, ...d }) => d));
        createEngine(compileDocs(portable.map((d) => ({ ...d, at: () => d.line }))).rules);
      }),
    );
    // Incremental: the store and a thread as they run now.
    engine = undefined;
    collect();
    await turn();
    after.kafka.push(ms(() => store.applyTopic([changed(i)])));
    after.events.push(firstEvents(store.current.engine));
    after.thread.push(
      ms(() => {
        const m = rulesMessage(store.current, 'bench', holds);
        holds = new Set(m.order);
        thread.apply(structuredClone(m));
      }),
    );
  }
  const row = (label: string, x: typeof before) =>
    `  ${label.padEnd(12)} Kafka thread ${median(x.kafka).toFixed(1).padStart(7)} ms   first ${events.length} events ${median(x.events).toFixed(1).padStart(6)} ms   evaluation thread ${median(x.thread).toFixed(1).padStart(7)} ms\n`;
  process.stdout.write(
    `${name}: ${store.current.rules.length} rules (${recs.length} records loaded in ${load.toFixed(0)} ms); one rule changed, median of ${CHANGES}\n` +
      row('whole set', before) +
      row('incremental', after) +
      `  ratio        Kafka thread ${(median(before.kafka) / median(after.kafka)).toFixed(0).padStart(6)}x\n`,
  );
}

async function main(): Promise<void> {
  if (!existsSync(join(SIGMA, 'rules'))) {
    process.stderr.write(`bench rule-reload: SigmaHQ corpus not found at ${SIGMA}\n`);
    process.exitCode = 1;
    return;
  }
  await scenario('(a) rules/linux', records(['rules/linux']));
  collect();
  await turn();
  await scenario('(b) the whole active corpus', records(ACTIVE));
}

await main();
