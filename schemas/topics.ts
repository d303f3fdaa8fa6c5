/**
 * The one table of topics: names, keys, value schemas, partitions and retention defaults.
 * Deployments override partitions and retention through config; names carry the major version of their schema.
 */
import type { RecordName } from './codec.js';

export interface TopicSpec {
  name: string;
  /** What the record key is. */
  key: string;
  /** Avro full names of the values (single-object encoded), or 'yaml' / 'json' / 'bytes'. */
  values: Array<RecordName | 'yaml' | 'json' | 'bytes' | 'avro-schema'>;
  partitions: number;
  /**
   * The detector's intermediate topics: they need as many partitions as its input topic has (which a deployment
   * may change), so the detector creates them when it starts, with that count, and `edr up` does not.
   */
  followsInput?: true;
  cleanupPolicy: 'delete' | 'compact';
  /** -1 keeps forever. */
  retentionMs: number;
  /**
   * min.insync.replicas when the topic is created with more replicas than this (replication 3: an acknowledged
   * write is on 2 nodes, and one node may fail with writes going on); with fewer it stays the broker's default,
   * as it would refuse every write once one replica is down.
   */
  minInsyncReplicas?: number;
  doc: string;
}

const day = 24 * 60 * 60 * 1000;

export const topics = {
  raw: {
    name: 'edr.execve.raw.v1',
    key: 'host id',
    values: ['dev.edr.v1.ExecveEvent'],
    partitions: 6,
    cleanupPolicy: 'delete',
    retentionMs: 1 * day,
    minInsyncReplicas: 2,
    doc: 'Detection input: every exec of every host, keyed by host so one host stays ordered on one partition.',
  },
  audit: {
    name: 'edr.execve.audit.v1',
    key: 'host id',
    values: [
      'dev.edr.v1.ExecveEvent',
      'dev.edr.v1.CollectorRecord',
      'dev.edr.v1.RuleRefused',
      'dev.edr.v1.CollectorHeartbeat',
    ],
    partitions: 6,
    cleanupPolicy: 'delete',
    retentionMs: 90 * day,
    minInsyncReplicas: 2,
    doc: 'The durable record: events plus the collector lifecycle, loss and heartbeat records, and the rules-topic records detectors refused; replayed with new rules.',
  },
  alerts: {
    name: 'edr.alerts.v1',
    key: 'host id',
    values: ['dev.edr.v1.Alert'],
    partitions: 3,
    cleanupPolicy: 'delete',
    retentionMs: 30 * day,
    minInsyncReplicas: 2,
    doc: 'Alerts from live detectors and replay runs (replay alerts carry their run id).',
  },
  rules: {
    name: 'edr.rules.v1',
    key: 'rule id',
    values: ['yaml'],
    partitions: 1,
    cleanupPolicy: 'compact',
    retentionMs: -1,
    doc: "The fleet's rule set: one record per rule (its YAML, or empty for a deletion), signed in headers (edr-rule-*). One partition keeps one order.",
  },
  deadLetter: {
    name: 'edr.deadletter.v1',
    key: 'original key',
    values: ['bytes'],
    partitions: 1,
    cleanupPolicy: 'delete',
    retentionMs: 30 * day,
    doc: 'Records that could not be decoded, with the original bytes and headers saying why and from where.',
  },
  undeliverable: {
    name: 'edr.alerts.undeliverable.v1',
    key: 'alert id',
    values: ['dev.edr.v1.Alert'],
    partitions: 1,
    cleanupPolicy: 'delete',
    retentionMs: 30 * day,
    doc: 'Alerts a sink gave up on (permanent error or retry budget spent), with the sink and the reason in headers.',
  },
  schemas: {
    name: 'edr.schemas.v1',
    key: 'fingerprint (hex)',
    values: ['avro-schema'],
    partitions: 1,
    cleanupPolicy: 'compact',
    retentionMs: -1,
    doc: 'Writer schemas by fingerprint, so a reader can decode records from newer or older writers.',
  },
  correlation: {
    name: 'edr.correlation.v1',
    key: 'correlation id | group-by values',
    values: ['dev.edr.v1.Alert'],
    partitions: 6,
    cleanupPolicy: 'delete',
    retentionMs: 7 * day,
    followsInput: true,
    doc: 'Rule matches feeding correlations not grouped by host, keyed by their group-by values (the base match as an Alert).',
  },
  changelog: {
    name: 'edr.correlation-state.v1',
    key: 'stage | input partition | correlation | group, or a checkpoint',
    values: ['json'],
    partitions: 6,
    cleanupPolicy: 'compact',
    retentionMs: -1,
    followsInput: true,
    doc: 'Correlation state, written in the same transaction as the input offsets it corresponds to.',
  },
} as const satisfies Record<string, TopicSpec>;

export type TopicRole = keyof typeof topics;

/** Every topic `edr up` creates at once: all but those the detector creates after its input (`followsInput`). */
export const allTopics: readonly TopicSpec[] = Object.values<TopicSpec>(topics).filter(
  (t) => t.followsInput !== true,
);
