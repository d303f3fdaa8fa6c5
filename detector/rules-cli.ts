/**
 * `edr rules <subcommand>`: rule-set tooling. `check DIR` compiles every rule under DIR and prints a verdict per
 * rule and a summary; the exit code is 1 if any rule failed, so it can gate a rules repository's CI. `push` and
 * `list` publish to and read the fleet's compacted rules topic.
 */
import { readFileSync } from 'node:fs';
import { stringify as stringifyYaml } from 'yaml';
import { commandArgs } from '../infra/command-args.js';
import { loadConfig, parseYaml } from '../infra/config.js';
import { EdrError } from '../infra/errors.js';
import { kafkaConfigSchema } from '../infra/kafka/config.js';
import type { KafkaTransport } from '../infra/kafka/transport.js';
import { createLogger } from '../infra/log.js';
import type { OutRecord } from '../infra/transport.js';
import { topics } from '../schemas/topics.js';
import { detectorConfigSchema } from './config.js';
import { docHash, docId, RuleStore } from './rule-store.js';
import { readRulesTopic } from './rules-topic.js';
import { loadRules } from './sigma/engine.js';
import type { RuleLimits } from './sigma/limits.js';
import type { Placeholders } from './sigma/modifiers.js';
import { parseRuleText } from './sigma/parse.js';

const USAGE = `usage: edr rules check DIR [--quiet] [--placeholders FILE] [--config FILE]
       edr rules push DIR (--config FILE | --brokers HOST:PORT,...) [--topic T] [--delete ID]... [--prune]
       edr rules list (--config FILE | --brokers HOST:PORT,...) [--topic T]

  check DIR             compile every .yml/.yaml rule under DIR; print a verdict per rule and a summary
    --quiet, -q         print only failures, warnings and the summary
    --placeholders FILE YAML map of placeholder name to values, for rules using the 'expand' modifier
    --config FILE       a detector config: its rules.limits apply (default: the built-in limits)
  push DIR              validate the rules under DIR and publish the new and changed ones to the rules topic
                        (key rule id, value its YAML); rejected rules are reported and not published, the
                        others are; exit code 1 if any was rejected
    --delete ID         also delete rule ID from the fleet (a tombstone); repeatable
    --prune             delete every rule on the topic that DIR does not have
  list                  what the fleet runs: every rule on the rules topic, and the rule-set version a worker
                        without a rules directory computes from it
    --config FILE       a detector config: its kafka section, topics.rules and rules.limits are used
    --brokers LIST      or the brokers directly (with --topic, default the topics table's)
`;

/** The rule limits of a detector config, for commands that check rules as its detectors will. */
export function configLimits(file: string | undefined): RuleLimits | undefined {
  return file === undefined ? undefined : loadConfig(detectorConfigSchema, file).rules.limits;
}

