/**
 * Slack sink: one incoming-webhook POST per message, Block Kit inside an attachment (the attachment carries the
 * level colour). A folded alert storm is one message with the count and first/last seen. The webhook URL is a
 * secret (whoever has it can post) and never appears in errors or logs.
 */
import { z } from 'zod';
import { secret } from '../infra/config.js';
import { commandLine } from '../schemas/sigma-fields.js';
import type { Alert } from '../schemas/types.js';
import {
  type Fold,
  httpStatusError,
  type Message,
  networkError,
  type Sink,
  type SinkContext,
  type SinkDefaults,
} from './sink.js';

export const configSchema = z.strictObject({
  webhookUrl: secret().refine((s) => isHttpUrl(s.reveal()), 'not an http(s) URL'),
  /** Overrides the webhook's channel (legacy webhooks only). */
  channel: z.string().min(1).optional(),
  username: z.string().min(1).optional(),
  iconEmoji: z.string().min(1).optional(),
  /** Link for the rule title; `{ruleId}` is replaced. */
  ruleUrl: z
    .string()
    .refine((u) => isHttpUrl(u.replaceAll('{ruleId}', 'x')), 'not an http(s) URL')
    .optional(),
});
export type SlackConfig = z.output<typeof configSchema>;

export const defaults: SinkDefaults = {
  fold: true,
  redact: true,
  oneMessagePerBatch: false,
  // Slack allows about one message per second per webhook, with short bursts.
  messagesPerSecond: 1,
  startFrom: 'latest',
};

function isHttpUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return u.protocol === 'https:' || u.protocol === 'http:';
  } catch {
    return false;
  }
}

export const levelColours: Record<string, string> = {
  critical: '#8b0000',
  high: '#e01e5a',
  medium: '#ecb22e',
  low: '#36c5f0',
  informational: '#9e9e9e',
};

const tactics: Record<string, string> = {
  reconnaissance: 'TA0043',
  resource_development: 'TA0042',
  initial_access: 'TA0001',
  execution: 'TA0002',
  persistence: 'TA0003',
  privilege_escalation: 'TA0004',
  defense_evasion: 'TA0005',
  credential_access: 'TA0006',
  discovery: 'TA0007',
  lateral_movement: 'TA0008',
  collection: 'TA0009',
  command_and_control: 'TA0011',
  exfiltration: 'TA0010',
  impact: 'TA0040',
};

/** MITRE ATT&CK page of a Sigma tag (`attack.t1059.004`, `attack.execution`, `attack.g0032`), if it has one. */
export function attackUrl(tag: string): string | undefined {
  const m = /^attack\.(.+)$/i.exec(tag);
  if (!m) return undefined;
  const t = m[1]!.toLowerCase();
  const tech = /^t(\d{4})(?:\.(\d{3}))?$/.exec(t);
  if (tech) return `https://attack.mitre.org/techniques/T${tech[1]}/${tech[2] ? `${tech[2]}/` : ''}`;
  const grp = /^([gs])(\d{4})$/.exec(t);
  if (grp)
    return `https://attack.mitre.org/${grp[1] === 'g' ? 'groups' : 'software'}/${grp[1]!.toUpperCase()}${grp[2]}/`;
  const ta = tactics[t.replaceAll('-', '_')];
  return ta === undefined ? undefined : `https://attack.mitre.org/tactics/${ta}/`;
}

/** Slack mrkdwn needs &, < and > escaped; everything else is literal. */
export function escapeMrkdwn(s: string): string {
  return s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
}

/**
 * Slack's documented limits, in characters (counted here as UTF-16 units, never fewer than Slack counts). The
 * message text's hard limit is 40,000; Slack truncates past 4,000 and recommends staying under it.
 */
export const SLACK_LIMITS = {
  messageText: 4000,
  sectionText: 3000,
  fieldText: 2000,
  headerText: 150,
  contextText: 3000,
  blocks: 50,
  fieldsPerSection: 10,
} as const;

const ELLIPSIS = '…';

