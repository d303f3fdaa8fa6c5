import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { it } from 'node:test';
import { repoRoot } from '../infra/paths.js';

const edr = (...args: string[]) =>
  spawnSync(process.execPath, [path.join(repoRoot, 'dist', 'cli', 'edr.js'), 'acls', ...args], {
    encoding: 'utf8',
  });

it('prints the table with the principals and detector group it is given', () => {
  const r = edr(
    '--script',
    '--operator',
    'ops',
    '--detector-group',
    'fleet-a',
    '--bootstrap-server',
    'k1:9093',
  );
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^BOOTSTRAP="\$\{BOOTSTRAP:-k1:9093\}"$/m);
  assert.match(r.stdout, /^acl --add --allow-principal 'User:ops' --operation Create --cluster$/m);
  assert.match(
    r.stdout,
    /^acl --add --allow-principal 'User:edr-detector' --operation Write --transactional-id 'fleet-a-' --resource-pattern-type prefixed$/m,
  );
  assert.doesNotMatch(r.stdout, /User:edr-operator/);
});

it('refuses a name a shell or Kafka would misread, and a bad bootstrap server, with exit 2', () => {
  const bad = edr('--sink', "x'; touch /tmp/pwned; '");
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /principal sink/);
  assert.equal(bad.stdout, '');
  const server = edr('--bootstrap-server', 'k1:9093;id');
  assert.equal(server.status, 2);
  assert.match(server.stderr, /--bootstrap-server must be HOST:PORT/);
});
