/**
 * From a rule match to an Alert record: deterministic ids (rule id + the event's identity, + the replay run id
 * for replays), so the same match always has the same id and any consumer can de-duplicate.
 */
import { createHash } from 'node:crypto';
import { EdrError } from '../infra/errors.js';
import type { HeaderValue, InRecord, OutRecord } from '../infra/transport.js';
import type { Codec } from '../schemas/codec.js';
import { processCreationFields } from '../schemas/sigma-fields.js';
import type { Alert, ExecveEvent, MatchedField } from '../schemas/types.js';
import type { CompiledRule } from './sigma/engine.js';
import { traceHeaders } from './telemetry.js';

/** Namespace of alert ids (UUID v5); fixed forever, or ids of the same match would change. */
const ALERT_NS = '6f1c7a52-3e0b-5d8e-9a4f-1b2c3d4e5f60';

/**
 * A name-based UUID (RFC 9562 version 5: SHA-1 of the namespace's 16 bytes and the name's UTF-8). Written here
 * on node:crypto because alert ids are made for every match, on the detector's hot path.
 */
export function uuidV5(name: string, namespace: string): string {
  let ns = namespaces.get(namespace);
  if (ns === undefined) {
    ns = Buffer.from(namespace.replaceAll('-', ''), 'hex');
    namespaces.set(namespace, ns);
  }
  const h = createHash('sha1').update(ns).update(name).digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.toString('hex', 0, 16);
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}
const namespaces = new Map<string, Buffer>();

export function eventIdentity(e: ExecveEvent): string {
  return `${e.hostId}|${e.bootId}|${e.pid}|${e.processStartNs}|${e.seq}|${e.timeNs}`;
}

export function alertId(ruleId: string, e: ExecveEvent, runId: string | null = null): string {
  return uuidV5(`${ruleId}|${eventIdentity(e)}${runId === null ? '' : `|run:${runId}`}`, ALERT_NS);
}

export interface RuleInfo {
  id: string;
  title: string;
  level: string;
  status: string | null;
  tags: string[];
  author: string | null;
  references: string[];
}

export interface AlertContext {
  ruleSetVersion: string;
  detectorId: string;
  runId: string | null;
}

/** What a compiled rule puts in its alerts. */
export function ruleInfo(r: CompiledRule): RuleInfo {
  return {
    id: r.id,
    title: r.title,
    level: r.level,
    status: r.doc.status ?? null,
    tags: r.doc.tags,
    author: r.author ?? null,
    references: r.doc.references,
  };
}

export function buildAlert(
  rule: RuleInfo,
  event: ExecveEvent,
  matchedFields: MatchedField[],
  ctx: AlertContext,
): Alert {
  return { ...alertHead(rule, event, matchedFields, ctx), event };
}

/** Every field of the alert but the event (read from `event` only for the alert id). */
function alertHead(
  rule: RuleInfo,
  event: ExecveEvent,
  matchedFields: MatchedField[],
  ctx: AlertContext,
): Omit<Alert, 'event'> {
  return {
    alertId: alertId(rule.id, event, ctx.runId),
    ruleId: rule.id,
    ruleTitle: rule.title,
    ruleLevel: rule.level,
    ruleStatus: rule.status,
    ruleTags: rule.tags,
    ruleAuthor: rule.author,
    ruleReferences: rule.references,
    ruleSetVersion: ctx.ruleSetVersion,
    matchedFields,
    detectorId: ctx.detectorId,
    detectedAtNs: BigInt(Date.now()) * 1_000_000n,
    replayRunId: ctx.runId,
    truncated: false,
  };
}

/**
 * The default bound of an encoded alert: well under the broker's 1 MiB `message.max.bytes` (an alert carries its
 * whole event, and a host can send an argv near the limit itself), leaving room for key, headers and framing.
 */
export const DEFAULT_MAX_ALERT_BYTES = 256 * 1024;