/**
 * `s` cut to at most `max` characters with an ellipsis, never inside an escape (`&amp;`, `&lt;`, `&gt;`: in escaped
 * text every `&` starts one) nor between the halves of a surrogate pair.
 */
export function clip(s: string, max: number): string {
  if (s.length <= max) return s;
  let end = Math.max(0, max - ELLIPSIS.length);
  const amp = s.lastIndexOf('&', end - 1);
  if (amp >= 0 && end - amp < 5 && !s.slice(amp, end).includes(';')) end = amp;
  const last = s.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--;
  return s.slice(0, end) + ELLIPSIS;
}

/** Alert data as mrkdwn: escaped, then clipped to `max` (the escapes count). */
function mrkdwnValue(raw: string, max: number): string {
  return clip(escapeMrkdwn(raw), max);
}

/** A mrkdwn text object; verbatim, so Slack links no bare channel name, URL or mention found in alert data. */
function mrkdwn(text: string): Record<string, unknown> {
  return { type: 'mrkdwn', text, verbatim: true };
}

export function isoFromNs(ns: bigint): string {
  return new Date(Number(ns / 1_000_000n)).toISOString();
}

export interface SlackPayloadOptions {
  channel?: string | undefined;
  username?: string | undefined;
  iconEmoji?: string | undefined;
  ruleUrl?: string | undefined;
}

/** Text line used as the notification fallback: `[HIGH] title on host (×N)`, raw (escape before use). */
export function summaryLine(fold: Fold): string {
  const a = fold.alerts[0]!;
  const n = fold.alerts.length;
  return `[${a.ruleLevel.toUpperCase()}] ${a.ruleTitle} on ${a.event.hostname}${n > 1 ? ` (×${n})` : ''}`;
}

/** `*Label*\nvalue`, the value escaped and clipped so the whole stays within a field's limit. */
function field(label: string, value: string): Record<string, unknown> {
  const head = `*${label}*\n`;
  return mrkdwn(head + mrkdwnValue(value, SLACK_LIMITS.fieldText - head.length));
}

/** Linked tags, whole ones only: a link cut in half would show its markup. */
function tagLine(tags: readonly string[], max: number): string | undefined {
  let line = '';
  for (const t of tags) {
    const url = attackUrl(t);
    const label = mrkdwnValue(t, 200);
    const item = url ? `<${url}|${label}>` : label;
    const next = line === '' ? item : `${line} · ${item}`;
    if (next.length > max - 2) return line === '' ? ELLIPSIS : `${line} ${ELLIPSIS}`;
    line = next;
  }
  return line === '' ? undefined : line;
}

/** Blocks one fold takes at most: header, fields, command line, fold count, context. */
const BLOCKS_PER_FOLD = 5;

