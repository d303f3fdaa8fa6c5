import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sampleAlert, sampleEvent } from '../test/fixtures/events.js';
import type { Fold } from './sink.js';
import { attackUrl, clip, escapeMrkdwn, MAX_FOLDS_SHOWN, SLACK_LIMITS, slackPayload } from './slack.js';

interface TextObject {
  type: string;
  text: string;
  verbatim?: boolean;
}
interface Block {
  type: string;
  text: TextObject;
  fields?: TextObject[];
  elements?: TextObject[];
}

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
                  verbatim: true,
                },
                fields: [
                  { type: 'mrkdwn', text: '*Level*\nhigh', verbatim: true },
                  { type: 'mrkdwn', text: '*Host*\nweb-1', verbatim: true },
                  { type: 'mrkdwn', text: '*User*\nalice', verbatim: true },
                  { type: 'mrkdwn', text: '*Parent*\nbash', verbatim: true },
                ],
              },
              {
                type: 'section',
                text: {
                  type: 'mrkdwn',
                  text: '*Command line*\n```curl -fsSL https://example.org/install.sh```',
                  verbatim: true,
                },
              },
              {
                type: 'context',
                elements: [
                  {
                    type: 'mrkdwn',
                    text: '<https://attack.mitre.org/tactics/TA0002/|attack.execution> · <https://attack.mitre.org/techniques/T1059/004/|attack.t1059.004>',
                    verbatim: true,
                  },
                  { type: 'mrkdwn', text: 'Rule by EDR project (DRL 1.1)', verbatim: true },
                  { type: 'mrkdwn', text: 'alert a0 · 2026-11-18T11:06:40.123Z', verbatim: true },
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
          verbatim: true,
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

  it('escapes Slack markup in the text and in every field that carries alert data: nobody is pinged, nothing linked', () => {
    const f = fold(1);
    const a = f.alerts[0]!;
    a.ruleTitle = '<http://evil|click>';
    a.ruleTags = ['<!everyone>', 'attack.t1059'];
    a.ruleAuthor = '<!subteam^S1>';
    a.alertId = '<#C1>';
    a.replayRunId = '<!date^1^x|y>';
    a.ruleLevel = '<!here>';
    a.event.hostname = '<!channel>';
    a.event.userName = '<@U123>';
    a.event.parentCommandLine = 'sh & <!here>';
    a.event.containerId = '<mailto:x@evil|x>';
    a.event.argv = ['curl', '<http://evil|click>'];
    const p = slackPayload({ folds: [f] }, { ruleUrl: 'https://r.example/{ruleId}' }) as {
      text: string;
      attachments: Array<{ blocks: Block[] }>;
    };
    assert.equal(p.text, '[&lt;!HERE&gt;] &lt;http://evil|click&gt; on &lt;!channel&gt;');
    const [header, main, command, context] = p.attachments[0]!.blocks;
    // plain_text renders no markup: clipped, shown as it is.
    assert.equal(header!.text.text, '<http://evil|click>');
    assert.equal(
      main!.text.text,
      '*<https://r.example/00000000-0000-4000-8000-000000000001|&lt;http://evil|click&gt;>*',
    );
    assert.deepEqual(
      main!.fields!.map((x) => x.text),
      [
        '*Level*\n&lt;!here&gt;',
        '*Host*\n&lt;!channel&gt;',
        '*User*\n&lt;@U123&gt;',
        '*Parent*\nsh &amp; &lt;!here&gt;',
        '*Container*\n&lt;mailto:x@evil|x&gt;',
        '*Replay run*\n&lt;!date^1^x|y&gt;',
      ],
    );
    assert.equal(command!.text.text, '*Command line*\n```curl &lt;http://evil|click&gt;```');
    assert.deepEqual(
      context!.elements!.map((x) => x.text),
      [
        '&lt;!everyone&gt; · <https://attack.mitre.org/techniques/T1059/|attack.t1059>',
        'Rule by &lt;!subteam^S1&gt; (DRL 1.1)',
        'alert &lt;#C1&gt; · 2026-11-18T11:06:40.123Z',
      ],
    );
    // Every mrkdwn object is verbatim: Slack links no bare mention or channel name in it either.
    for (const b of p.attachments[0]!.blocks) {
      for (const t of [b.text, ...(b.fields ?? []), ...(b.elements ?? [])].filter(
        (x) => x?.type === 'mrkdwn',
      ))
        assert.equal(t.verbatim, true, JSON.stringify(t));
    }
  });

  it('clips to Slack limits with an ellipsis, never inside an escape or a surrogate pair', () => {
    assert.equal(clip('abcdef', 6), 'abcdef');
    assert.equal(clip('abcdefg', 6), 'abcde…');
    assert.equal(clip('abc&amp;def', 6), 'abc…');
    assert.equal(clip('abcd&lt;', 7), 'abcd…');
    assert.equal(clip('ab&lt;cd', 7), 'ab&lt;…');
    assert.equal(clip('a😀b', 3), 'a…');
    const f = fold(1);
    const a = f.alerts[0]!;
    a.ruleTitle = '😀'.repeat(200);
    a.event.hostname = '<'.repeat(10_000);
    a.event.argv = ['&'.repeat(100_000)];
    a.ruleTags = Array.from({ length: 1000 }, (_, i) => `attack.t${1000 + i}`);
    a.ruleAuthor = 'x'.repeat(5000);
    const p = slackPayload({ folds: [f] }) as { attachments: Array<{ blocks: Block[] }> };
    const [header, main, command, context] = p.attachments[0]!.blocks;
    assert.equal(header!.text.text, `${'😀'.repeat(74)}…`);
    assert.equal(main!.fields![1]!.text, `*Host*\n${'&lt;'.repeat(498)}…`);
    assert.equal(main!.fields![1]!.text.length, SLACK_LIMITS.fieldText);
    assert.ok(main!.text.text.length <= SLACK_LIMITS.sectionText);
    assert.ok(command!.text.text.length <= SLACK_LIMITS.sectionText, String(command!.text.text.length));
    assert.match(command!.text.text, /^\*Command line\*\n```(&amp;)+…```$/);
    const [tags, author] = context!.elements!.map((x) => x.text) as [string, string];
    assert.ok(tags.length <= SLACK_LIMITS.contextText);
    // Whole links only, then the ellipsis.
    assert.match(
      tags,
      /^(<https:\/\/attack\.mitre\.org\/techniques\/T\d{4}\/\|attack\.t\d{4}> · )*<[^<>]+> …$/,
    );
    assert.ok(author.length <= SLACK_LIMITS.contextText);
  });

  it('keeps a digest within 50 blocks and its text within 4,000 characters', () => {
    const folds = Array.from({ length: 60 }, (_, i) => {
      const f = fold(2);
      for (const a of f.alerts) a.ruleTitle = `${i} ${'&'.repeat(300)}`;
      return f;
    });
    const p = slackPayload({ folds }) as { text: string; attachments: Array<{ blocks: unknown[] }> };
    const blocks = p.attachments.reduce((n, x) => n + x.blocks.length, 0);
    assert.ok(blocks <= SLACK_LIMITS.blocks, `${blocks} blocks`);
    assert.ok(p.text.length <= SLACK_LIMITS.messageText, `${p.text.length} characters`);
    assert.ok(p.text.endsWith('…'));
    assert.doesNotMatch(p.text, /&[a-z]{0,3}…$/);
  });
});
