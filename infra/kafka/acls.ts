/**
 * The one table of Kafka ACLs: what each service's principal may do, and nothing more. `edr acls` prints it as
 * `kafka-acls.sh` commands or a script; the secured test broker applies the same rows (secure-broker.ts). Every
 * topic comes from schemas/topics.ts; group and transactional-id names are those the services derive (the
 * `why` of each row says where).
 */

import { type TopicRole, topics } from '../../schemas/topics.js';
import { EdrError } from '../errors.js';

export type AclResourceType = 'topic' | 'group' | 'transactional-id' | 'cluster';
export type AclPattern = 'literal' | 'prefixed';
/**
 * Only what the table grants. READ and WRITE imply DESCRIBE (metadata, end offsets, committed offsets); WRITE on a
 * topic also allows an idempotent producer (Kafka ≥ 3.0), so no IDEMPOTENT_WRITE on the cluster is granted.
 */
export type AclOperation = 'READ' | 'WRITE' | 'CREATE' | 'DESCRIBE' | 'DESCRIBE_CONFIGS';

export interface AclRow {
  /** `User:NAME` */
  principal: string;
  resource: AclResourceType;
  /** `kafka-cluster` for the cluster. */
  name: string;
  pattern: AclPattern;
  operations: AclOperation[];
  why: string;
}

export type Service = 'collector' | 'detector' | 'sink' | 'operator' | 'replay';

export const defaultPrincipals: Readonly<Record<Service, string>> = {
  collector: 'edr-collector',
  detector: 'edr-detector',
  sink: 'edr-sink',
  operator: 'edr-operator',
  // `edr replay` reads the audit topic and writes alerts in transactions: a principal of its own, so the operator
  // (who writes rules) need not run it and a replay job cannot touch the rules topic.
  replay: 'edr-replay',
};

/** Groups and transactional ids named by the services from fixed prefixes (not from config). */
export const fixedPrefixes = {
  /** sinks/deliver/deliver.ts: `edr-sink-<instance>`. */
  sinkGroup: 'edr-sink-',
  /** detector/replay.ts: group and transactional ids `edr-replay-<run id>...`. */
  replay: 'edr-replay-',
  /** detector/correlations.ts: a fresh group per restore of correlation state. */
  detectorRestoreGroup: 'edr-detector-restore-',
  /** detector/rules-topic.ts via `edr rules push|list`: a fresh group per read. */
  rulesCliGroup: 'edr-rules-cli-',
} as const;

export interface AclNames {
  principals: Record<Service, string>;
  topics: Record<TopicRole, string>;
  /** The detectors' `groupId` (detector/config.ts): their groups and transactional ids start with it. */
  detectorGroup: string;
}

export interface AclNamesInput {
  principals?: Partial<Record<Service, string>>;
  topics?: Partial<Record<TopicRole, string>>;
  detectorGroup?: string;
}

// Kafka's legal topic characters; principals and groups the same plus what a certificate DN uses. Anything else
// is refused, so no name can break out of the quoting of the printed commands.
const TOPIC_NAME = /^[A-Za-z0-9._-]{1,249}$/;
const OTHER_NAME = /^[A-Za-z0-9._@=,+-]{1,255}$/;

/** The names the table is built from: defaults, overridden by `over`, each checked. */
export function aclNames(over: AclNamesInput = {}): AclNames {
  const principals = { ...defaultPrincipals, ...over.principals };
  const topicNames = Object.fromEntries(
    (Object.keys(topics) as TopicRole[]).map((r) => [r, over.topics?.[r] ?? topics[r].name]),
  ) as Record<TopicRole, string>;
  const detectorGroup = over.detectorGroup ?? 'edr-detector';
  const bad: string[] = [];
  for (const [s, p] of Object.entries(principals))
    if (!OTHER_NAME.test(p)) bad.push(`principal ${s}: '${p}'`);
  for (const [r, t] of Object.entries(topicNames)) if (!TOPIC_NAME.test(t)) bad.push(`topic ${r}: '${t}'`);
  if (!OTHER_NAME.test(detectorGroup)) bad.push(`detector group: '${detectorGroup}'`);
  if (bad.length > 0) {
    throw new EdrError(
      'EDR_ACL_NAME',
      `names with characters Kafka or a shell would misread (allowed: letters, digits and . _ - for topics, also @ = , + otherwise): ${bad.join('; ')}`,
    );
  }
  return { principals, topics: topicNames, detectorGroup };
}

