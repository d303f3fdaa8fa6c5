import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EdrError } from '../infra/errors.js';
import { parseSinksConfig } from './config.js';

const kafka = { brokers: ['127.0.0.1:9092'] };

function problems(value: unknown): string {
  try {
    parseSinksConfig(value, 'sinks.yaml');
  } catch (err) {
    assert.ok(err instanceof EdrError && err.code === 'EDR_CONFIG_INVALID', String(err));
    return err.message;
  }
  assert.fail('expected the config to be refused');
}

describe('sinks config', () => {
  it('fills defaults: topics from the table, delivery policy, file rotation', () => {
    process.env['CFG_TEST_SLACK'] = 'https://hooks.slack.com/services/T/B/SECRET-PART';
    const c = parseSinksConfig({
      kafka,
      stateDir: '/var/lib/edr/sinks',
      sinks: {
        archive: { type: 'file', directory: '/var/log/edr' },
        'soc-slack': { type: 'slack', webhookUrl: { env: 'CFG_TEST_SLACK' } },
      },
      routes: [{ to: ['archive'] }, { to: ['soc-slack'], minLevel: 'high', source: 'live' }],
    });
    assert.deepEqual(c.topics, {
      alerts: 'edr.alerts.v1',
      undeliverable: 'edr.alerts.undeliverable.v1',
      deadLetter: 'edr.deadletter.v1',
    });
    const archive = c.sinks['archive']!;
    assert.equal(archive['file'], 'alerts.jsonl');
    assert.deepEqual(archive['rotate'], { maxBytes: 100 * 1024 * 1024, keep: 10 });
    // No attempt limit by default: a retryable failure never parks.
    assert.deepEqual(archive.retry, {
      initialBackoffMs: 1000,
      maxBackoffMs: 60_000,
      maxRetryAfterMs: 300_000,
    });
    assert.equal(archive.concurrency, 1);
    assert.equal(c.routes[0]!.source, 'any');
    // The webhook URL is a secret: it never prints.
    assert.ok(!JSON.stringify(c).includes('SECRET-PART'));
  });

  it('reports every problem at once, cross-references included', () => {
    process.env['CFG_TEST_BAD_URL'] = 'not a url SECRET-PART';
    delete process.env['CFG_TEST_MISSING'];
    const msg = problems({
      kafka,
      stateDir: '/s',
      typo: 1,
      sinks: {
        a: { type: 'file', directory: 'relative/dir', file: '../out.jsonl', colour: 'red' },
        b: { type: 'slack', webhookUrl: { env: 'CFG_TEST_BAD_URL' } },
        c: { type: 'slack', webhookUrl: { env: 'CFG_TEST_MISSING' } },
        d: { type: 'pager' },
        e: {
          type: 'email',
          host: 'smtp.example.org',
          from: 'edr@example.org',
          to: ['not-an-address'],
          auth: { user: 'u', pass: 'literal' },
        },
        unused: { type: 'file', directory: '/x' },
      },
      routes: [{ to: ['a', 'b', 'c', 'd', 'e', 'ghost'], titles: ['(unclosed'], minLevel: 'severe' }],
    });
    for (const expected of [
      /\(top level\): Unrecognized key: "typo"/,
      /sinks\.a\.directory: must be an absolute path/,
      /sinks\.a\.file: path outside its directory/,
      /sinks\.a: Unrecognized key: "colour"/,
      /sinks\.b\.webhookUrl: not an http\(s\) URL/,
      /sinks\.c\.webhookUrl: environment variable CFG_TEST_MISSING is not set/,
      /sinks\.d\.type: /,
      /sinks\.e\.to\[0\]: /,
      /sinks\.e\.auth\.pass: /,
      /sinks\.unused: sink is not the target of any route/,
      /routes\[0\]\.to\[5\]: no sink named 'ghost'/,
      /routes\[0\]\.titles\[0\]: not a valid regular expression/,
      /routes\[0\]\.minLevel: /,
    ]) {
      assert.match(msg, expected);
    }
    assert.ok(!msg.includes('SECRET-PART'), msg);
  });

  it('takes several instances of one type, each with its own policy', () => {
    const c = parseSinksConfig({
      kafka,
      stateDir: '/s',
      sinks: {
        one: { type: 'file', directory: '/a', fsync: 'never', concurrency: 2, fold: false },
        two: {
          type: 'file',
          directory: '/b',
          digest: { windowMs: 1000 },
          redact: { patterns: ['key=(\\w+)'] },
        },
      },
      routes: [{ to: ['one', 'two'], tags: ['attack.t1059'], hosts: ['web-*'] }],
    });
    assert.equal(c.sinks['one']!.fold, false);
    assert.equal(c.sinks['one']!.concurrency, 2);
    assert.deepEqual(c.sinks['two']!.digest, { windowMs: 1000 });
    assert.deepEqual(c.sinks['two']!.redact, { patterns: ['key=(\\w+)'] });
  });
});
