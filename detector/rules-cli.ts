/**
 * `edr rules <subcommand>`: rule-set tooling. `check DIR` compiles every rule under DIR and prints a verdict per
 * rule and a summary; the exit code is 1 if any rule failed, so it can gate a rules repository's CI. `push` and
 * `list` publish signed records to and read the fleet's compacted rules topic; `keygen` makes the signing keys.
 */
import { readFileSync } from 'node:fs';
import { stringify as stringifyYaml } from 'yaml';
import { commandArgs } from '../infra/command-args.js';
import { loadConfig, parseYaml } from '../infra/config.js';
import { EdrError } from '../infra/errors.js';
import { commandKafkaConfig, kafkaUsage } from '../infra/kafka/config.js';
import type { KafkaTransport } from '../infra/kafka/transport.js';
import { createLogger } from '../infra/log.js';
import type { InRecord, OutRecord } from '../infra/transport.js';
import { topics } from '../schemas/topics.js';
import { detectorConfigSchema } from './config.js';
import {
  generateKeyFiles,
  type RuleOp,
  readableByOthers,
  readPublicKey,
  readSigningKey,
  type SigningKey,
  signRecord,
  trustedKeys,
} from './rule-signing.js';
import { docHash, docId, RuleStore } from './rule-store.js';
import { RuleGate, readRulesTopic, reportedId } from './rules-topic.js';
import { loadRules } from './sigma/engine.js';
import type { RuleLimits } from './sigma/limits.js';
import type { Placeholders } from './sigma/modifiers.js';
import { parseRuleText } from './sigma/parse.js';

const USAGE = `usage: edr rules check DIR [--quiet] [--placeholders FILE] [--config FILE]
       edr rules keygen --out DIR [--name NAME]
       edr rules push DIR --signing-key FILE [--config FILE] [--brokers HOST:PORT,...] [--topic T]
                      [--delete ID]... [--prune]
       edr rules list [--config FILE] [--brokers HOST:PORT,...] [--public-key FILE]... [--topic T]

  check DIR             compile every .yml/.yaml rule under DIR; print a verdict per rule and a summary
    --quiet, -q         print only failures, warnings and the summary
    --placeholders FILE YAML map of placeholder name to values, for rules using the 'expand' modifier
    --config FILE       a detector config: its rules.limits apply (default: the built-in limits)
  keygen                make an Ed25519 key pair for signing rules: DIR/NAME.key (private, mode 0600) and
                        DIR/NAME.pub (public, for the detectors' rules.publicKeys); never overwrites a file
    --out DIR           where to write them (created 0700 if missing)
    --name NAME         file name stem (default rules-signing)
  push DIR              validate the rules under DIR and publish the new and changed ones to the rules topic,
                        each signed (key rule id, value its YAML, signature and version in headers); rejected
                        rules are reported and not published, the others are; exit code 1 if any was rejected.
                        Rules on the topic signed with another key are signed again with this one (rotation)
    --signing-key FILE  the Ed25519 private key (PEM) to sign with; required
    --delete ID         also delete rule ID from the fleet (a signed deletion); repeatable
    --prune             delete every rule on the topic that DIR does not have
  list                  what the fleet runs: every rule a detector trusting the keys accepts from the rules topic,
                        with its signing key and version, the records it would refuse and why, and the rule-set
                        version a worker without a rules directory computes from it
    --public-key FILE   a trusted public key (PEM); repeatable; added to the config's rules.publicKeys
    --topic T           the rules topic (default: the config's topics.rules, else the topics table's)
${kafkaUsage('a detector config: its kafka section, topics.rules, rules.publicKeys and rules.limits are used')}
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
  'public-key': { type: 'string', multiple: true },
} as const;

/**
 * The rules topic, a transport to it and the public keys its records are checked with, from --config (its
 * rules.publicKeys) or --brokers/--topic, plus any --public-key. The Kafka client is loaded here, so `check`
 * never loads it.
 */
async function rulesTopic(values: {
  config?: string;
  brokers?: string;
  topic?: string;
  'public-key'?: string[];
}): Promise<{ transport: KafkaTransport; topic: string; keys: SigningKey[] }> {
  const extra = (values['public-key'] ?? []).map(readPublicKey);
  const { KafkaTransport } = await import('../infra/kafka/transport.js');
  const file = values.config === undefined ? undefined : loadConfig(detectorConfigSchema, values.config);
  const kafka = commandKafkaConfig({ fromFile: file?.kafka, brokers: values.brokers, clientId: 'edr-rules' });
  return {
    transport: new KafkaTransport(kafka, createLogger({ component: 'rules' })),
    topic: values.topic ?? file?.topics.rules ?? topics.rules.name,
    keys: [...(file?.rules.publicKeys ?? []), ...extra],
  };
}

async function keygen(argv: string[]): Promise<number> {
  const args = commandArgs(argv, {
    usage: USAGE,
    options: { out: { type: 'string' }, name: { type: 'string', default: 'rules-signing' } },
    required: ['out'],
  });
  if (typeof args === 'number') return args;
  const { out, name } = args.values;
  if (name === undefined || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/.test(name)) {
    throw new EdrError(
      'EDR_DETECTOR_USAGE',
      `--name ${JSON.stringify(name)}: letters, digits, '.', '_', '-' only`,
    );
  }
  const k = generateKeyFiles(out, name);
  // Paths and the key id only: the private key itself is never printed.
  process.stdout.write(
    `private key ${k.privateKey} (mode 0600; keep it with whoever pushes rules: edr rules push --signing-key)\n` +
      `public key  ${k.publicKey} (list it in each detector's rules.publicKeys)\n` +
      `key id      ${k.keyId}\n`,
  );
  return 0;
}