/** The table: one row per principal, resource and pattern. */
export function aclTable(names: AclNames = aclNames()): AclRow[] {
  const p = (s: Service) => `User:${names.principals[s]}`;
  const t = names.topics;
  const g = names.detectorGroup;
  const topic = (s: Service, role: TopicRole, operations: AclOperation[], why: string): AclRow => ({
    principal: p(s),
    resource: 'topic',
    name: t[role],
    pattern: 'literal',
    operations,
    why,
  });
  const prefixed = (
    s: Service,
    resource: 'group' | 'transactional-id',
    name: string,
    operations: AclOperation[],
    why: string,
  ): AclRow => ({ principal: p(s), resource, name, pattern: 'prefixed', operations, why });

  const rows: AclRow[] = [
    topic('collector', 'raw', ['WRITE'], 'events (idempotent producer)'),
    topic('collector', 'audit', ['WRITE'], 'events, lifecycle and loss records'),
    topic('collector', 'schemas', ['WRITE'], 'its writer schemas, on every connection'),

    topic('detector', 'raw', ['READ'], 'detection input'),
    topic('detector', 'rules', ['READ'], 'follows the rule set'),
    topic('detector', 'alerts', ['WRITE'], 'alerts, in the batch transaction'),
    topic('detector', 'deadLetter', ['WRITE'], 'undecodable records, in the batch transaction'),
    topic(
      'detector',
      'audit',
      ['READ', 'WRITE'],
      'reports of rule records refused, accepted or disabled; read by the health stage (pipeline alerts)',
    ),
    topic('detector', 'correlation', ['READ', 'WRITE'], 'matches repartitioned by group-by values'),
    topic(
      'detector',
      'changelog',
      ['READ', 'WRITE'],
      'correlation state: written per batch, read on restore',
    ),
    prefixed(
      'detector',
      'group',
      g,
      ['READ'],
      `its group ${g}, ${g}-correlate, ${g}-health and the rules follower's ${g}-rules-<id>-<random> (detector/worker.ts, main.ts)`,
    ),
    prefixed(
      'detector',
      'transactional-id',
      `${g}-`,
      ['WRITE'],
      `one per input partition: ${g}-<topic>-<partition>, ${g}-correlate-<topic>-<partition>`,
    ),

    topic('sink', 'alerts', ['READ'], 'delivery input'),
    topic(
      'sink',
      'undeliverable',
      ['READ', 'WRITE'],
      'alerts it gave up on; `edr sinks resend` reads them back',
    ),
    topic('sink', 'deadLetter', ['WRITE'], 'alerts it could not decode'),
    prefixed('sink', 'group', fixedPrefixes.sinkGroup, ['READ'], 'one group per sink instance'),

    {
      principal: p('operator'),
      resource: 'cluster',
      name: 'kafka-cluster',
      pattern: 'literal',
      operations: ['CREATE'],
      why: 'creates the topics (`edr topics create`, `edr rules push` creating the rules topic)',
    },
    topic(
      'operator',
      'rules',
      ['READ', 'WRITE', 'DESCRIBE_CONFIGS'],
      '`edr rules push|list`: the only writer of the rule set',
    ),
    // Seeing the topics it creates (so creating is idempotent) and their settings: every topic of the table.
    ...(Object.keys(t) as TopicRole[])
      .filter((role) => role !== 'rules')
      .map((role) => topic('operator', role, ['DESCRIBE', 'DESCRIBE_CONFIGS'], 'sees the topics it creates')),
    prefixed(
      'operator',
      'group',
      fixedPrefixes.rulesCliGroup,
      ['READ'],
      'a fresh group per read of the rules',
    ),

    topic('replay', 'audit', ['READ'], 'the history it evaluates'),
    topic('replay', 'alerts', ['WRITE'], 'replay alerts, in transactions'),
    prefixed('replay', 'group', fixedPrefixes.replay, ['READ'], 'one group per run id'),
    prefixed('replay', 'transactional-id', fixedPrefixes.replay, ['WRITE'], 'one per run and partition'),
  ];
  // A detector group not a prefix of the restore groups' fixed prefix needs that prefix granted too.
  if (!fixedPrefixes.detectorRestoreGroup.startsWith(g)) {
    rows.push(
      prefixed(
        'detector',
        'group',
        fixedPrefixes.detectorRestoreGroup,
        ['READ'],
        'restoring correlation state (detector/correlations.ts)',
      ),
    );
  }
  return rows;
}

