/**
 * Signed records on the rules topic. The value stays the rule's exact YAML bytes (empty for a deletion); four
 * headers carry the envelope: the version, the operation, the signing key's id and an Ed25519 signature over
 * the topic, the record key, the version, the operation, the key id and the value. A record moved to another
 * topic or key, re-versioned, turned into a deletion or edited no longer verifies.
 *
 * Key files are PEM (PKCS#8 private, SPKI public); the private key is held as a KeyObject, which never prints its
 * material, and no message here quotes a key file's content.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  sign,
  verify,
} from 'node:crypto';
import {
  closeSync,
  fchmodSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';
import { EdrError } from '../infra/errors.js';
import type { InRecord } from '../infra/transport.js';

export const ruleHeaders = {
  version: 'edr-rule-version',
  op: 'edr-rule-op',
  keyId: 'edr-rule-key-id',
  signature: 'edr-rule-signature',
} as const;

export type RuleOp = 'put' | 'delete';

/** Why a record from the rules topic is refused (the audit record's `reason`). */
export type RefusalReason =
  | 'unsigned'
  | 'bad-signature'
  | 'unknown-key'
  | 'stale-version'
  | 'bare-tombstone'
  | 'malformed';

/** The fields a signature covers. */
export interface SignedFields {
  topic: string;
  key: Buffer;
  version: bigint;
  op: RuleOp;
  keyId: string;
  /** The exact YAML bytes (empty for a deletion). */
  value: Buffer;
}

/** Versions are positive signed 64-bit integers (they travel as decimal text, and as Avro longs in reports). */
export const MAX_VERSION = 2n ** 63n - 1n;
const DOMAIN = Buffer.from('edr-rules-signature-v1\0');

/** Each field length-prefixed, so no two different field tuples give the same bytes. */
export function signedMessage(f: SignedFields): Buffer {
  const parts = [
    Buffer.from(f.topic, 'utf8'),
    f.key,
    Buffer.from(f.version.toString(), 'ascii'),
    Buffer.from(f.op, 'ascii'),
    Buffer.from(f.keyId, 'ascii'),
    f.value,
  ];
  const out: Buffer[] = [DOMAIN];
  for (const p of parts) {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(p.length);
    out.push(len, p);
  }
  return Buffer.concat(out);
}

/** A key's id: the first 16 hex digits of the SHA-256 of its public key (SPKI DER). */
export function keyIdOf(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return createHash('sha256')
    .update(pub.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);
}

export interface SigningKey {
  id: string;
  key: KeyObject;
}

/** The headers of a signed record. */
export function signRecord(
  k: SigningKey,
  f: Omit<SignedFields, 'keyId'>,
): Record<(typeof ruleHeaders)[keyof typeof ruleHeaders], string> {
  if (f.version < 1n || f.version > MAX_VERSION)
    throw new EdrError('EDR_RULES_VERSION', `version ${f.version} is outside 1..${MAX_VERSION}`);
  const signature = sign(null, signedMessage({ ...f, keyId: k.id }), k.key);
  return {
    [ruleHeaders.version]: f.version.toString(),
    [ruleHeaders.op]: f.op,
    [ruleHeaders.keyId]: k.id,
    [ruleHeaders.signature]: signature.toString('base64'),
  };
}

/** Trusted public keys by id. */
export type TrustedKeys = ReadonlyMap<string, KeyObject>;

export type Verdict =
  | { ok: true; key: string; version: bigint; op: RuleOp; keyId: string }
  | {
      ok: false;
      reason: RefusalReason;
      detail: string;
      /** What the record claims, when it is well-formed enough to say. */
      keyId?: string;
      version?: bigint;
    };

const VERSION_RE = /^[1-9][0-9]{0,18}$/;
const KEY_ID_RE = /^[0-9a-f]{16}$/;
const SIGNATURE_RE = /^[A-Za-z0-9+/]{86}==$/;

/** A header as text when it is short enough to be one of ours (a hostile record may carry megabytes). */
function header(r: InRecord, name: string, max: number): string | undefined {
  const h = r.headers[name];
  if (h === undefined || h.length > max) return undefined;
  return h.toString('latin1');
}

/** Checks a record of `topic` against the trusted keys: its signature, not its version (the gate's job). */
export function verifyRecord(r: InRecord, topic: string, trusted: TrustedKeys): Verdict {
  const signed = Object.values(ruleHeaders).some((h) => r.headers[h] !== undefined);
  if (!signed) {
    return r.value === null
      ? {
          ok: false,
          reason: 'bare-tombstone',
          detail: 'a tombstone without a signature cannot delete a rule',
        }
      : { ok: false, reason: 'unsigned', detail: 'the record carries no signature' };
  }
  if (r.key === null || r.key.length === 0)
    return { ok: false, reason: 'malformed', detail: 'the record has no key (rule id)' };
  const versionText = header(r, ruleHeaders.version, 19);
  const op = header(r, ruleHeaders.op, 6);
  const keyId = header(r, ruleHeaders.keyId, 16);
  const signature = header(r, ruleHeaders.signature, 88);
  const version =
    versionText !== undefined && VERSION_RE.test(versionText) && BigInt(versionText) <= MAX_VERSION
      ? BigInt(versionText)
      : undefined;
  const claims = {
    ...(keyId !== undefined && KEY_ID_RE.test(keyId) ? { keyId } : {}),
    ...(version !== undefined ? { version } : {}),
  };
  const bad: string[] = [];
  if (version === undefined) bad.push(`${ruleHeaders.version} (a decimal 1..2^63-1)`);
  if (op !== 'put' && op !== 'delete') bad.push(`${ruleHeaders.op} (put or delete)`);
  if (claims.keyId === undefined) bad.push(`${ruleHeaders.keyId} (16 hex digits)`);
  if (signature === undefined || !SIGNATURE_RE.test(signature))
    bad.push(`${ruleHeaders.signature} (64 bytes, base64)`);
  if (bad.length > 0)
    return {
      ok: false,
      reason: 'malformed',
      detail: `missing or invalid header: ${bad.join(', ')}`,
      ...claims,
    };
  if (op === 'put' && r.value === null)
    return { ok: false, reason: 'malformed', detail: 'a put record without a value', ...claims };
  if (op === 'delete' && r.value !== null && r.value.length > 0)
    return { ok: false, reason: 'malformed', detail: 'a delete record with a value', ...claims };
  const key = trusted.get(keyId!);
  if (key === undefined)
    return {
      ok: false,
      reason: 'unknown-key',
      detail: `signed by key ${keyId}, not a trusted one`,
      ...claims,
    };
  const fields: SignedFields = {
    topic,
    key: r.key,
    version: version!,
    op: op as RuleOp,
    keyId: keyId!,
    value: r.value ?? Buffer.alloc(0),
  };
  if (!verify(null, signedMessage(fields), key, Buffer.from(signature!, 'base64')))
    return {
      ok: false,
      reason: 'bad-signature',
      detail: `the signature does not verify with key ${keyId}`,
      ...claims,
    };
  return { ok: true, key: r.key.toString('utf8'), version: version!, op: op as RuleOp, keyId: keyId! };
}

