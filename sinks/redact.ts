/**
 * Secrets in command lines, hidden before an alert leaves for email or Slack (inboxes and channels are read by
 * more people than the SOC). The file sink and Kafka keep the full event: analysts need it.
 */
import type { Alert } from '../schemas/types.js';

export const MASK = '***';

/** Option names whose value is a secret: --password, --db-pass, --token, --api-key, --client_secret, ... */
const SECRET_NAME =
  /^-{1,2}[\w.-]*(pass(word|wd|phrase)?|pwd|token|secret|api[-_]?key|access[-_]?key|auth|credentials?)$/i;
/** `--password=VALUE`, `token=VALUE` (also environment assignments such as `AWS_SECRET_ACCESS_KEY=...`). */
const SECRET_ASSIGN =
  /^(-{0,2}[\w.-]*(pass(word|wd|phrase)?|pwd|token|secret|api[-_]?key|access[-_]?key|auth|credentials?))=(.+)$/i;
/** `scheme://user:password@host` */
const URL_CREDENTIALS = /([a-z][a-z0-9+.-]*:\/\/[^\s:/@]+):([^\s@/]+)@/gi;
/** `Authorization: Bearer x`, `Basic x`, `token x` in headers passed on the command line. */
const AUTH_HEADER = /\b(authorization:\s*(?:bearer|basic|token)\s+)(\S+)/gi;
/** mysql/mariadb take the password glued to -p. */
const MYSQL = /^(mysql|mariadb|mysqldump|mysqladmin)$/;

export interface Redactor {
  argv(argv: readonly string[]): string[];
  text(s: string): string;
  alert(a: Alert): Alert;
}

/**
 * `patterns` are extra regular expressions (from config): with a capture group, the group is masked;
 * without, the whole match is.
 */
export function createRedactor(patterns: readonly string[] = []): Redactor {
  const extra = patterns.map((p) => new RegExp(p, 'g'));
  const applyExtra = (s: string): string => {
    let out = s;
    for (const re of extra) {
      re.lastIndex = 0;
      out = out.replace(re, (match: string, ...rest: unknown[]) => {
        const group = rest[0];
        if (typeof group !== 'string' || group === '') return MASK;
        const at = match.indexOf(group);
        return match.slice(0, at) + MASK + match.slice(at + group.length);
      });
    }
    return out;
  };
  const inline = (s: string): string =>
    applyExtra(s.replace(URL_CREDENTIALS, `$1:${MASK}@`).replace(AUTH_HEADER, `$1${MASK}`));

  const argv = (args: readonly string[]): string[] => {
    const out: string[] = [];
    const prog = (args[0] ?? '').split('/').pop() ?? '';
    for (let i = 0; i < args.length; i++) {
      const a = args[i]!;
      const assign = SECRET_ASSIGN.exec(a);
      if (assign) {
        out.push(`${assign[1]}=${MASK}`);
        continue;
      }
      if (SECRET_NAME.test(a) && i + 1 < args.length) {
        out.push(a, MASK);
        i++;
        continue;
      }
      if (MYSQL.test(prog) && /^-p.+/.test(a)) {
        out.push(`-p${MASK}`);
        continue;
      }
      out.push(inline(a));
    }
    return out;
  };
  // Free text (a parent's command line) has lost its argument boundaries: split on spaces, the usual rendering.
  const text = (s: string): string => applyExtra(argv(s.split(' ')).join(' '));

  return {
    argv,
    text,
    alert(a) {
      const e = a.event;
      return {
        ...a,
        event: {
          ...e,
          argv: argv(e.argv),
          parentCommandLine: e.parentCommandLine === null ? null : text(e.parentCommandLine),
        },
        matchedFields: a.matchedFields.map((m) => ({ field: m.field, value: text(m.value) })),
      };
    },
  };
}
