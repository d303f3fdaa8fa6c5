/**
 * `edr topics create`: every topic of the topics table, as the operator. Services do not create topics (their
 * principals may not), so this runs once per cluster before them, and again after an upgrade adds a topic: it is
 * idempotent, and reports where an existing topic differs from the table instead of changing it (a partition count
 * or a retention is the operator's decision to change, with kafka-topics/kafka-configs).
 */

import { z } from 'zod';
import { commandArgs } from '../infra/command-args.js';
import { loadConfig } from '../infra/config.js';
import { EdrError } from '../infra/errors.js';
import { commandKafkaConfig, kafkaConfigSchema, kafkaUsage } from '../infra/kafka/config.js';
import { KafkaTransport, type TopicDescription } from '../infra/kafka/transport.js';
import { createLogger } from '../infra/log.js';
import { type TopicRole, type TopicSpec, topics as table } from '../schemas/topics.js';
import type { Command } from './command.js';

const USAGE = `usage: edr topics create [--config FILE] [--brokers LIST] [--partitions ROLE=N,...] [--replication N]

  create                every topic of the topics table: created when missing, compared when present
    --partitions LIST   partitions per topic role, e.g. raw=24,audit=24,alerts=6 (default: the table's);
                        the correlation and changelog topics always get as many as the raw topic has
    --replication N     replication factor of the topics created (default: the config's kafka.replicationFactor);
                        from 3 on, raw, audit and alerts get min.insync.replicas 2
${kafkaUsage("any service's config: its kafka section is used (run as the operator principal)")}
`;

export interface TopicOutcome {
  role: TopicRole;
  name: string;
  state: 'created' | 'exists' | 'differs';
  /** What differs from the table, e.g. "partitions 3 (table 6)". */
  differences: string[];
}

/** What an existing topic has that the table (with the run's partitions) does not. */
function differences(
  want: TopicSpec,
  partitions: number,
  have: TopicDescription,
  replication: number,
): string[] {
  const out: string[] = [];
  if (have.partitions !== partitions) out.push(`partitions ${have.partitions} (wanted ${partitions})`);
  if (have.replicationFactor < replication) {
    out.push(`replication ${have.replicationFactor} (wanted ${replication})`);
  }
  if (!have.cleanupPolicy.split(',').includes(want.cleanupPolicy)) {
    out.push(`cleanup.policy ${have.cleanupPolicy} (wanted ${want.cleanupPolicy})`);
  }
  if (have.retentionMs !== want.retentionMs)
    out.push(`retention.ms ${have.retentionMs} (wanted ${want.retentionMs})`);
  const minIsr = minInsyncReplicas(want, replication);
  if (minIsr !== undefined && have.minInsyncReplicas < minIsr)
    out.push(`min.insync.replicas ${have.minInsyncReplicas} (wanted ${minIsr})`);
  return out;
}

/** The table's min ISR for a topic, where the replication leaves a node to lose (see TopicSpec). */
export function minInsyncReplicas(spec: TopicSpec, replication: number): number | undefined {
  return spec.minInsyncReplicas !== undefined && replication > spec.minInsyncReplicas
    ? spec.minInsyncReplicas
    : undefined;
}

/**
 * Creates what is missing: first the topics with a partition count of their own, then those that follow the raw
 * topic's (the detector keys its correlation state by input partition), with the count the raw topic has now.
 */