/** Strings of an alert cut to `cap` characters, lists to a few items of at most 4 × `cap` in all; `truncated` set. */
function cutShort(a: Alert, cap: number): Alert {
  const str = (s: string) => (s.length > cap ? `${s.slice(0, cap)}…` : s);
  const opt = (s: string | null) => (s === null ? null : str(s));
  const maxItems = Math.max(4, Math.floor(cap / 16));
  const list = <T>(items: readonly T[], size: (x: T) => number, cut: (x: T) => T): T[] => {
    const out: T[] = [];
    let total = 0;
    for (const x of items) {
      if (out.length >= maxItems || total >= 4 * cap) break;
      const c = cut(x);
      total += size(c);
      out.push(c);
    }
    return out;
  };
  const strs = (items: readonly string[]) => list(items, (x) => x.length, str);
  const e = a.event;
  const argv = strs(e.argv);
  return {
    ...a,
    ruleTitle: str(a.ruleTitle),
    ruleLevel: str(a.ruleLevel),
    ruleStatus: opt(a.ruleStatus),
    ruleTags: strs(a.ruleTags),
    ruleAuthor: opt(a.ruleAuthor),
    ruleReferences: strs(a.ruleReferences),
    ruleSetVersion: str(a.ruleSetVersion),
    matchedFields: list(
      a.matchedFields,
      (f) => f.field.length + f.value.length,
      (f) => ({ field: str(f.field), value: str(f.value) }),
    ),
    detectorId: str(a.detectorId),
    replayRunId: opt(a.replayRunId),
    event: {
      ...e,
      hostId: str(e.hostId),
      hostname: str(e.hostname),
      bootId: str(e.bootId),
      comm: str(e.comm),
      image: str(e.image),
      argv,
      argvTruncated: e.argvTruncated || argv.length < e.argv.length || argv.some((x, i) => x !== e.argv[i]),
      cwd: str(e.cwd),
      containerId: opt(e.containerId),
      userName: opt(e.userName),
      parentImage: opt(e.parentImage),
      parentCommandLine: opt(e.parentCommandLine),
      ancestors: strs(e.ancestors),
      sha256: opt(e.sha256),
      collectorVersion: str(e.collectorVersion),
    },
    truncated: true,
  };
}

/**
 * `alert` encoded in at most `maxBytes`: as it is when it fits, else cut short (`cutShort`, tighter each try) with
 * `truncated` set. The alert id stays the one of the whole event. Throws EDR_DETECTOR_ALERT_TOO_LARGE when even
 * the tightest cut does not fit (a bound below what the fixed fields take).
 */
export function encodeFitted(codec: Codec, alert: Alert, maxBytes: number): Buffer {
  const whole = codec.encode('dev.edr.v1.Alert', alert);
  if (whole.length <= maxBytes) return whole;
  for (let cap = 16_384; cap >= 16; cap = Math.floor(cap / 4)) {
    const cut = codec.encode('dev.edr.v1.Alert', cutShort(alert, cap));
    if (cut.length <= maxBytes) return cut;
  }
  throw new EdrError(
    'EDR_DETECTOR_ALERT_TOO_LARGE',
    `alert ${alert.alertId} does not fit in ${maxBytes} bytes even cut short (${whole.length} bytes whole)`,
  );
}

/**
 * The Alert record value of a match on the ExecveEvent record `record` (single-object encoded; `event` reads it,
 * typically a view of it): the record's bytes go into the alert as they are, so the event is neither decoded nor
 * encoded again. A record written with another schema version is decoded and encoded.
 */
export function encodeMatchAlert(
  codec: Codec,
  record: Uint8Array,
  event: ExecveEvent,
  rule: RuleInfo,
  matchedFields: MatchedField[],
  ctx: AlertContext,
  maxBytes = DEFAULT_MAX_ALERT_BYTES,
): Buffer {
  const head = alertHead(rule, event, matchedFields, ctx);
  const around = codec.encodeAlertAround(head, record, `${rule.id}\u0000${ctx.ruleSetVersion}`);
  if (around !== undefined && around.length <= maxBytes) return around;
  // Another schema version, or too large: the event decoded, the alert encoded (cut short if need be).
  return encodeFitted(codec, { ...head, event: codec.decodeAs('dev.edr.v1.ExecveEvent', record) }, maxBytes);
}

export const ALERT_HEADERS = { ruleSetVersion: 'edr-rule-set-version', runId: 'edr-replay-run-id' } as const;

/** The alerts-topic record: keyed by host id, carrying the input's trace context. */
export function alertRecord(
  codec: Codec,
  topic: string,
  alert: Alert,
  source: InRecord | undefined,
  maxBytes = DEFAULT_MAX_ALERT_BYTES,
): OutRecord {
  return encodedAlertRecord(topic, alert.event.hostId, encodeFitted(codec, alert, maxBytes), source, alert);
}

/** Longest alert key: a host id is short, unless a host made it up to fill the record. */
const MAX_KEY = 256;

/** The same for an alert already encoded (`value`), with its event's host id and its context. */
export function encodedAlertRecord(
  topic: string,
  hostId: string,
  value: Buffer,
  source: InRecord | undefined,
  ctx: { ruleSetVersion: string; replayRunId: string | null },
): OutRecord {
  const headers: Record<string, HeaderValue> =
    source === undefined ? {} : (traceHeaders(source) as Record<string, HeaderValue>);
  headers[ALERT_HEADERS.ruleSetVersion] = ctx.ruleSetVersion;
  if (ctx.replayRunId !== null) headers[ALERT_HEADERS.runId] = ctx.replayRunId;
  return { topic, key: hostId.length > MAX_KEY ? hostId.slice(0, MAX_KEY) : hostId, value, headers };
}

/** Reads a Sigma field (process_creation names, then auditd's) of an event, for correlations. */
export function eventField(e: ExecveEvent, field: string): unknown {
  const f = processCreationFields[field];
  if (f !== undefined) return f(e) ?? undefined;
  if (field === 'hostId') return e.hostId;
  return undefined;
}
