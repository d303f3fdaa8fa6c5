import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { sampleAlert, sampleEvent } from '../test/fixtures/events.js';
import { createRedactor } from './redact.js';

describe('redaction', () => {
  const r = createRedactor();
  const cases: Array<[string, string[], string[]]> = [
    ['--password=value', ['app', '--password=hunter2'], ['app', '--password=***']],
    ['--password value', ['app', '--password', 'hunter2', '-v'], ['app', '--password', '***', '-v']],
    ['--db-pass value', ['app', '--db-pass', 'x'], ['app', '--db-pass', '***']],
    [
      '--api-key=, --token',
      ['app', '--api-key=k', '--token', 't'],
      ['app', '--api-key=***', '--token', '***'],
    ],
    [
      'environment assignment',
      ['env', 'AWS_SECRET_ACCESS_KEY=abc', 'cmd'],
      ['env', 'AWS_SECRET_ACCESS_KEY=***', 'cmd'],
    ],
    [
      'user:pass@ in a URL',
      ['git', 'clone', 'https://bob:pw@git.example/r'],
      ['git', 'clone', 'https://bob:***@git.example/r'],
    ],
    ['user@ without a password is kept', ['ssh', 'ssh://bob@host'], ['ssh', 'ssh://bob@host']],
    [
      'Authorization header',
      ['curl', '-H', 'Authorization: Bearer abc.def'],
      ['curl', '-H', 'Authorization: Bearer ***'],
    ],
    ['mysql -pPASSWORD', ['/usr/bin/mysql', '-uroot', '-psecret'], ['/usr/bin/mysql', '-uroot', '-p***']],
    ['-p elsewhere is a port', ['ssh', '-p2222', 'host'], ['ssh', '-p2222', 'host']],
    ['a trailing --password is kept', ['app', '--password'], ['app', '--password']],
    ['nothing secret', ['ls', '-la', '/tmp'], ['ls', '-la', '/tmp']],
  ];
  for (const [name, input, want] of cases) it(name, () => assert.deepEqual(r.argv(input), want));

  it('applies configured patterns: a capture group masks only the group', () => {
    const c = createRedactor(['sk_live_\\w+', 'pin=(\\d+)']);
    assert.deepEqual(c.argv(['pay', 'sk_live_abc123', 'pin=1234']), ['pay', '***', 'pin=***']);
  });

  it('redacts the command line, the parent command line and matched values of an alert, nothing else', () => {
    const a = sampleAlert({
      event: sampleEvent({
        argv: ['curl', 'https://u:p@h/'],
        parentCommandLine: 'bash -c mysql --password=pw',
      }),
      matchedFields: [{ field: 'CommandLine', value: 'curl https://u:p@h/' }],
    });
    const out = createRedactor().alert(a);
    assert.deepEqual(out.event.argv, ['curl', 'https://u:***@h/']);
    assert.equal(out.event.parentCommandLine, 'bash -c mysql --password=***');
    assert.equal(out.matchedFields[0]!.value, 'curl https://u:***@h/');
    assert.deepEqual({ ...out, event: a.event, matchedFields: a.matchedFields }, a);
    // The original is untouched (the file sink and Kafka keep the full event).
    assert.deepEqual(a.event.argv, ['curl', 'https://u:p@h/']);
  });
});
