import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { parseConfig } from '../infra/config.js';
import { EdrError } from '../infra/errors.js';
import { repoRoot } from '../infra/paths.js';
import type { InRecord } from '../infra/transport.js';
import { projectCodec } from '../schemas/codec.js';
import { detectorConfigSchema } from './config.js';
import {
  generateKeyFiles,
  keyIdOf,
  readPublicKey,
  readSigningKey,
  ruleHeaders,
  type SigningKey,
  signRecord,
  trustedKeys,
  verifyRecord,
} from './rule-signing.js';
import { RuleGate, refusalReport } from './rules-topic.js';

const dir = mkdtempSync(path.join(tmpdir(), 'edr-signing-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function newKey(): SigningKey & { pub: SigningKey } {
  const pair = generateKeyPairSync('ed25519');
  const id = keyIdOf(pair.publicKey);
  return { id, key: pair.privateKey, pub: { id, key: pair.publicKey } };
}

const TOPIC = 'edr.rules.v1';
const YAML = Buffer.from('title: t\nid: r1\n');
const alice = newKey();
const bob = newKey();
const trusted = trustedKeys([alice.pub, bob.pub]);

let offset = 0;
function record(
  key: string | null,
  value: Buffer | null,
  headers: Record<string, string | Buffer> = {},
): InRecord {
  return {
    topic: TOPIC,
    partition: 0,
    offset: offset++,
    key: key === null ? null : Buffer.from(key),
    value,
    headers: Object.fromEntries(Object.entries(headers).map(([k, v]) => [k, Buffer.from(v)])),
    timestampMs: 0,
  };
}

function signed(
  o: { key?: string; version?: bigint; op?: 'put' | 'delete'; value?: Buffer | null; by?: SigningKey } = {},
): InRecord {
  const value = o.value === undefined ? YAML : o.value;
  const headers = signRecord(o.by ?? alice, {
    topic: TOPIC,
    key: Buffer.from(o.key ?? 'r1'),
    version: o.version ?? 10n,
    op: o.op ?? 'put',
    value: value ?? Buffer.alloc(0),
  });
  return record(o.key ?? 'r1', value, headers);
}

describe('the envelope', () => {
  it('verifies what was signed, by value', () => {
    const v = verifyRecord(signed(), TOPIC, trusted);
    assert.deepEqual(v, { ok: true, key: 'r1', version: 10n, op: 'put', keyId: alice.id });
    const d = verifyRecord(signed({ op: 'delete', value: Buffer.alloc(0), version: 11n }), TOPIC, trusted);
    assert.deepEqual(d, { ok: true, key: 'r1', version: 11n, op: 'delete', keyId: alice.id });
    assert.equal(verifyRecord(signed({ by: bob }), TOPIC, trusted).ok, true, 'either trusted key');
  });

  it('refuses a record whose topic, key, version, operation, key id, value or signature changed', () => {
    const good = signed();
    const reason = (r: InRecord, topic = TOPIC) => {
      const v = verifyRecord(r, topic, trusted);
      return v.ok ? 'accepted' : v.reason;
    };
    const edit = (h: Partial<Record<string, string>>, change: Partial<InRecord> = {}): InRecord => ({
      ...good,
      ...change,
      headers: {
        ...good.headers,
        ...Object.fromEntries(Object.entries(h).map(([k, v]) => [k, Buffer.from(v!)])),
      },
    });
    assert.equal(reason(good), 'accepted');
    assert.equal(reason(good, 'edr.rules.staging'), 'bad-signature', 'moved to another topic');
    assert.equal(reason(edit({}, { key: Buffer.from('r2') })), 'bad-signature', 'another key');
    assert.equal(reason(edit({ [ruleHeaders.version]: '11' })), 'bad-signature', 'another version');
    assert.equal(
      reason(edit({ [ruleHeaders.op]: 'delete' }, { value: Buffer.alloc(0) })),
      'bad-signature',
      'turned into a deletion',
    );
    assert.equal(reason(edit({ [ruleHeaders.keyId]: bob.id })), 'bad-signature', 'claims the other key');
    assert.equal(reason(edit({ [ruleHeaders.keyId]: '0123456789abcdef' })), 'unknown-key');
    const altered = Buffer.from(YAML);
    altered[0] = 'T'.charCodeAt(0);
    assert.equal(reason(edit({}, { value: altered })), 'bad-signature', 'YAML altered');
    const sig = Buffer.from(good.headers[ruleHeaders.signature]!.toString(), 'base64');
    sig[10]! ^= 1;
    assert.equal(reason(edit({ [ruleHeaders.signature]: sig.toString('base64') })), 'bad-signature');
    // Signed by a key nobody trusts.
    assert.equal(reason(signed({ by: newKey() })), 'unknown-key');
  });

  it('names unsigned records, bare tombstones and malformed envelopes', () => {
    const reason = (r: InRecord) => {
      const v = verifyRecord(r, TOPIC, trusted);
      return v.ok ? 'accepted' : v.reason;
    };
    assert.equal(reason(record('r1', YAML)), 'unsigned');
    assert.equal(reason(record('r1', null)), 'bare-tombstone');
    const h = signed().headers;
    const without = (name: string) =>
      Object.fromEntries(Object.entries(h).filter(([k]) => k !== name)) as Record<string, Buffer>;
    for (const name of Object.values(ruleHeaders))
      assert.equal(reason(record('r1', YAML, without(name))), 'malformed', `without ${name}`);
    assert.equal(reason(record('r1', YAML, { ...h, [ruleHeaders.version]: '0' })), 'malformed');
    assert.equal(
      reason(record('r1', YAML, { ...h, [ruleHeaders.version]: '9223372036854775808' })),
      'malformed',
    );
    assert.equal(
      reason(record('r1', YAML, { ...h, [ruleHeaders.version]: 'x'.repeat(1 << 20) })),
      'malformed',
    );
    assert.equal(reason(record('r1', YAML, { ...h, [ruleHeaders.op]: 'upsert' })), 'malformed');
    assert.equal(reason(record(null, YAML, h)), 'malformed', 'no key');
    assert.equal(reason(record('r1', null, h)), 'malformed', 'a put without a value');
  });
});

describe('the gate', () => {
  it('accepts rising versions, refuses an older or equal one, keeps deletions against resurrection', () => {
    const gate = new RuleGate(TOPIC, trusted);
    const v1 = signed({ version: 100n, value: Buffer.from('title: v1\n') });
    const v2 = signed({ version: 200n, value: Buffer.from('title: v2\n'), by: bob });
    let r = gate.admit([v1, v2]);
    assert.deepEqual(
      r.accepted.map((a) => [a.value, a.version, a.keyId]),
      [
        ['title: v1\n', 100n, alice.id],
        ['title: v2\n', 200n, bob.id],
      ],
    );
    // The old record again (a new offset): stale; so is one with the same version.
    const replayed = { ...v1, offset: offset++ };
    const same = signed({ version: 200n, value: Buffer.from('title: other\n') });
    r = gate.admit([replayed, same]);
    assert.deepEqual(r.accepted, []);
    assert.deepEqual(
      r.refused.map((f) => [f.reason, f.version, f.acceptedVersion]),
      [
        ['stale-version', 100n, 200n],
        ['stale-version', 200n, 200n],
      ],
    );
    assert.equal(gate.state.get('r1')?.value, 'title: v2\n');
    // A signed deletion, then the old put replayed: it stays deleted.
    r = gate.admit([signed({ version: 300n, op: 'delete', value: Buffer.alloc(0) })]);
    assert.deepEqual(
      r.accepted.map((a) => [a.key, a.value]),
      [['r1', null]],
    );
    r = gate.admit([{ ...v2, offset: offset++ }]);
    assert.equal(r.refused[0]?.reason, 'stale-version');
    assert.equal(gate.state.get('r1')?.value, null);
  });

  it('skips records it has already handled (a batch delivered again)', () => {
    const gate = new RuleGate(TOPIC, trusted);
    const batch = [signed({ version: 5n }), record('r2', YAML)];
    const first = gate.admit(batch);
    assert.equal(first.accepted.length, 1);
    assert.equal(first.refused.length, 1);
    const again = gate.admit(batch);
    assert.deepEqual(again, { accepted: [], refused: [] });
  });

  it('reports a refusal with the hash of the refused bytes, not the bytes', () => {
    const bytes = Buffer.from('title: injected\n'.repeat(1000));
    const [f] = new RuleGate(TOPIC, trusted).admit([record('x'.repeat(10_000), bytes)]).refused;
    const out = refusalReport(projectCodec(), { detectorId: 'd1', auditTopic: 'audit' }, f!);
    assert.equal(out.topic, 'audit');
    assert.equal(out.key, 'd1');
    const r = projectCodec().decodeAs('dev.edr.v1.RuleRefused', out.value!);
    assert.equal(r.reason, 'unsigned');
    assert.equal(r.ruleId?.length, 256);
    assert.equal(r.valueBytes, BigInt(bytes.length));
    assert.match(r.valueSha256 ?? '', /^[0-9a-f]{64}$/);
    assert.ok(out.value!.length < 1000, 'the refused bytes are not copied');
  });
});

describe('key files', () => {
  it('keygen writes a 0600 private key and a public key, and never overwrites either', () => {
    const out = path.join(dir, 'keys');
    const k = generateKeyFiles(out);
    assert.equal(statSync(k.privateKey).mode & 0o777, 0o600);
    assert.equal(statSync(k.publicKey).mode & 0o777, 0o644);
    assert.equal(readSigningKey(k.privateKey).id, k.keyId);
    assert.equal(readPublicKey(k.publicKey).id, k.keyId);
    const before = readFileSync(k.privateKey, 'utf8');
    assert.throws(() => generateKeyFiles(out), { code: 'EDR_RULES_KEY_EXISTS' });
    rmSync(k.publicKey);
    assert.throws(
      () => generateKeyFiles(out),
      { code: 'EDR_RULES_KEY_EXISTS' },
      'the private key alone exists',
    );
    assert.equal(readFileSync(k.privateKey, 'utf8'), before, 'left as it was');
  });

  it('`edr rules keygen` prints paths and the key id, never the private key', () => {
    const out = path.join(dir, 'cli-keys');
    const cli = path.join(repoRoot, 'dist', 'cli', 'edr.js');
    const r = spawnSync(process.execPath, [cli, 'rules', 'keygen', '--out', out], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const pem = readFileSync(path.join(out, 'rules-signing.key'), 'utf8');
    const body = pem.split('\n').filter((l) => l !== '' && !l.startsWith('-----'));
    assert.ok(body.length > 0);
    for (const text of [r.stdout, r.stderr]) {
      assert.ok(!text.includes('PRIVATE KEY'));
      for (const line of body) assert.ok(!text.includes(line), 'private key material printed');
    }
    assert.match(r.stdout, new RegExp(`key id\\s+${readSigningKey(path.join(out, 'rules-signing.key')).id}`));
    const again = spawnSync(process.execPath, [cli, 'rules', 'keygen', '--out', out], { encoding: 'utf8' });
    assert.equal(again.status, 1);
    assert.match(again.stderr, /refusing to overwrite a key \[EDR_RULES_KEY_EXISTS\]/);
    assert.equal(readFileSync(path.join(out, 'rules-signing.key'), 'utf8'), pem);
  });

  it('`edr rules push` refuses to run without a usable signing key, and `list` without a public key', () => {
    const cli = path.join(repoRoot, 'dist', 'cli', 'edr.js');
    const run = (args: string[]) =>
      spawnSync(process.execPath, [cli, 'rules', ...args], { encoding: 'utf8' });
    // Nothing listens on port 1: each refusal comes before any connection.
    const target = ['--brokers', '127.0.0.1:1', '--topic', 'nowhere'];
    const unsigned = run(['push', dir, ...target]);
    assert.equal(unsigned.status, 2);
    assert.match(unsigned.stderr, /--signing-key FILE is required: detectors accept only signed rules/);
    const notKey = path.join(dir, 'plain.txt');
    writeFileSync(notKey, 'not a key');
    const bad = run(['push', dir, ...target, '--signing-key', notKey]);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, new RegExp(`${notKey} is not a PEM private key .*\\[EDR_RULES_KEY\\]`));
    const pub = generateKeyFiles(path.join(dir, 'push-pub')).publicKey;
    const wrongHalf = run(['push', dir, ...target, '--signing-key', pub]);
    assert.equal(wrongHalf.status, 1, 'a public key cannot sign');
    const list = run(['list', ...target]);
    assert.equal(list.status, 1);
    assert.match(list.stderr, /no public key to check the topic with/);
  });

  it('key errors name the file, never its content', () => {
    const secretish = path.join(dir, 'not-a-key');
    writeFileSync(secretish, 'hunter2-very-secret-content');
    chmodSync(secretish, 0o600);
    for (const read of [readSigningKey, readPublicKey]) {
      assert.throws(
        () => read(secretish),
        (err: unknown) =>
          err instanceof EdrError &&
          err.code === 'EDR_RULES_KEY' &&
          err.message.includes(secretish) &&
          !err.message.includes('hunter2'),
      );
    }
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const rsaPub = rsa.publicKey.export({ type: 'spki', format: 'pem' }).toString();
    assert.throws(() => readPublicKey(rsaPub), /inline PEM is a rsa key, not Ed25519/);
  });
});

describe('the detector config', () => {
  const kafka = { brokers: ['localhost:9092'] };

  it('loads trusted keys from files and PEM text', () => {
    const k = generateKeyFiles(path.join(dir, 'cfg'));
    const pem = readFileSync(k.publicKey, 'utf8');
    const c = parseConfig(detectorConfigSchema, { kafka, rules: { publicKeys: [k.publicKey, pem] } });
    assert.deepEqual(
      c.rules.publicKeys.map((x) => x.id),
      [k.keyId, k.keyId],
    );
  });

  it('refuses a detector following the topic without a public key', () => {
    assert.throws(
      () => parseConfig(detectorConfigSchema, { kafka }),
      (err: unknown) =>
        err instanceof EdrError &&
        err.code === 'EDR_CONFIG_INVALID' &&
        /rules\.publicKeys: the detector follows the rules topic/.test(err.message),
    );
    // Directory rules only: no key needed.
    assert.equal(parseConfig(detectorConfigSchema, { kafka, rules: { topic: false } }).rules.topic, false);
  });

  it('names a bad key file by its path and position, and refuses a private key', () => {
    const k = generateKeyFiles(path.join(dir, 'cfg-bad'));
    const missing = path.join(dir, 'missing.pub');
    assert.throws(
      () =>
        parseConfig(detectorConfigSchema, {
          kafka,
          rules: { publicKeys: [k.publicKey, missing, k.privateKey] },
        }),
      (err: unknown) => {
        const m = (err as Error).message;
        const pem = readFileSync(k.privateKey, 'utf8').split('\n')[1]!;
        return (
          m.includes(`rules.publicKeys[1]: cannot read public key file ${missing}`) &&
          m.includes(`rules.publicKeys[2]: ${k.privateKey} holds a private key`) &&
          !m.includes(pem)
        );
      },
    );
  });
});