const CLI_OPERATION: Record<AclOperation, string> = {
  READ: 'Read',
  WRITE: 'Write',
  CREATE: 'Create',
  DESCRIBE: 'Describe',
  DESCRIBE_CONFIGS: 'DescribeConfigs',
};

/** Shell-quoted, though every name is already checked to need no quoting. */
function q(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/** The arguments after `kafka-acls.sh --bootstrap-server … [--command-config …]` that add `row`. */
function addArguments(row: AclRow): string {
  const resource =
    row.resource === 'cluster'
      ? '--cluster'
      : `--${row.resource === 'transactional-id' ? 'transactional-id' : row.resource} ${q(row.name)}`;
  return [
    '--add',
    `--allow-principal ${q(row.principal)}`,
    ...row.operations.map((o) => `--operation ${CLI_OPERATION[o]}`),
    resource,
    ...(row.pattern === 'prefixed' ? ['--resource-pattern-type prefixed'] : []),
  ].join(' ');
}

/** One `kafka-acls.sh` command per row. */
export function kafkaAclsCommands(rows: AclRow[], bootstrap: string, commandConfig?: string): string[] {
  const head = `kafka-acls.sh --bootstrap-server ${q(bootstrap)}${commandConfig ? ` --command-config ${q(commandConfig)}` : ''}`;
  return rows.map((r) => `${head} ${addArguments(r)}`);
}

/**
 * A POSIX shell script adding every row, for a super user's client properties (`COMMAND_CONFIG`). Adding an ACL
 * that exists is a no-op, so the script can run again after the table changes (it adds, it never removes).
 */
export function aclsScript(rows: AclRow[], bootstrap: string): string {
  const lines = [
    '#!/bin/sh',
    '# Generated by `edr acls --script`: the ACL table of infra/kafka/acls.ts.',
    '# COMMAND_CONFIG: client properties of a super user (SASL_SSL); KAFKA_ACLS: path of kafka-acls.sh.',
    'set -eu',
    `BOOTSTRAP="\${BOOTSTRAP:-${bootstrap}}"`,
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell parameter expansion
    'COMMAND_CONFIG="${COMMAND_CONFIG:?set COMMAND_CONFIG to a super user\'s client properties file}"',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell parameter expansion
    'KAFKA_ACLS="${KAFKA_ACLS:-kafka-acls.sh}"',
    'acl() { "$KAFKA_ACLS" --bootstrap-server "$BOOTSTRAP" --command-config "$COMMAND_CONFIG" "$@"; }',
    ...rows.map((r) => `# ${r.principal}: ${r.why}\nacl ${addArguments(r)}`),
  ];
  return `${lines.join('\n')}\n`;
}

/** The table as Markdown, for infra/deploy/README.md. */
export function aclsMarkdown(rows: AclRow[]): string {
  const head =
    '| principal | resource | name | pattern | operations | why |\n| --- | --- | --- | --- | --- | --- |';
  const body = rows.map(
    (r) =>
      `| ${r.principal} | ${r.resource} | \`${r.name}\` | ${r.pattern} | ${r.operations.join(', ')} | ${r.why.replaceAll('|', '\\|')} |`,
  );
  return `${[head, ...body].join('\n')}\n`;
}
