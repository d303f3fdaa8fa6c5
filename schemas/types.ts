/**
 * TypeScript shapes of the records in schemas/*.avsc. The .avsc files are the source of truth;
 * codec.test.ts checks a value of each type against its schema so the two cannot drift apart.
 * `long` fields holding nanoseconds or 64-bit ids are bigint (a JS number loses precision past 2^53).
 */

export interface ExecveEvent {
  hostId: string;
  hostname: string;
  bootId: string;
  seq: bigint;
  timeNs: bigint;
  processStartNs: bigint;
  pid: number;
  tid: number;
  ppid: number;
  uid: bigint;
  euid: bigint;
  gid: bigint;
  loginUid: bigint;
  sessionId: bigint;
  comm: string;
  image: string;
  argv: string[];
  argvTruncated: boolean;
  argvBytes: number;
  cwd: string;
  cgroupId: bigint;
  containerId: string | null;
  userName: string | null;
  parentImage: string | null;
  parentCommandLine: string | null;
  ancestors: string[];
  sha256: string | null;
  collectorVersion: string;
}

export interface MatchedField {
  field: string;
  value: string;
}

export interface Alert {
  alertId: string;
  ruleId: string;
  ruleTitle: string;
  ruleLevel: string;
  ruleStatus: string | null;
  ruleTags: string[];
  ruleAuthor: string | null;
  ruleReferences: string[];
  ruleSetVersion: string;
  event: ExecveEvent;
  matchedFields: MatchedField[];
  detectorId: string;
  detectedAtNs: bigint;
  replayRunId: string | null;
  /** Cut short to fit the alerts topic (detector maxAlertBytes); the full event is on the audit topic. */
  truncated: boolean;
}

export type CollectorRecordKind = 'STARTED' | 'STOPPED' | 'CONFIG' | 'LOSS';

export interface LossCounters {
  kernelSeen: bigint;
  kernelRingFull: bigint;
  kernelTruncated: bigint;
  kernelReadErrors: bigint;
  queueDropped: bigint;
  spoolDropped: bigint;
}

export interface CollectorRecord {
  hostId: string;
  hostname: string;
  bootId: string;
  timeNs: bigint;
  collectorVersion: string;
  kind: CollectorRecordKind;
  config: string | null;
  losses: LossCounters | null;
  lastSeq: bigint;
  message: string | null;
}

export interface RuleRefused {
  detectorId: string;
  timeNs: bigint;
  topic: string;
  partition: number;
  offset: bigint;
  ruleId: string | null;
  reason: string;
  detail: string;
  keyId: string | null;
  version: bigint | null;
  acceptedVersion: bigint | null;
  valueSha256: string | null;
  valueBytes: bigint;
}

/** A collector is alive (schemas/collector-heartbeat.avsc). */
export interface CollectorHeartbeat {
  hostId: string;
  hostname: string;
  bootId: string;
  timeNs: bigint;
  collectorVersion: string;
  intervalMs: bigint;
  lastSeq: bigint;
  kernelSeen: bigint;
  kernelRingFull: bigint;
  queueDropped: bigint;
  spoolDropped: bigint;
}
