/**
 * `edr detector --config FILE`: one zod schema gives the config's type and its validation (every problem at once,
 * unknown keys rejected). Topic names default to the topics table; tests and staging override them.
 */
import { hostname } from 'node:os';
import { z } from 'zod';
import { kafkaConfigSchema } from '../infra/kafka/config.js';
import { LEVEL_ORDER } from '../schemas/levels.js';
import { topics } from '../schemas/topics.js';
import {
  DEFAULT_MAX_CHANGELOG_RECORD_BYTES,
  DEFAULT_MAX_CLOCK_SKEW_MS,
  DEFAULT_MAX_EVENTS_PER_GROUP,
} from './correlations.js';
import { readPublicKey, type SigningKey } from './rule-signing.js';
import { DEFAULT_RULE_LIMITS } from './sigma/limits.js';

/** A trusted public key: a file path or PEM text, read and checked at load (errors name the file). */
const publicKey = z
  .string()
  .min(1)
  .transform((source, ctx): SigningKey => {
    try {
      return readPublicKey(source);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });

const count = (d: number) => z.number().int().positive().default(d);

/** What one rule may cost to load (see sigma/limits.ts); a rule over a limit is rejected, the others load. */
export const ruleLimitsSchema = z
  .strictObject({
    /** Bytes of one rule file or rules-topic record. */
    maxFileBytes: count(DEFAULT_RULE_LIMITS.maxFileBytes),
    /** Values in one rule's detection, YAML aliases expanded. */
    maxValues: count(DEFAULT_RULE_LIMITS.maxValues),
    /** Characters of one `|re` regular expression. */
    maxRegexLength: count(DEFAULT_RULE_LIMITS.maxRegexLength),
    /** YAML alias expansion budget, against alias bombs (0 refuses every alias). */
    maxAliasCount: z.number().int().min(0).default(DEFAULT_RULE_LIMITS.maxAliasCount),
  })
  .prefault({});

export const detectorConfigSchema = z.strictObject({
  kafka: kafkaConfigSchema,
  /** Names this worker in alerts and logs; defaults to host name and pid. */
  detectorId: z.string().min(1).default(`${hostname()}-${process.pid}`),
  groupId: z.string().min(1).default('edr-detector'),
  topics: z
    .strictObject({
      input: z.string().min(1).default(topics.raw.name),
      alerts: z.string().min(1).default(topics.alerts.name),
      rules: z.string().min(1).default(topics.rules.name),
      audit: z.string().min(1).default(topics.audit.name),
      deadLetter: z.string().min(1).default(topics.deadLetter.name),
      /** Rule matches feeding correlations not grouped by host, keyed by their group-by values. */
      correlation: z.string().min(1).default(topics.correlation.name),
      /** Correlation state, written in the same transaction as the offsets it corresponds to. */
      changelog: z.string().min(1).default(topics.changelog.name),
    })
    .prefault({}),
  rules: z
    .strictObject({
      /** A watched rule directory (optional: the rules topic alone also works). */
      dir: z.string().min(1).optional(),
      /** How often the directory is checked for changes. */
      pollMs: z.number().int().positive().default(1000),
      /** Whether to follow the rules topic. */
      topic: z.boolean().default(true),
      /**
       * The Ed25519 public keys whose signatures the rules topic is trusted with (files or PEM text; several
       * during a key rotation). Required when following the topic: without one a detector would either run
       * anyone's rules or silently miss the fleet's pushes (a deletion or a filter included), so it does not
       * start.
       */
      publicKeys: z.array(publicKey).default([]),
      /**
       * The least Sigma level that raises alerts. Rules below it are loaded and checked but not evaluated, unless
       * a correlation names them (then they feed it silently). The default leaves out `informational`, which
       * Sigma defines as enrichment: "no case or alerting should be triggered by such rules".
       */
      minLevel: z.enum(LEVEL_ORDER).default('low'),
      limits: ruleLimitsSchema,
    })
    .prefault({})
    .superRefine((r, ctx) => {
      if (r.topic && r.publicKeys.length === 0)
        ctx.addIssue({
          code: 'custom',
          path: ['publicKeys'],
          message:
            'the detector follows the rules topic (rules.topic: true) and needs at least one trusted public key ' +
            'to verify its records: make a key pair with `edr rules keygen --out DIR` and list DIR/rules-signing.pub ' +
            'here, or set rules.topic: false to run directory rules only',
        });
    }),
  /**
   * Records per transaction at most: larger batches amortise each transaction's broker work (see the bench).
   * Under light load batches are what has arrived, so this bounds latency only when a backlog is drained.
   */
  maxBatchRecords: z.number().int().positive().default(20_000),
  /**
   * Consumer group members in this process on the input topic. The transport runs one partition batch (and its
   * transaction) at a time per member; a second member's processing overlaps the first one's broker round trips.
   */
  membersPerWorker: z.number().int().positive().default(1),
  /** Input partitions a member works on at once, each in order: their transactions overlap (see the bench). */
  partitionConcurrency: z.number().int().positive().default(3),
  /**
   * Threads that decode and evaluate beside the one running the Kafka client (0: evaluate on that one). `auto`
   * uses one while the host has more cores than detector processes, else none: one worker on two cores gains from
   * a thread, while with as many worker processes as cores the hand-over only costs CPU (see the bench). More
   * than one only helps with cores to spare.
   */
  evaluationThreads: z.union([z.literal('auto'), z.number().int().min(0).max(64)]).default('auto'),
  /**
   * Bound of an encoded alert, in bytes. An alert carries its whole event; one larger than this (a crafted 900 KB
   * argv) has its matched values and the event's long strings and lists cut short, `truncated: true`, and the full
   * event stays on the audit topic. Well under the broker's 1 MiB message.max.bytes by default.
   */
  maxAlertBytes: z
    .number()
    .int()
    .min(16_384)
    .max(1_000_000)
    .default(256 * 1024),
  /**
   * A rule that throws at evaluation is disabled only once it has thrown on events of this many distinct hosts.
   * Until then each record it threw on is dead-lettered with the rule and the error, and the rule keeps running:
   * one host is what an attacker controls, and a crafted record must not switch detection off.
   */
  disableRuleAfterHosts: z.number().int().positive().default(3),
  /**
   * Rule alerts one batch carries at most; beyond it only the first alert of each rule and host is kept, the
   * repeats dropped and counted (edr_detector_alerts_dropped): a flood of matches cannot grow a transaction
   * without bound, and every distinct detection still surfaces. (The literal keeps worker.ts, and its threads,
   * out of the config's imports; the worker's DEFAULT_MAX_ALERTS_PER_BATCH is the same.)
   */
  maxAlertsPerBatch: z.number().int().positive().default(50_000),
  /**
   * Self-monitoring (pipeline-health.ts): read the audit topic and raise alerts, with the project's stable
   * `edr-pipeline-*` rule ids, for collectors' loss and STOPPED records, disabled rules, rules-topic pushes and
   * refusals.
   */
  health: z
    .strictObject({
      enabled: z.boolean().default(true),
      /**
       * A known host (one whose CollectorHeartbeat was read) silent for this long raises edr-pipeline-host-silent:
       * killed, hung or cut off. Several times the collectors' `publish.heartbeatIntervalMs` (30 s).
       */
      silentAfterMs: z.number().int().min(1000).default(120_000),
      /** Hosts tracked at most; beyond it the one heard from longest ago is forgotten (logged with the count). */
      maxHosts: z.number().int().positive().default(100_000),
    })
    .prefault({}),
  correlation: z
    .strictObject({
      /** Groups kept per correlation and partition; beyond it the stalest group is evicted (and counted). */
      maxGroups: z.number().int().positive().default(10_000),
      /** Entries kept per group; beyond it the oldest are dropped (and counted): one flooding host stays bounded. */
      maxEventsPerGroup: z.number().int().positive().default(DEFAULT_MAX_EVENTS_PER_GROUP),
      /**
       * How far an event's own time may lie from its Kafka record's timestamp before the record's is used for
       * windowing instead (counted): a host's clock, or a forged event, cannot move windows past other hosts' state.
       */
      maxClockSkewMs: z.number().int().positive().default(DEFAULT_MAX_CLOCK_SKEW_MS),
      /** Bound of one changelog record (a group's entries); larger groups lose their oldest entries (counted). */
      maxChangelogRecordBytes: z
        .number()
        .int()
        .min(1024)
        .max(900_000)
        .default(DEFAULT_MAX_CHANGELOG_RECORD_BYTES),
      /** How long a worker waits for the state of a partition it took over before starting empty. */
      restoreTimeoutMs: z.number().int().positive().default(15_000),
    })
    .prefault({}),
  metrics: z
    .strictObject({
      /** Prometheus endpoint port (0: any free port, logged). */
      port: z.number().int().min(0).max(65535),
      host: z.string().default('127.0.0.1'),
    })
    .optional(),
  /**
   * Create the topics the detector uses when missing (with the table's partitions and retention). Off by default:
   * `edr topics create` does it as the operator, and a detector's principal has no right to create topics.
   */
  createTopics: z.boolean().default(false),
});

export type DetectorConfig = z.output<typeof detectorConfigSchema>;