/** A version above `prev` that also tells when it was pushed: the push time in µs, or prev + 1 if that is not above. */
function nextVersion(prev: bigint | undefined): bigint {
  const now = BigInt(Date.now()) * 1000n;
  return prev !== undefined && prev >= now ? prev + 1n : now;
}

async function push(argv: string[]): Promise<number> {
  const args = commandArgs(argv, {
    usage: USAGE,
    options: {
      ...kafkaOptions,
      'signing-key': { type: 'string' },
      delete: { type: 'string', multiple: true },
      prune: { type: 'boolean' },
    },
    positionals: 1,
    required: ['signing-key'],
    missing:
      'edr rules push: --signing-key FILE is required: detectors accept only signed rules (make a key pair with edr rules keygen)\n\n',
  });
  if (typeof args === 'number') return args;
  const { values } = args;
  const keyFile = values['signing-key'];
  // Read before anything else: a push without a usable key publishes nothing.
  const signer = readSigningKey(keyFile);
  if (readableByOthers(keyFile))
    process.stderr.write(`edr rules push: warning: ${keyFile} is readable by other users (chmod 600 it)\n`);
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
  const { transport, topic, keys } = await rulesTopic(values);
  try {
    await transport.createTopics([{ name: topic, partitions: 1, cleanupPolicy: 'compact', retentionMs: -1 }]);
    // The topic as a detector trusting these keys (and this signer's) sees it.
    const gate = new RuleGate(topic, trustedKeys([...keys, signer]));
    const { refused } = gate.admit(await readRulesTopic(transport, topic));
    const unknown = refused.filter((f) => f.reason === 'unknown-key').length;
    if (unknown > 0)
      out.push(
        `note      ${unknown} records on the topic are signed by keys this push was not given ` +
          '(--public-key FILE or --config): their rules count as absent here',
      );
    const state = new Map(gate.state);
    const records: OutRecord[] = [];
    const sign = (key: string, op: RuleOp, value: Buffer): void => {
      const version = nextVersion(state.get(key)?.version);
      const headers = signRecord(signer, { topic, key: Buffer.from(key, 'utf8'), version, op, value });
      state.set(key, { key, value: op === 'put' ? '' : null, version, keyId: signer.id, offset: -1 });
      records.push({ topic, key, value, headers });
    };
    let unchanged = 0;
    let deleted = 0;
    const mine = new Set<string>();
    for (const doc of docs) {
      const id = docId(doc);
      mine.add(id);
      const have = state.get(id);
      const same =
        have?.value != null && parseRuleText(have.value, id).docs.map(docHash).join() === docHash(doc);
      if (same && have?.keyId === signer.id) {
        unchanged++;
        continue;
      }
      sign(id, 'put', Buffer.from(stringifyYaml(doc.raw)));
      // The same content under another key is signed again with this one (a key rotation).
      const what = have?.value == null ? 'added   ' : same ? 're-signed' : 'changed ';
      out.push(`${what}  ${doc.file}:${doc.line}  ${id}  ${doc.title}`);
    }
    const deletions = new Set(values.delete ?? []);
    const live = (id: string) => gate.state.get(id)?.value != null;
    if (values.prune) for (const id of gate.state.keys()) if (live(id) && !mine.has(id)) deletions.add(id);
    for (const id of deletions) {
      if (!live(id)) {
        out.push(`absent    ${id} (nothing to delete)`);
        continue;
      }
      // A deletion is a signed record with an empty value: detectors refuse a bare tombstone.
      sign(id, 'delete', Buffer.alloc(0));
      deleted++;
      out.push(`deleted   ${id}`);
    }
    const producer = await transport.producer();
    await producer.publish(records);
    await producer.close();
    out.push(
      `${records.length - deleted} published, ${unchanged} unchanged, ${deleted} deleted, ` +
        `${set.problems.length} rejected; signed with key ${signer.id}`,
    );
  } finally {
    await transport.close();
  }
  process.stdout.write(`${out.join('\n')}\n`);
  return set.problems.length > 0 ? 1 : 0;
}

