import assert from 'node:assert/strict';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import { parsePasswd, UserNames } from './users.js';

const dir = mkdtempSync(path.join(tmpdir(), 'edr-users-'));
after(() => rmSync(dir, { recursive: true, force: true }));

it('parses passwd lines, skipping comments, malformed lines and later duplicates of a uid', () => {
  const users = parsePasswd(
    [
      'root:x:0:0:root:/root:/bin/bash',
      '# comment',
      '',
      'broken line',
      'nouid:x::0::/:/bin/sh',
      'alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash',
      'alias:x:1000:1000::/home/alias:/bin/sh',
      'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin',
    ].join('\n'),
  );
  assert.deepEqual(
    [...users],
    [
      [0, 'root'],
      [1000, 'alice'],
      [65534, 'nobody'],
    ],
  );
});

it('re-reads the file when it changes (also when replaced by rename), at most once per interval', () => {
  const file = path.join(dir, 'passwd');
  writeFileSync(file, 'root:x:0:0::/root:/bin/sh\n');
  let now = 0;
  const users = new UserNames(file, 1000, () => now);
  assert.equal(users.name(0), 'root');
  assert.equal(users.name(1001), null);

  const tmp = path.join(dir, 'passwd.new');
  writeFileSync(tmp, 'root:x:0:0::/root:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n');
  renameSync(tmp, file);
  now = 500;
  assert.equal(users.name(1001), null, 'not checked again within the interval');
  now = 1500;
  assert.equal(users.name(1001), 'bob');
  assert.equal(users.reloads, 2);
  now = 3000;
  assert.equal(users.name(1001), 'bob');
  assert.equal(users.reloads, 2, 'unchanged file is not re-read');
});

it('knows no one when the file is missing', () => {
  const users = new UserNames(path.join(dir, 'missing'), 1000);
  assert.equal(users.name(0), null);
});