function foldAttachment(fold: Fold, opts: SlackPayloadOptions): Record<string, unknown> {
  const a: Alert = fold.alerts[0]!;
  const e = a.event;
  const n = fold.alerts.length;
  const link = opts.ruleUrl?.replaceAll('{ruleId}', encodeURIComponent(a.ruleId));
  const titleRoom = SLACK_LIMITS.sectionText - (link ? link.length + 5 : 2);
  const title = mrkdwnValue(a.ruleTitle, Math.max(1, titleRoom));
  const fields = [
    field('Level', a.ruleLevel),
    field('Host', e.hostname),
    field('User', e.userName ?? `uid ${e.uid}`),
    field('Parent', e.parentCommandLine ?? e.parentImage ?? '-'),
  ];
  if (e.containerId) fields.push(field('Container', e.containerId));
  if (a.replayRunId) fields.push(field('Replay run', a.replayRunId));
  const cmdHead = `*Command line*${e.argvTruncated ? ' (truncated)' : ''}\n\`\`\``;
  // ``` inside a code block would end it early.
  const cmd = mrkdwnValue(
    commandLine(e.argv).replaceAll('```', "'''"),
    SLACK_LIMITS.sectionText - cmdHead.length - 3,
  );
  const blocks: Array<Record<string, unknown>> = [
    {
      type: 'header',
      // plain_text: Slack parses no markup in it, so it is clipped, not escaped.
      text: { type: 'plain_text', text: clip(a.ruleTitle, SLACK_LIMITS.headerText) || '-', emoji: false },
    },
    {
      type: 'section',
      text: mrkdwn(link ? `*<${link}|${title}>*` : `*${title}*`),
      fields: fields.slice(0, SLACK_LIMITS.fieldsPerSection),
    },
    { type: 'section', text: mrkdwn(`${cmdHead}${cmd}\`\`\``) },
  ];
  if (n > 1) {
    blocks.push({
      type: 'context',
      elements: [
        mrkdwn(
          `*${n}* identical alerts (same rule and host) folded: first seen ${isoFromNs(fold.firstSeenNs)}, last seen ${isoFromNs(fold.lastSeenNs)}`,
        ),
      ],
    });
  }
  const tags = tagLine(a.ruleTags, SLACK_LIMITS.contextText);
  const context = [
    ...(tags === undefined ? [] : [tags]),
    // The Detection Rule License requires attribution of the rule's author.
    `Rule by ${mrkdwnValue(a.ruleAuthor ?? 'unknown author', SLACK_LIMITS.contextText - 20)} (DRL 1.1)`,
    `${n > 1 ? 'first alert' : 'alert'} ${mrkdwnValue(a.alertId, 200)} · ${isoFromNs(e.timeNs)}`,
  ];
  blocks.push({ type: 'context', elements: context.map(mrkdwn) });
  const colour = Object.hasOwn(levelColours, a.ruleLevel) ? levelColours[a.ruleLevel] : undefined;
  return { color: colour ?? levelColours['informational'], blocks };
}

/** A digest shows this many folds in full: with at most BLOCKS_PER_FOLD each, within Slack's 50 blocks. */
export const MAX_FOLDS_SHOWN = Math.floor(SLACK_LIMITS.blocks / BLOCKS_PER_FOLD);

/** The webhook body for a message: pure, tested by value. */
export function slackPayload(message: Message, opts: SlackPayloadOptions = {}): Record<string, unknown> {
  const shown = message.folds.slice(0, MAX_FOLDS_SHOWN);
  const rest = message.folds.slice(MAX_FOLDS_SHOWN);
  const lines = shown.map((f) => escapeMrkdwn(summaryLine(f)));
  if (rest.length > 0) {
    const n = rest.reduce((k, f) => k + f.alerts.length, 0);
    const more = rest.slice(0, 50).map((f) => escapeMrkdwn(summaryLine(f)));
    lines.push(`… and ${n} more alert(s) in ${rest.length} more group(s): ${more.join('; ')}`);
  }
  const body: Record<string, unknown> = {
    text: clip(lines.join('\n'), SLACK_LIMITS.messageText),
    attachments: shown.map((f) => foldAttachment(f, opts)),
  };
  if (opts.channel) body['channel'] = opts.channel;
  if (opts.username) body['username'] = opts.username;
  if (opts.iconEmoji) body['icon_emoji'] = opts.iconEmoji;
  return body;
}

export function create(config: SlackConfig, _ctx: SinkContext): Sink {
  const url = config.webhookUrl.reveal();
  const opts: SlackPayloadOptions = {
    channel: config.channel,
    username: config.username,
    iconEmoji: config.iconEmoji,
    ruleUrl: config.ruleUrl,
  };
  return {
    async send(message, signal) {
      let res: Response;
      try {
        res = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(slackPayload(message, opts)),
          signal,
        });
      } catch (err) {
        throw networkError(err, 'slack webhook');
      }
      let body = '';
      try {
        body = await res.text();
      } catch (err) {
        throw networkError(err, 'slack webhook');
      }
      if (res.status >= 200 && res.status < 300) return;
      throw httpStatusError(res.status, 'slack webhook', body, res.headers.get('retry-after'));
    },
    async close() {},
  };
}