/** Whether PEM text holds a private key (configuring one where a public key belongs would spread it). */
function isPrivatePem(text: string): boolean {
  return /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text);
}

/**
 * An Ed25519 public key from PEM text or a file holding it. Errors name the file (or "inline PEM"), never the
 * content.
 */
export function readPublicKey(source: string): SigningKey {
  const inline = source.trimStart().startsWith('-----BEGIN');
  const where = inline ? 'inline PEM' : source;
  let text: string;
  if (inline) text = source;
  else {
    try {
      text = readFileSync(source, 'utf8');
    } catch (err) {
      throw new EdrError(
        'EDR_RULES_KEY',
        `cannot read public key file ${source}: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
  }
  if (isPrivatePem(text))
    throw new EdrError(
      'EDR_RULES_KEY',
      `${where} holds a private key: configure the public key (the .pub file) and keep the private one with whoever pushes`,
    );
  let key: KeyObject;
  try {
    key = createPublicKey({ key: text, format: 'pem' });
  } catch {
    throw new EdrError('EDR_RULES_KEY', `${where} is not a PEM public key`);
  }
  if (key.asymmetricKeyType !== 'ed25519')
    throw new EdrError('EDR_RULES_KEY', `${where} is a ${key.asymmetricKeyType} key, not Ed25519`);
  return { id: keyIdOf(key), key };
}

/** The trusted keys, by id, from config entries (file paths or PEM text). */
export function trustedKeys(keys: readonly SigningKey[]): TrustedKeys {
  return new Map(keys.map((k) => [k.id, k.key]));
}

/** The Ed25519 private key in `file` (PEM, PKCS#8). */
export function readSigningKey(file: string): SigningKey {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new EdrError('EDR_RULES_KEY', `cannot read signing key ${file}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: text, format: 'pem' });
  } catch {
    // The parser's message could quote the input: ours names the file only.
    throw new EdrError('EDR_RULES_KEY', `${file} is not a PEM private key (make one with edr rules keygen)`);
  }
  if (key.asymmetricKeyType !== 'ed25519')
    throw new EdrError('EDR_RULES_KEY', `${file} is a ${key.asymmetricKeyType} key, not Ed25519`);
  return { id: keyIdOf(key), key };
}

/** Whether a file is readable by others than its owner. */
export function readableByOthers(file: string): boolean {
  try {
    return (statSync(file).mode & 0o077) !== 0;
  } catch {
    return false;
  }
}

/** Writes `data` to a new file (never over an existing one) with exactly `mode`. */
function writeNew(file: string, data: string, mode: number): void {
  const fd = openSync(file, 'wx', mode);
  try {
    fchmodSync(fd, mode); // the umask may have narrowed it; the private key must be exactly 0600
    writeSync(fd, data);
  } finally {
    closeSync(fd);
  }
}

export interface KeyFiles {
  privateKey: string;
  publicKey: string;
  keyId: string;
}

/**
 * A new Ed25519 key pair: `<name>.key` (PKCS#8 PEM, mode 0600) and `<name>.pub` (SPKI PEM, 0644) in `dir`
 * (created 0700 when missing). Refuses when either file exists, and writes neither then.
 */
export function generateKeyFiles(dir: string, name = 'rules-signing'): KeyFiles {
  const privateKey = path.join(dir, `${name}.key`);
  const publicKey = path.join(dir, `${name}.pub`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  for (const f of [privateKey, publicKey]) {
    let exists = true;
    try {
      statSync(f);
    } catch {
      exists = false;
    }
    if (exists) throw new EdrError('EDR_RULES_KEY_EXISTS', `${f} exists: refusing to overwrite a key`);
  }
  const pair = generateKeyPairSync('ed25519');
  try {
    writeNew(privateKey, pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), 0o600);
  } catch (err) {
    throw new EdrError('EDR_RULES_KEY_EXISTS', `cannot create ${privateKey}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  try {
    writeNew(publicKey, pair.publicKey.export({ type: 'spki', format: 'pem' }).toString(), 0o644);
  } catch (err) {
    rmSync(privateKey, { force: true }); // no private key without its public half
    throw new EdrError('EDR_RULES_KEY_EXISTS', `cannot create ${publicKey}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return { privateKey, publicKey, keyId: keyIdOf(pair.publicKey) };
}
