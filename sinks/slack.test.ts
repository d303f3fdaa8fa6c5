import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sampleAlert, sampleEvent } from '../test/fixtures/events.js';
import type { Fold } from './sink.js';
import { attackUrl, escapeMrkdwn, MAX_FOLDS_SHOWN, slackPayload } from './slack.js';

function fold(n: number): Fold {
  const a = sampleAlert();
  const alerts = Array.from({ length: n }, (_, i) =>
    sampleAlert({
      alertId: `a${i}`,
      event: sampleEvent({ timeNs: a.event.timeNs + BigInt(i) * 1_000_000_000n }),
    }),
  );
  return { key: 'k', alerts, firstSeenNs: alerts[0]!.event.timeNs, lastSeenNs: alerts[n - 1]!.event.timeNs };
}

describe('slack payload', () => {
  it('builds the Block Kit message for one alert', () => {
    assert.deepEqual(
      slackPayload({ folds: [fold(1)] }, { ruleUrl: 'https://r.example/{ruleId}', channel: '#soc' }),
      {
        text: '[HIGH] Download piped to shell on web-1',
        channel: '#soc',
        attachments: [
          {
            color: '#e01e5a',
            blocks: [
              { type: 'header', text: { type: 'plain_text', text: 'Download piped to shell', emoji: false } },
              {
                type: 'section',
                text: {
                  type: 'mrkdwn',
                  text: '*<https://r.example/00000000-0000-4000-8000-000000000001|Download piped to shell>*',
                },
                fields: [
                  { type: 'mrkdwn', text: '*Level*\nhigh' },
                  { type: 'mrkdwn', text: '*Host*\nweb-1' },
                  { type: 'mrkdwn', text: '*User*\nalice' },
                  { type: 'mrkdwn', text: '*Parent*\nbash' },
                ],
              },
              {
                type: 'section',
                text: {
                  type: 'mrkdwn',
                  text: '*Command line*\n```curl -fsSL https://example.org/install.sh```',
                },
              },
              {
                type: 'context',
                elements: [
                  {
                    type: 'mrkdwn',
                    text: '<https://attack.mitre.org/tactics/TA0002/|attack.execution> · <https://attack.mitre.org/techniques/T1059/004/|attack.t1059.004>',
                  },
                  { type: 'mrkdwn', text: 'Rule by EDR project (DRL 1.1)' },
                  { type: 'mrkdwn', text: 'alert a0 · 2026-11-18T11:06:40.123Z' },
                ],
              },
            ],
          },
        ],
      },
    );
  });

  it('says how many alerts a fold holds, and when it was first and last seen', () => {
    const p = slackPayload({ folds: [fold(3)] }) as {
      text: string;
      attachments: Array<{ blocks: unknown[] }>;
    };
    assert.equal(p.text, '[HIGH] Download piped to shell on web-1 (×3)');
    assert.deepEqual(p.attachments[0]!.blocks[3], {
      type: 'context',
      elements: [
        {
          type: 'mrkdwn',
          text: '*3* identical alerts (same rule and host) folded: first seen 2026-11-18T11:06:40.123Z, last seen 2026-11-18T11:06:42.123Z',
        },
      ],
    });
  });

  it('escapes mrkdwn and keeps code blocks closed', () => {
    assert.equal(escapeMrkdwn('a <b> & c'), 'a &lt;b&gt; &amp; c');
    const f = fold(1);
    f.alerts[0]!.event.argv = ['sh', '-c', 'echo ``` <x>'];
    const text = JSON.stringify(slackPayload({ folds: [f] }));
    assert.ok(text.includes("echo ''' &lt;x&gt;"), text);
  });

  it('links Sigma ATT&CK tags to MITRE', () => {
    const cases: Array<[string, string | undefined]> = [
      ['attack.t1059', 'https://attack.mitre.org/techniques/T1059/'],
      ['attack.t1059.004', 'https://attack.mitre.org/techniques/T1059/004/'],
      ['attack.execution', 'https://attack.mitre.org/tactics/TA0002/'],
      ['attack.command-and-control', 'https://attack.mitre.org/tactics/TA0011/'],
      ['attack.g0032', 'https://attack.mitre.org/groups/G0032/'],
      ['attack.s0002', 'https://attack.mitre.org/software/S0002/'],
      ['cve.2021-44228', undefined],
      ['attack.unknown', undefined],
    ];
    for (const [tag, url] of cases) assert.equal(attackUrl(tag), url, tag);
  });

  it('shows at most MAX_FOLDS_SHOWN folds of a digest in full, and counts the rest', () => {
    const folds = Array.from({ length: MAX_FOLDS_SHOWN + 2 }, () => fold(2));
    const p = slackPayload({ folds }) as { text: string; attachments: unknown[] };
    assert.equal(p.attachments.length, MAX_FOLDS_SHOWN);
    assert.match(p.text, /… and 4 more alert\(s\) in 2 more group\(s\)/);
  });
});
