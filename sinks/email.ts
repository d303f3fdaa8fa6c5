/**
 * Email sink: SMTP through nodemailer (implicit TLS, STARTTLS required, or plain for a local relay), optional
 * auth, a text and an HTML part. One message per fold, or per digest window when `digest` is set on the instance.
 */
import nodemailer from 'nodemailer';
import { z } from 'zod';
import { secret } from '../infra/config.js';
import { EdrError } from '../infra/errors.js';
import { levelRank } from '../schemas/levels.js';
import { commandLine } from '../schemas/sigma-fields.js';
import {
  type Fold,
  type Message,
  networkError,
  type Sink,
  type SinkContext,
  type SinkDefaults,
} from './sink.js';
import { attackUrl, isoFromNs } from './slack.js';

export const configSchema = z.strictObject({
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535).default(587),
  /** tls: TLS from the first byte (port 465); starttls: upgrade required (port 587); none: local relays only. */
  security: z.enum(['tls', 'starttls', 'none']).default('starttls'),
  tlsRejectUnauthorized: z.boolean().default(true),
  auth: z.strictObject({ user: z.string().min(1), pass: secret() }).optional(),
  from: z.string().min(3),
  to: z.array(z.email()).min(1),
  subjectPrefix: z.string().default('[EDR]'),
  /** Link for the rule title; `{ruleId}` is replaced. */
  ruleUrl: z
    .string()
    .refine((u) => URL.canParse(u.replaceAll('{ruleId}', 'x')), 'not a URL')
    .optional(),
});
export type EmailConfig = z.output<typeof configSchema>;

export const defaults: SinkDefaults = {
  fold: true,
  redact: true,
  oneMessagePerBatch: false,
  messagesPerSecond: 0,
  startFrom: 'latest',
};

export interface EmailPayload {
  from: string;
  to: string[];
  subject: string;
  text: string;
  html: string;
  headers: Record<string, string>;
}

