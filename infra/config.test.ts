import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { it } from 'node:test';
import { inspect } from 'node:util';
import { z } from 'zod';
import { loadConfig, parseConfig, parseYaml, Secret, secret } from './config.js';
import { EdrError } from './errors.js';

const schema = z.strictObject({
  brokers: z.array(z.string()).min(1),
  timeoutMs: z.number().int().positive().default(1000),
  password: secret().optional(),
});

it('reports every problem at once, unknown keys included', () => {
  assert.throws(
    () => parseConfig(schema, { brokers: [], timeoutMs: -1, typo: true }, 'x.yaml'),
    (err: unknown) =>
      err instanceof EdrError &&
      err.code === 'EDR_CONFIG_INVALID' &&
      /3 problem/.test(err.message) &&
      /brokers/.test(err.message) &&
      /timeoutMs/.test(err.message) &&
      /typo/.test(err.message),
  );
});

it('fills defaults and reads secrets from the environment and files, never printing them', () => {
  process.env['EDR_TEST_SECRET'] = 'hunter2';
  const a = parseConfig(schema, { brokers: ['b:9092'], password: { env: 'EDR_TEST_SECRET' } });
  assert.equal(a.timeoutMs, 1000);
  assert.ok(a.password instanceof Secret);
  assert.equal(a.password.reveal(), 'hunter2');
  assert.ok(!JSON.stringify(a).includes('hunter2'));
  assert.ok(!inspect(a).includes('hunter2'));
  assert.ok(!`${a.password}`.includes('hunter2'));
  const dir = mkdtempSync(path.join(tmpdir(), 'edr-config-'));
  writeFileSync(path.join(dir, 'pw'), 's3cret\n');
  const b = parseConfig(schema, { brokers: ['b:9092'], password: { file: path.join(dir, 'pw') } });
  assert.equal(b.password?.reveal(), 's3cret');
});

it('names a missing secret without showing other values, and refuses literal secrets', () => {
  delete process.env['EDR_TEST_MISSING'];
  assert.throws(
    () => parseConfig(schema, { brokers: ['b:9092'], password: { env: 'EDR_TEST_MISSING' } }),
    /password: environment variable EDR_TEST_MISSING is not set/,
  );
  assert.throws(() => parseConfig(schema, { brokers: ['b:9092'], password: 'literal' }), /password/);
});

it('loads YAML files and reports unreadable or malformed ones clearly', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'edr-config-'));
  const good = path.join(dir, 'good.yaml');
  writeFileSync(good, 'brokers:\n  - 127.0.0.1:9092\n');
  assert.deepEqual(loadConfig(schema, good), { brokers: ['127.0.0.1:9092'], timeoutMs: 1000 });
  const bad = path.join(dir, 'bad.yaml');
  writeFileSync(bad, 'brokers: [unclosed\n');
  assert.throws(
    () => loadConfig(schema, bad),
    (err: unknown) => err instanceof EdrError && /not valid YAML/.test(err.message),
  );
  assert.throws(
    () => loadConfig(schema, path.join(dir, 'none.yaml')),
    (err: unknown) => err instanceof EdrError && err.code === 'EDR_CONFIG_UNREADABLE',
  );
});

it('resolves YAML 1.1 merge keys, the merging map winning', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'edr-config-'));
  const file = path.join(dir, 'merge.yaml');
  writeFileSync(
    file,
    [
      'defaults: &defaults',
      '  brokers: [a:9092]',
      '  timeoutMs: 500',
      'config:',
      '  <<: *defaults',
      '  timeoutMs: 2000',
      '',
    ].join('\n'),
  );
  const merged = z.strictObject({ defaults: z.unknown(), config: schema });
  assert.deepEqual(loadConfig(merged, file).config, { brokers: ['a:9092'], timeoutMs: 2000 });
});

it('reads YAML 1.2 booleans, grouped integers; refuses duplicate keys and unknown tags', () => {
  assert.deepEqual(parseYaml('a: yes\nb: on\nc: true\nd: 30_000\ne: "30_000"\nf: 010\n'), {
    a: 'yes',
    b: 'on',
    c: true,
    d: 30000,
    e: '30_000',
    f: 10,
  });
  assert.equal(parseYaml(''), null);
  assert.throws(() => parseYaml('a: 1\na: 2\n'), /unique/);
  assert.throws(() => parseYaml('a: !secret x\n'), /Unresolved tag/);
  assert.throws(() => parseYaml('a: 1\n---\na: 2\n'), /multiple documents/);
});