export async function createTableTopics(
  transport: KafkaTransport,
  opts: { partitions?: Partial<Record<TopicRole, number>>; replication: number },
): Promise<TopicOutcome[]> {
  const roles = Object.keys(table) as TopicRole[];
  const independent = roles.filter((r) => (table[r] as TopicSpec).followsInput !== true);
  const following = roles.filter((r) => (table[r] as TopicSpec).followsInput === true);
  const outcomes: TopicOutcome[] = [];
  const ensure = async (group: TopicRole[], partitionsOf: (r: TopicRole) => number) => {
    const names = group.map((r) => table[r].name);
    const before = await transport.describeTopics(names);
    await transport.createTopics(
      group
        .filter((r) => !before.has(table[r].name))
        .map((r) => {
          const spec: TopicSpec = table[r];
          const minIsr = minInsyncReplicas(spec, opts.replication);
          return {
            name: spec.name,
            partitions: partitionsOf(r),
            cleanupPolicy: spec.cleanupPolicy,
            retentionMs: spec.retentionMs,
            ...(minIsr !== undefined ? { minInsyncReplicas: minIsr } : {}),
          };
        }),
    );
    for (const r of group) {
      const have = before.get(table[r].name);
      const diff = have ? differences(table[r], partitionsOf(r), have, opts.replication) : [];
      outcomes.push({
        role: r,
        name: table[r].name,
        state: have === undefined ? 'created' : diff.length > 0 ? 'differs' : 'exists',
        differences: diff,
      });
    }
  };
  await ensure(independent, (r) => opts.partitions?.[r] ?? table[r].partitions);
  const raw = (await transport.describeTopics([table.raw.name])).get(table.raw.name);
  if (raw === undefined)
    throw new EdrError('EDR_TOPICS_MISSING', `${table.raw.name} is missing after creation`);
  await ensure(following, () => raw.partitions);
  return outcomes;
}

const partitionsSchema = z.partialRecord(
  z.enum(Object.keys(table) as [TopicRole, ...TopicRole[]]),
  z.coerce.number().int().min(1).max(10_000),
);

/** `raw=24,audit=24` → { raw: 24, audit: 24 }, refusing unknown roles and bad counts. */
export function parsePartitions(text: string): Partial<Record<TopicRole, number>> {
  const pairs = text.split(',').map((p) => p.split('='));
  if (pairs.some((p) => p.length !== 2)) {
    throw new EdrError('EDR_TOPICS_USAGE', `--partitions: expected ROLE=N,... (got '${text}')`);
  }
  const parsed = partitionsSchema.safeParse(Object.fromEntries(pairs));
  if (!parsed.success) {
    const roles = Object.keys(table).join(', ');
    throw new EdrError(
      'EDR_TOPICS_USAGE',
      `--partitions: roles are ${roles}, counts 1..10000 (got '${text}')`,
    );
  }
  return parsed.data as Partial<Record<TopicRole, number>>;
}

export const command: Command = {
  summary: 'create the topics (as the operator): idempotent, reports differences',
  async run(argv) {
    const args = commandArgs(argv, {
      usage: USAGE,
      options: {
        config: { type: 'string' },
        brokers: { type: 'string' },
        partitions: { type: 'string' },
        replication: { type: 'string' },
      },
      positionals: 1,
    });
    if (typeof args === 'number') return args;
    if (args.positionals[0] !== 'create') {
      process.stderr.write(USAGE);
      return 2;
    }
    const { values } = args;
    const fromFile =
      values.config === undefined
        ? undefined
        : loadConfig(z.looseObject({ kafka: kafkaConfigSchema }), values.config).kafka;
    const kafka = commandKafkaConfig({ fromFile, brokers: values.brokers, clientId: 'edr-topics' });
    const replication =
      values.replication === undefined ? kafka.replicationFactor : Number(values.replication);
    if (!Number.isInteger(replication) || replication < 1) {
      process.stderr.write(`edr topics: --replication must be a positive integer\n`);
      return 2;
    }
    const partitions = values.partitions === undefined ? {} : parsePartitions(values.partitions);
    const transport = new KafkaTransport(
      { ...kafka, replicationFactor: replication },
      // Errors only: a topic just created answers "not the leader" for a moment, which is waited for, not news.
      createLogger({ component: 'topics' }, 'error'),
    );
    try {
      const outcomes = await createTableTopics(transport, { partitions, replication });
      for (const o of outcomes) {
        const note = o.differences.length > 0 ? `  ${o.differences.join(', ')}` : '';
        process.stdout.write(`${o.state.padEnd(8)} ${o.name}${note}\n`);
      }
    } finally {
      await transport.close();
    }
    return 0;
  },
};