/** Reads a YAML map `name: [values]` for `|expand` placeholders. */
export function readPlaceholders(path: string): Placeholders {
  let data: unknown;
  try {
    data = parseYaml(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new EdrError(
      'EDR_SIGMA_PLACEHOLDERS',
      `cannot read placeholders ${path}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new EdrError(
      'EDR_SIGMA_PLACEHOLDERS',
      `${path}: expected a map of placeholder names to lists of values`,
    );
  }
  const out: Record<string, string[]> = {};
  for (const [k, v] of Object.entries(data)) out[k] = (Array.isArray(v) ? v : [v]).map(String);
  return out;
}

async function check(argv: string[]): Promise<number> {
  const args = commandArgs(argv, {
    usage: USAGE,
    options: {
      quiet: { type: 'boolean', short: 'q' },
      placeholders: { type: 'string' },
      config: { type: 'string' },
    },
    positionals: 1,
  });
  if (typeof args === 'number') return args;
  const { values } = args;
  const dir = args.positionals[0]!;
  const placeholders = values.placeholders === undefined ? {} : readPlaceholders(values.placeholders);
  const set = loadRules(dir, { placeholders, limits: configLimits(values.config) });
  const out: string[] = [];
  if (!values.quiet) {
    const ok = [...set.rules, ...set.filters, ...set.correlations].map((r) => ({
      at: `${r.doc.file}:${r.doc.line}`,
      text: `ok    ${r.doc.file}:${r.doc.line}  ${r.doc.id ?? '-'}  ${r.doc.title}`,
    }));
    ok.sort((a, b) => (a.at < b.at ? -1 : 1));
    for (const o of ok) out.push(o.text);
  }
  for (const w of set.warnings) out.push(`warn  ${w.file}:${w.line}  ${w.id ?? '-'}  ${w.message}`);
  for (const p of set.problems) {
    out.push(`FAIL  ${p.file}:${p.line}  ${p.id ?? '-'}  ${p.title ?? ''}: ${p.message} [${p.code}]`);
  }
  out.push(
    `${set.rules.length} rules, ${set.filters.length} filters, ${set.correlations.length} correlations compiled; ` +
      `${set.problems.length} failed; ${set.warnings.length} warnings`,
  );
  process.stdout.write(`${out.join('\n')}\n`);
  return set.problems.length > 0 ? 1 : 0;
}

const kafkaOptions = {
  config: { type: 'string' },
  brokers: { type: 'string' },
  topic: { type: 'string' },
} as const;

/**
 * The rules topic and a transport to it, from --config or --brokers/--topic. The Kafka client is loaded here, so
 * `check` never loads it.
 */
async function rulesTopic(values: { config?: string; brokers?: string; topic?: string }): Promise<{
  transport: KafkaTransport;
  topic: string;
}> {
  const { KafkaTransport } = await import('../infra/kafka/transport.js');
  if (values.config !== undefined) {
    const c = loadConfig(detectorConfigSchema, values.config);
    return {
      transport: new KafkaTransport(c.kafka, createLogger({ component: 'rules' })),
      topic: values.topic ?? c.topics.rules,
    };
  }
  if (values.brokers === undefined) {
    throw new EdrError('EDR_DETECTOR_USAGE', 'give --config FILE or --brokers HOST:PORT,...');
  }
  return {
    transport: new KafkaTransport(
      kafkaConfigSchema.parse({ brokers: values.brokers.split(','), clientId: 'edr-rules' }),
      createLogger({ component: 'rules' }),
    ),
    topic: values.topic ?? topics.rules.name,
  };
}

async function push(argv: string[]): Promise<number> {
  const args = commandArgs(argv, {
    usage: USAGE,
    options: { ...kafkaOptions, delete: { type: 'string', multiple: true }, prune: { type: 'boolean' } },
    positionals: 1,
  });
  if (typeof args === 'number') return args;
  const { values } = args;
  const dir = args.positionals[0]!;
  const set = loadRules(dir, { limits: configLimits(values.config) });
  const out: string[] = [];
  for (const p of set.problems) {
    out.push(`REJECTED  ${p.file}:${p.line}  ${p.id ?? '-'}  ${p.title ?? ''}: ${p.message} [${p.code}]`);
  }
  const docs = [
    ...set.rules.map((r) => r.doc),
    ...set.filters.map((f) => f.doc),
    ...set.correlations.map((c) => c.doc),
  ];
  const { transport, topic } = await rulesTopic(values);
  try {
    await transport.createTopics([{ name: topic, partitions: 1, cleanupPolicy: 'compact', retentionMs: -1 }]);
    const current = await readRulesTopic(transport, topic);
    const records: OutRecord[] = [];
    let unchanged = 0;
    const mine = new Set<string>();
    for (const doc of docs) {
      const id = docId(doc);
      mine.add(id);
      const have = current.get(id);
      const same = have !== undefined && parseRuleText(have, id).docs.map(docHash).join() === docHash(doc);
      if (same) {
        unchanged++;
        continue;
      }
      records.push({ topic, key: id, value: Buffer.from(stringifyYaml(doc.raw)) });
      out.push(
        `${have === undefined ? 'added   ' : 'changed '}  ${doc.file}:${doc.line}  ${id}  ${doc.title}`,
      );
    }
    const deletions = new Set(values.delete ?? []);
    if (values.prune) for (const id of current.keys()) if (!mine.has(id)) deletions.add(id);
    for (const id of deletions) {
      if (!current.has(id)) {
        out.push(`absent    ${id} (nothing to delete)`);
        continue;
      }
      records.push({ topic, key: id, value: null });
      out.push(`deleted   ${id}`);
    }
    const producer = await transport.producer();
    await producer.publish(records);
    await producer.close();
    out.push(
      `${records.length - [...deletions].filter((d) => current.has(d)).length} published, ${unchanged} unchanged, ` +
        `${[...deletions].filter((d) => current.has(d)).length} deleted, ${set.problems.length} rejected`,
    );
  } finally {
    await transport.close();
  }
  process.stdout.write(`${out.join('\n')}\n`);
  return set.problems.length > 0 ? 1 : 0;
}

async function list(argv: string[]): Promise<number> {
  const args = commandArgs(argv, { usage: USAGE, options: kafkaOptions });
  if (typeof args === 'number') return args;
  const { values } = args;
  const { transport, topic } = await rulesTopic(values);
  let current: Map<string, string>;
  try {
    current = await readRulesTopic(transport, topic);
  } finally {
    await transport.close();
  }
  const store = new RuleStore({
    log: createLogger({ component: 'rules' }, 'error'),
    limits: configLimits(values.config),
  });
  store.applyTopic([...current].map(([key, value]) => ({ key, value })));
  const snap = store.current;
  const out: string[] = [];
  const ok = [
    ...snap.rules.map((r) => ({ id: r.id, title: r.title, level: r.level, kind: 'rule' })),
    ...snap.correlations.map((c) => ({ id: c.id, title: c.title, level: c.level, kind: c.type })),
  ].sort((a, b) => (a.id < b.id ? -1 : 1));
  for (const r of ok) out.push(`${r.id}  ${r.level.padEnd(13)} ${r.kind.padEnd(12)} ${r.title}`);
  for (const p of snap.problems)
    out.push(`REJECTED  ${p.file}:${p.line}  ${p.id ?? '-'}: ${p.message} [${p.code}]`);
  out.push(`${ok.length} rules on ${topic}; rule-set version ${snap.version}`);
  process.stdout.write(`${out.join('\n')}\n`);
  return 0;
}

export const command = {
  summary: 'rule-set tooling: check, push, list',
  async run(argv: string[]): Promise<number> {
    const [sub, ...rest] = argv;
    switch (sub) {
      case 'check':
        return check(rest);
      case 'push':
        return push(rest);
      case 'list':
        return list(rest);
      case undefined:
      case '--help':
      case '-h':
        process.stdout.write(USAGE);
        return sub === undefined ? 2 : 0;
      default:
        process.stderr.write(`edr rules: unknown subcommand '${sub}'\n\n${USAGE}`);
        return 2;
    }
  },
};