/** `s` with C0 and C1 control characters (terminal escapes among them) written as `\\xNN`. */
function printable(s: string): string {
  let out = '';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    out += c < 0x20 || (c >= 0x7f && c <= 0x9f) ? `\\x${c.toString(16).padStart(2, '0')}` : ch;
  }
  return out;
}

async function list(argv: string[]): Promise<number> {
  const args = commandArgs(argv, { usage: USAGE, options: kafkaOptions });
  if (typeof args === 'number') return args;
  const { values } = args;
  const { transport, topic, keys } = await rulesTopic(values);
  let records: InRecord[];
  try {
    if (keys.length === 0) {
      throw new EdrError(
        'EDR_DETECTOR_USAGE',
        'no public key to check the topic with: give --public-key FILE or a --config with rules.publicKeys',
      );
    }
    records = await readRulesTopic(transport, topic);
  } finally {
    await transport.close();
  }
  // The gate and store a detector trusting these keys runs: what it would accept, refuse and run.
  const gate = new RuleGate(topic, trustedKeys(keys));
  const { accepted, refused } = gate.admit(records);
  const store = new RuleStore({
    log: createLogger({ component: 'rules' }, 'error'),
    limits: configLimits(values.config),
  });
  store.applyTopic(accepted);
  const snap = store.current;
  const out: string[] = [];
  const signed = (id: string) => {
    const s = gate.state.get(id);
    return s === undefined ? '' : `  [key ${s.keyId}, version ${s.version}]`;
  };
  const ok = [
    ...snap.rules.map((r) => ({ id: r.id, title: r.title, level: r.level, kind: 'rule' })),
    ...snap.correlations.map((c) => ({ id: c.id, title: c.title, level: c.level, kind: c.type })),
  ].sort((a, b) => (a.id < b.id ? -1 : 1));
  // Filters switch rules off: what runs includes them, with who signed them.
  const broken = new Set(snap.problems.map((p) => `${p.file}:${p.line}`));
  const filters = snap.docs.filter((d) => d.kind === 'filter' && !broken.has(`${d.file}:${d.line}`));
  ok.push(
    ...filters
      .map((d) => ({ id: docId(d), title: d.title, level: '-', kind: 'filter' }))
      .sort((a, b) => (a.id < b.id ? -1 : 1)),
  );
  for (const r of ok)
    out.push(`${r.id}  ${r.level.padEnd(13)} ${r.kind.padEnd(12)} ${r.title}${signed(r.id)}`);
  for (const p of snap.problems)
    out.push(`REJECTED  ${p.file}:${p.line}  ${p.id ?? '-'}: ${p.message} [${p.code}]`);
  for (const f of refused) {
    // Anyone may have written this key: its control characters are shown escaped, never sent to the terminal.
    const key = printable(reportedId(f.record) ?? '(no key)');
    out.push(`REFUSED   rules-topic:${key}@${f.record.offset}  ${f.reason}: ${f.detail}`);
  }
  out.push(
    `${ok.length - filters.length} rules on ${topic}, ${filters.length} filters; rule-set version ${snap.version}; ` +
      `${refused.length} records refused ` +
      `(trusted keys: ${keys.map((k) => k.id).join(', ')})`,
  );
  process.stdout.write(`${out.join('\n')}\n`);
  return 0;
}

export const command = {
  summary: 'rule-set tooling: check, keygen, push, list',
  async run(argv: string[]): Promise<number> {
    const [sub, ...rest] = argv;
    switch (sub) {
      case 'check':
        return check(rest);
      case 'keygen':
        return keygen(rest);
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
