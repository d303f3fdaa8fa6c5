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

function truncate(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
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

/** Text line used as the notification fallback: `[HIGH] title on host (×N)`. */
export function summaryLine(fold: Fold): string {
  const a = fold.alerts[0]!;
  const n = fold.alerts.length;
  return `[${a.ruleLevel.toUpperCase()}] ${a.ruleTitle} on ${a.event.hostname}${n > 1 ? ` (×${n})` : ''}`;
}

function foldAttachment(fold: Fold, opts: SlackPayloadOptions): Record<string, unknown> {
  const a: Alert = fold.alerts[0]!;
  const e = a.event;
  const n = fold.alerts.length;
  const link = opts.ruleUrl?.replaceAll('{ruleId}', encodeURIComponent(a.ruleId));
  const title = escapeMrkdwn(a.ruleTitle);
  const fields = [
    `*Level*\n${escapeMrkdwn(a.ruleLevel)}`,
    `*Host*\n${escapeMrkdwn(e.hostname)}`,
    `*User*\n${escapeMrkdwn(e.userName ?? `uid ${e.uid}`)}`,
    `*Parent*\n${escapeMrkdwn(truncate(e.parentCommandLine ?? e.parentImage ?? '-', 1900))}`,
  ];
  if (e.containerId) fields.push(`*Container*\n${escapeMrkdwn(e.containerId)}`);
  if (a.replayRunId) fields.push(`*Replay run*\n${escapeMrkdwn(a.replayRunId)}`);
  // ``` inside a code block would end it early.
  const cmd = escapeMrkdwn(commandLine(e.argv)).replaceAll('```', "'''");
  const blocks: Array<Record<string, unknown>> = [
    { type: 'header', text: { type: 'plain_text', text: truncate(a.ruleTitle, 150), emoji: false } },
    {
      type: 'section',
      text: { type: 'mrkdwn', text: link ? `*<${link}|${title}>*` : `*${title}*` },
      fields: fields.map((text) => ({ type: 'mrkdwn', text })),
    },
    {
      type: 'section',
      text: {
        type: 'mrkdwn',
        text: `*Command line*${e.argvTruncated ? ' (truncated)' : ''}\n\`\`\`${truncate(cmd, 2800)}\`\`\``,
      },
    },
  ];
  if (n > 1) {
    blocks.push({
      type: 'context',
      elements: [
        {
          type: 'mrkdwn',
          text: `*${n}* identical alerts (same rule and host) folded: first seen ${isoFromNs(fold.firstSeenNs)}, last seen ${isoFromNs(fold.lastSeenNs)}`,
        },
      ],
    });
  }
  const tags = a.ruleTags.map((t) => {
    const url = attackUrl(t);
    return url ? `<${url}|${escapeMrkdwn(t)}>` : escapeMrkdwn(t);
  });
  const context = [
    ...(tags.length > 0 ? [tags.join(' · ')] : []),
    // The Detection Rule License requires attribution of the rule's author.
    `Rule by ${escapeMrkdwn(a.ruleAuthor ?? 'unknown author')} (DRL 1.1)`,
    `${n > 1 ? 'first alert' : 'alert'} ${escapeMrkdwn(a.alertId)} · ${isoFromNs(e.timeNs)}`,
  ];
  blocks.push({ type: 'context', elements: context.map((text) => ({ type: 'mrkdwn', text })) });
  return { color: levelColours[a.ruleLevel] ?? levelColours['informational'], blocks };
}

/** Slack refuses messages with too many attachments or blocks: a digest shows this many folds in full. */
export const MAX_FOLDS_SHOWN = 20;

/** The webhook body for a message: pure, tested by value. */
export function slackPayload(message: Message, opts: SlackPayloadOptions = {}): Record<string, unknown> {
  const shown = message.folds.slice(0, MAX_FOLDS_SHOWN);
  const rest = message.folds.slice(MAX_FOLDS_SHOWN);
  const lines = shown.map(summaryLine);
  if (rest.length > 0) {
    const n = rest.reduce((k, f) => k + f.alerts.length, 0);
    lines.push(
      `… and ${n} more alert(s) in ${rest.length} more group(s): ${rest.map(summaryLine).slice(0, 50).join('; ')}`,
    );
  }
  const body: Record<string, unknown> = {
    text: lines.join('\n'),
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