function escapeHtml(s: string): string {
  return s
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

/** Subject lines are one line: a newline in a title must not start a header. */
function oneLine(s: string): string {
  return s.replace(/[\r\n]+/g, ' ');
}

export function emailSubject(message: Message, prefix: string): string {
  const folds = message.folds;
  const first = folds[0]!.alerts[0]!;
  const count = folds.reduce((n, f) => n + f.alerts.length, 0);
  const p = prefix ? `${prefix} ` : '';
  if (folds.length === 1) {
    const n = folds[0]!.alerts.length;
    return oneLine(
      `${p}[${first.ruleLevel.toUpperCase()}] ${first.ruleTitle} on ${first.event.hostname}${n > 1 ? ` (×${n})` : ''}`,
    );
  }
  const top = folds
    .map((f) => f.alerts[0]!.ruleLevel)
    .reduce((a, b) => (levelRank(b) > levelRank(a) ? b : a));
  return oneLine(
    `${p}[${top.toUpperCase()}] digest: ${count} alerts, ${first.ruleTitle} on ${first.event.hostname} and ${folds.length - 1} more`,
  );
}

function foldRows(f: Fold, ruleUrl: string | undefined): Array<[string, string, string?]> {
  const a = f.alerts[0]!;
  const e = a.event;
  const rows: Array<[string, string, string?]> = [
    ['Rule', a.ruleTitle, ruleUrl?.replaceAll('{ruleId}', encodeURIComponent(a.ruleId))],
    ['Level', a.ruleLevel],
    ['Host', `${e.hostname} (${e.hostId})`],
    ['User', e.userName ?? `uid ${e.uid}`],
    ['Command line', commandLine(e.argv) + (e.argvTruncated ? ' (truncated)' : '')],
    ['Image', e.image],
    ['Parent', e.parentCommandLine ?? e.parentImage ?? '-'],
    ['Time', isoFromNs(e.timeNs)],
  ];
  if (f.alerts.length > 1) {
    rows.push([
      'Folded',
      `${f.alerts.length} identical alerts (same rule and host), first seen ${isoFromNs(f.firstSeenNs)}, last seen ${isoFromNs(f.lastSeenNs)}`,
    ]);
  }
  if (e.containerId) rows.push(['Container', e.containerId]);
  if (a.replayRunId) rows.push(['Replay run', a.replayRunId]);
  if (a.ruleTags.length > 0) rows.push(['Tags', a.ruleTags.join(', ')]);
  // The Detection Rule License requires attribution of the rule's author.
  rows.push(['Rule author', `${a.ruleAuthor ?? 'unknown'} (Detection Rule License 1.1)`]);
  rows.push(['Alert id', a.alertId]);
  return rows;
}

/** The message for a fold or a digest: pure, tested by value. */
export function emailPayload(
  message: Message,
  opts: { from: string; to: string[]; subjectPrefix: string; ruleUrl?: string | undefined },
): EmailPayload {
  const text: string[] = [];
  const html: string[] = ['<!doctype html><html><body style="font-family:sans-serif">'];
  for (const f of message.folds) {
    const a = f.alerts[0]!;
    const rows = foldRows(f, opts.ruleUrl);
    text.push(rows.map(([k, v, link]) => `${k}: ${v}${link ? ` <${link}>` : ''}`).join('\n'));
    const tagLinks = a.ruleTags
      .map((t) => {
        const u = attackUrl(t);
        return u ? `<a href="${escapeHtml(u)}">${escapeHtml(t)}</a>` : escapeHtml(t);
      })
      .join(', ');
    html.push(`<h2>${escapeHtml(`[${a.ruleLevel.toUpperCase()}] ${a.ruleTitle}`)}</h2><table>`);
    for (const [k, v, link] of rows) {
      let cell = escapeHtml(v);
      if (link) cell = `<a href="${escapeHtml(link)}">${cell}</a>`;
      else if (k === 'Command line' || k === 'Parent') cell = `<code>${cell}</code>`;
      else if (k === 'Tags') cell = tagLinks;
      html.push(`<tr><th align="left" valign="top">${escapeHtml(k)}</th><td>${cell}</td></tr>`);
    }
    html.push('</table>');
  }
  html.push('</body></html>');
  const ids = message.folds.map((f) => f.alerts[0]!.alertId);
  return {
    from: opts.from,
    to: opts.to,
    subject: emailSubject(message, opts.subjectPrefix),
    text: `${text.join('\n\n----\n\n')}\n`,
    html: html.join('\n'),
    headers: { 'X-EDR-Alert-Id': ids.join(' ') },
  };
}

/**
 * SMTP replies: 4xx is "try later", 5xx is "never" (a rejected recipient stays rejected); no reply at all
 * (refused, reset, timed out) is retryable; bad credentials are not.
 */
export function smtpError(err: unknown): EdrError {
  if (err instanceof EdrError) return err;
  const e = err as { code?: string; responseCode?: number; message?: string };
  const msg = `smtp: ${e.message ?? String(err)}`;
  if (typeof e.responseCode === 'number') {
    if (e.responseCode >= 400 && e.responseCode < 500) {
      return new EdrError('EDR_SINK_UNAVAILABLE', msg, { retryable: true, cause: err });
    }
    if (e.responseCode >= 500) {
      const code = e.code === 'EAUTH' ? 'EDR_SINK_AUTH' : 'EDR_SINK_REJECTED';
      return new EdrError(code, msg, { cause: err, details: { responseCode: e.responseCode } });
    }
  }
  if (e.code === 'ECONNECTION' || e.code === 'ETIMEDOUT' || e.code === 'ESOCKET' || e.code === 'EDNS') {
    return new EdrError('EDR_SINK_UNREACHABLE', msg, { retryable: true, cause: err });
  }
  if (e.code === 'EAUTH') return new EdrError('EDR_SINK_AUTH', msg, { cause: err });
  if (e.code === 'EENVELOPE') return new EdrError('EDR_SINK_REJECTED', msg, { cause: err });
  return networkError(err, 'smtp');
}

export function create(config: EmailConfig, ctx: SinkContext): Sink {
  const transport = nodemailer.createTransport({
    host: config.host,
    port: config.port,
    secure: config.security === 'tls',
    requireTLS: config.security === 'starttls',
    ignoreTLS: config.security === 'none',
    tls: { rejectUnauthorized: config.tlsRejectUnauthorized },
    ...(config.auth ? { auth: { user: config.auth.user, pass: config.auth.pass.reveal() } } : {}),
    connectionTimeout: ctx.timeoutMs,
    greetingTimeout: ctx.timeoutMs,
    socketTimeout: ctx.timeoutMs,
  });
  const opts = {
    from: config.from,
    to: config.to,
    subjectPrefix: config.subjectPrefix,
    ruleUrl: config.ruleUrl,
  };
  return {
    async send(message) {
      let info: { accepted?: unknown[]; rejected?: unknown[] };
      try {
        info = await transport.sendMail(emailPayload(message, opts));
      } catch (err) {
        throw smtpError(err);
      }
      if ((info.rejected?.length ?? 0) > 0) {
        // Some recipients took it: delivered; the others are a config problem to fix, not a reason to resend.
        ctx.log.warn('some recipients were rejected', { rejected: info.rejected });
      }
    },
    async close() {
      transport.close();
    },
  };
}
