import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sampleAlert, sampleEvent } from '../test/fixtures/events.js';
import { emailPayload, emailSubject, smtpError } from './email.js';
import type { Fold } from './sink.js';

function fold(n: number, over: Parameters<typeof sampleAlert>[0] = {}): Fold {
  const alerts = Array.from({ length: n }, (_, i) =>
    sampleAlert({
      alertId: `a${i}`,
      event: sampleEvent({ timeNs: 1_795_000_000_000_000_000n + BigInt(i) * 1_000_000_000n }),
      ...over,
    }),
  );
  return { key: 'k', alerts, firstSeenNs: alerts[0]!.event.timeNs, lastSeenNs: alerts[n - 1]!.event.timeNs };
}

const opts = { from: 'edr@example.org', to: ['soc@example.org'], subjectPrefix: '[EDR]' };

describe('email payload', () => {
  it('puts level, rule title and host in the subject', () => {
    assert.equal(
      emailSubject({ folds: [fold(1)] }, '[EDR]'),
      '[EDR] [HIGH] Download piped to shell on web-1',
    );
    assert.equal(emailSubject({ folds: [fold(4)] }, ''), '[HIGH] Download piped to shell on web-1 (×4)');
    assert.equal(
      emailSubject({ folds: [fold(2), fold(1, { ruleLevel: 'critical', ruleTitle: 'T2' })] }, '[EDR]'),
      '[EDR] [CRITICAL] digest: 3 alerts, Download piped to shell on web-1 and 1 more',
    );
    assert.equal(
      emailSubject({ folds: [fold(1, { ruleTitle: 'a\r\nBcc: x@y' })] }, ''),
      '[HIGH] a Bcc: x@y on web-1',
    );
  });

  it('builds the text part by value', () => {
    const p = emailPayload({ folds: [fold(2)] }, { ...opts, ruleUrl: 'https://r.example/{ruleId}' });
    assert.equal(
      p.text,
      [
        'Rule: Download piped to shell <https://r.example/00000000-0000-4000-8000-000000000001>',
        'Level: high',
        'Host: web-1 (c0ffee0000000000000000000000beef)',
        'User: alice',
        'Command line: curl -fsSL https://example.org/install.sh',
        'Image: /usr/bin/curl',
        'Parent: bash',
        'Time: 2026-11-18T11:06:40.000Z',
        'Folded: 2 identical alerts (same rule and host), first seen 2026-11-18T11:06:40.000Z, last seen 2026-11-18T11:06:41.000Z',
        'Tags: attack.execution, attack.t1059.004',
        'Rule author: EDR project (Detection Rule License 1.1)',
        'Alert id: a0',
        '',
      ].join('\n'),
    );
    assert.deepEqual(p.headers, { 'X-EDR-Alert-Id': 'a0' });
    assert.deepEqual([p.from, p.to], [opts.from, opts.to]);
  });

  it('escapes the HTML part and links tags to MITRE', () => {
    const p = emailPayload({ folds: [fold(1, { ruleTitle: '<script>x</script>' })] }, opts);
    assert.ok(!p.html.includes('<script>'));
    assert.ok(p.html.includes('&lt;script&gt;'));
    assert.ok(
      p.html.includes('<a href="https://attack.mitre.org/techniques/T1059/004/">attack.t1059.004</a>'),
    );
    assert.ok(p.html.includes('<code>curl -fsSL https://example.org/install.sh</code>'));
  });

  it('classifies SMTP failures', () => {
    const cases: Array<[unknown, string, boolean]> = [
      [{ code: 'ECONNECTION', message: 'connect ECONNREFUSED' }, 'EDR_SINK_UNREACHABLE', true],
      [{ code: 'ETIMEDOUT', message: 'timeout' }, 'EDR_SINK_UNREACHABLE', true],
      [{ code: 'EENVELOPE', responseCode: 550, message: 'no such user' }, 'EDR_SINK_REJECTED', false],
      [{ code: 'EENVELOPE', responseCode: 452, message: 'mailbox full' }, 'EDR_SINK_UNAVAILABLE', true],
      [{ code: 'EMESSAGE', responseCode: 421, message: 'try later' }, 'EDR_SINK_UNAVAILABLE', true],
      [{ code: 'EAUTH', responseCode: 535, message: 'bad credentials' }, 'EDR_SINK_AUTH', false],
      [new Error('bug'), 'EDR_SINK_FAILED', false],
    ];
    for (const [err, code, retryable] of cases) {
      const e = smtpError(Object.assign(new Error(), err));
      assert.deepEqual([e.code, e.retryable], [code, retryable], JSON.stringify(err));
    }
  });
});
