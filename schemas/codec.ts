/**
 * Avro single-object encoding (spec: "Single object encoding"): `C3 01`, the 8-byte little-endian CRC-64-AVRO
 * (Rabin) fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary body.
 * Decoding looks the writer schema up by fingerprint and reads it with the reader's schema of the same name,
 * so records from older or newer writers decode (schema evolution by Avro's resolution rules).
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import avro from 'avsc';
import { EdrError, errorMessage } from '../infra/errors.js';
import { repoRoot } from '../infra/paths.js';
import { checkBody } from './avro-bounds.js';
import { ExecveLayout, ExecveView } from './execve-view.js';
import type { Alert, CollectorHeartbeat, CollectorRecord, ExecveEvent, RuleRefused } from './types.js';

const MAGIC0 = 0xc3;
const MAGIC1 = 0x01;
const HEADER = 10;

// CRC-64-AVRO, as the Avro specification defines it (the "Schema Fingerprints" section).
const EMPTY = 0xc15d213aa4d7a795n;
const MASK = 0xffffffffffffffffn;
const TABLE: bigint[] = Array.from({ length: 256 }, (_, i) => {
  let fp = BigInt(i);
  for (let j = 0; j < 8; j++) fp = (fp >> 1n) ^ (EMPTY & -(fp & 1n) & MASK);
  return fp;
});

/** The 64-bit Rabin fingerprint of `bytes`, unsigned. */
export function rabinFingerprint(bytes: Uint8Array): bigint {
  let fp = EMPTY;
  for (const b of bytes) fp = (fp >> 8n) ^ TABLE[Number((fp ^ BigInt(b)) & 0xffn)]!;
  return fp;
}

/**
 * 64-bit longs as bigint: nanosecond times and ids exceed 2^53, where a JS number would silently round.
 * Small values read back as bigint too, so code never has to guess which it got.
 */
const BigLong = avro.types.LongType.__with({
  fromBuffer: (buf: Buffer) => buf.readBigInt64LE(0),
  toBuffer: (n: bigint) => {
    const buf = Buffer.alloc(8);
    buf.writeBigInt64LE(n, 0);
    return buf;
  },
  fromJSON: (v: unknown) => BigInt(v as string | number),
  toJSON: (n: bigint) =>
    n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n.toString(),
  isValid: (n: unknown) => typeof n === 'bigint' && n >= -(2n ** 63n) && n < 2n ** 63n,
  compare: (a: bigint, b: bigint) => (a < b ? -1 : a > b ? 1 : 0),
});

export type Schema = avro.Schema;

/** Parses with our bigint longs; a shared `registry` lets later schemas name earlier ones (Alert → ExecveEvent). */
function parse(schema: Schema, registry: Record<string, avro.Type> = {}): avro.Type {
  registry['long'] = BigLong;
  return avro.Type.forSchema(schema, { registry, omitRecordMethods: true });
}

/** Parsing Canonical Form: avsc's default schema export strips doc, aliases, defaults and order, and fully qualifies names. */
export function canonicalForm(type: avro.Type): string {
  return JSON.stringify(type.schema());
}

export function fingerprintOf(type: avro.Type): bigint {
  return rabinFingerprint(Buffer.from(canonicalForm(type), 'utf8'));
}

/** The records this project writes, by their Avro full name. */
export interface RecordTypes {
  'dev.edr.v1.ExecveEvent': ExecveEvent;
  'dev.edr.v1.Alert': Alert;
  'dev.edr.v1.CollectorRecord': CollectorRecord;
  'dev.edr.v1.RuleRefused': RuleRefused;
  'dev.edr.v1.CollectorHeartbeat': CollectorHeartbeat;
}
export type RecordName = keyof RecordTypes;

export type Decoded = { [N in RecordName]: { name: N; value: RecordTypes[N] } }[RecordName];

interface Writer {
  type: avro.Type;
  name: string;
  fingerprint: bigint;
}

export class Codec {
  private readonly readers = new Map<string, { type: avro.Type; header: Buffer }>();
  private readonly writers = new Map<bigint, Writer>();
  private readonly resolvers = new Map<bigint, avro.Resolver | null>();
  /** The current ExecveEvent schema's fingerprint, as two 32-bit halves (`isCurrentExecve`). */
  private execveFp: { low: number; high: number } | undefined;
  /** Where the current ExecveEvent schema's fields start, for `view` (undefined: a schema it does not cover). */
  private execveLayout: ExecveLayout | undefined;
  /** The Alert schema cut around its `event` field, for `encodeAlertAround`. */
  private alertCut: AlertCut | undefined;

  /** `schemas` are the reader (current) schemas; they are also registered as writer schemas. */
  constructor(schemas: Schema[]) {
    const registry: Record<string, avro.Type> = {};
    for (const s of schemas) {
      const type = parse(s, registry);
      const name = type.name;
      if (name === undefined)
        throw new EdrError('EDR_SCHEMA_INVALID', 'top-level schemas must be named records');
      const fp = fingerprintOf(type);
      this.readers.set(name, { type, header: header(fp) });
      this.writers.set(fp, { type, name, fingerprint: fp });
      if (name === 'dev.edr.v1.ExecveEvent') {
        const h = header(fp);
        this.execveFp = { low: h.readUInt32LE(2), high: h.readUInt32LE(6) };
        this.execveLayout = ExecveLayout.of(type);
      }
    }
    const alert = this.readers.get('dev.edr.v1.Alert');
    const execve = this.readers.get('dev.edr.v1.ExecveEvent');
    if (alert !== undefined && execve !== undefined) this.alertCut = cutAlert(alert, execve.type);
  }

  /**
   * Registers a writer schema met elsewhere (an older or newer producer's), so records it wrote decode.
   * Returns its fingerprint.
   */
  addWriterSchema(schema: Schema | string): bigint {
    let type: avro.Type;
    try {
      type = parse(typeof schema === 'string' ? (JSON.parse(schema) as Schema) : schema);
    } catch (err) {
      throw new EdrError('EDR_SCHEMA_INVALID', `invalid writer schema: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const fp = fingerprintOf(type);
    if (type.name === undefined)
      throw new EdrError('EDR_SCHEMA_INVALID', 'writer schema must be a named record');
    this.writers.set(fp, { type, name: type.name, fingerprint: fp });
    return fp;
  }

  /** Canonical forms of every schema this codec writes, keyed by fingerprint (for publishing to a registry). */
  writerSchemas(): Map<bigint, string> {
    return new Map(
      [...this.readers.values()].map((r) => [r.header.readBigUInt64LE(2), canonicalForm(r.type)]),
    );
  }

  encode<N extends RecordName>(name: N, value: RecordTypes[N]): Buffer {
    const reader = this.readers.get(name);
    if (reader === undefined) throw new EdrError('EDR_SCHEMA_UNKNOWN', `no schema named ${name}`);
    let body: Buffer;
    try {
      body = reader.type.toBuffer(value);
    } catch (err) {
      const paths: string[] = [];
      reader.type.isValid(value, { errorHook: (p: string[]) => paths.push(p.join('.')) });
      throw new EdrError(
        'EDR_SCHEMA_INVALID_VALUE',
        `value does not match ${name}${paths.length ? ` at ${paths.join(', ')}` : ''}`,
        { cause: err },
      );
    }
    return Buffer.concat([reader.header, body], HEADER + body.length);
  }

  /**
   * The single-object Alert record for `alert` with the ExecveEvent record `eventRecord` (single-object encoded)
   * as its event, without decoding it: Avro writes a record as its fields' encodings one after the other, so the
   * Alert's body is the fields before `event`, the event record's body as it is, then the fields after. Byte for
   * byte what `encode` gives for the decoded event. Undefined when `eventRecord` was written with another
   * ExecveEvent schema than this codec's (decode it and `encode` instead). The rule's fields (ruleId to
   * ruleSetVersion) are the same for every alert of a rule set: `ruleKey` names them (rule id and rule-set
   * version) so their bytes are encoded once.
   */
  encodeAlertAround(
    alert: Omit<Alert, 'event'>,
    eventRecord: Uint8Array,
    ruleKey?: string,
  ): Buffer | undefined {
    const cut = this.alertCut;
    const bytes = singleObject(eventRecord);
    if (cut === undefined || !this.isCurrentExecve(bytes)) return undefined;
    try {
      let rule = ruleKey === undefined ? undefined : cut.rules.get(ruleKey);
      if (rule === undefined) {
        rule = cut.rule.toBuffer(alert);
        if (ruleKey !== undefined) {
          if (cut.rules.size >= 10_000) cut.rules.clear(); // rule sets come and go; keep it bounded
          cut.rules.set(ruleKey, rule);
        }
      }
      return Buffer.concat([
        cut.header,
        cut.id.toBuffer(alert),
        rule,
        bytes.subarray(HEADER),
        cut.tail.toBuffer(alert),
      ]);
    } catch (err) {
      throw new EdrError(
        'EDR_SCHEMA_INVALID_VALUE',
        `value does not match dev.edr.v1.Alert: ${errorMessage(err)}`,
        {
          cause: err,
        },
      );
    }
  }

  /**
   * Like `decode`, but an ExecveEvent written with the current schema comes back as an `ExecveView`: its
   * structure is checked now, its fields are decoded when first read. For code that reads a few fields of most
   * records (rule evaluation); `plainEvent()` turns it into a plain object.
   */
  view(buf: Uint8Array): Decoded {
    const bytes = singleObject(buf);
    const layout = this.execveLayout;
    if (layout !== undefined && this.isCurrentExecve(bytes)) {
      let offsets: number[];
      try {
        offsets = layout.scan(bytes, HEADER);
      } catch (err) {
        throw corruptBody('dev.edr.v1.ExecveEvent', err);
      }
      return { name: 'dev.edr.v1.ExecveEvent', value: new ExecveView(layout, bytes, offsets) };
    }
    return this.decode(bytes);
  }

  /**
   * Whether a single-object record was written with this codec's ExecveEvent schema. The fingerprint is compared
   * as two 32-bit halves: reading it as a bigint allocates one per record.
   */
  private isCurrentExecve(bytes: Buffer): boolean {
    const fp = this.execveFp;
    return fp !== undefined && bytes.readUInt32LE(2) === fp.low && bytes.readUInt32LE(6) === fp.high;
  }

  /** Decodes one single-object-encoded record; throws EdrError (never retryable) on anything it cannot read. */
  decode(buf: Uint8Array): Decoded {
    const bytes = singleObject(buf);
    const fp = bytes.readBigUInt64LE(2);
    const writer = this.writers.get(fp);
    if (writer === undefined) {
      throw new EdrError(
        'EDR_SCHEMA_UNKNOWN_FINGERPRINT',
        `unknown writer schema fingerprint ${fp.toString(16).padStart(16, '0')}`,
        {
          details: { fingerprint: fp.toString(16) },
        },
      );
    }
    const reader = this.readers.get(writer.name);
    if (reader === undefined) {
      throw new EdrError('EDR_SCHEMA_UNKNOWN', `no reader schema for records named ${writer.name}`);
    }
    const resolver = this.resolverFor(writer, reader.type);
    try {
      // Every declared length against the bytes left before avsc loops or allocates on it.
      checkBody(writer.type, bytes, HEADER);
      const value =
        resolver === null
          ? reader.type.fromBuffer(bytes.subarray(HEADER))
          : reader.type.fromBuffer(bytes.subarray(HEADER), resolver);
      return { name: writer.name, value } as Decoded;
    } catch (err) {
      throw corruptBody(writer.name, err);
    }
  }

  /** Decodes and checks the record is of the expected kind. */
  decodeAs<N extends RecordName>(name: N, buf: Uint8Array): RecordTypes[N] {
    const d = this.decode(buf);
    if (d.name !== name)
      throw new EdrError('EDR_SCHEMA_UNEXPECTED', `expected a ${name} record, got ${d.name}`);
    return d.value as RecordTypes[N];
  }

  private resolverFor(writer: Writer, reader: avro.Type): avro.Resolver | null {
    let r = this.resolvers.get(writer.fingerprint);
    if (r === undefined) {
      if (writer.type === reader) r = null;
      else {
        try {
          r = reader.createResolver(writer.type);
        } catch (err) {
          throw new EdrError(
            'EDR_SCHEMA_INCOMPATIBLE',
            `cannot read ${writer.name} written with fingerprint ${writer.fingerprint.toString(16)}: ${(err as Error).message}`,
            { cause: err },
          );
        }
      }
      this.resolvers.set(writer.fingerprint, r);
    }
    return r;
  }
}

/** The Alert schema as three records around its `event` field. */
interface AlertCut {
  header: Buffer;
  /** The alertId field (first). */
  id: avro.Type;
  /** The rule's fields, from ruleId to the field before `event`. */
  rule: avro.Type;
  /** The fields after `event`. */
  tail: avro.Type;
  rules: Map<string, Buffer>;
}

function cutAlert(alert: { type: avro.Type; header: Buffer }, execve: avro.Type): AlertCut | undefined {
  const fields = (alert.type as avro.types.RecordType).fields;
  const at = fields.findIndex((f) => f.name === 'event');
  // The cut relies on alertId coming first and the event being the current ExecveEvent schema.
  if (at < 2 || fields[0]!.name !== 'alertId' || fields[at]!.type !== execve) return undefined;
  const record = (name: string, part: typeof fields) =>
    avro.Type.forSchema(
      {
        type: 'record',
        name,
        fields: part.map((f) => ({ name: f.name, type: f.type as unknown as Schema })),
      },
      { omitRecordMethods: true },
    );
  return {
    header: alert.header,
    id: record('AlertId', fields.slice(0, 1)),
    rule: record('AlertRule', fields.slice(1, at)),
    tail: record('AlertTail', fields.slice(at + 1)),
    rules: new Map(),
  };
}

function corruptBody(name: string, err: unknown): EdrError {
  return new EdrError('EDR_SCHEMA_CORRUPT', `corrupt ${name} record body: ${errorMessage(err)}`, {
    cause: err,
  });
}

/** `buf` as a Buffer, checked to start with the single-object marker. */
function singleObject(buf: Uint8Array): Buffer {
  const bytes = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (bytes.length < HEADER || bytes[0] !== MAGIC0 || bytes[1] !== MAGIC1) {
    throw new EdrError(
      'EDR_SCHEMA_NOT_SINGLE_OBJECT',
      `not an Avro single-object record (${bytes.length} bytes, starts ${bytes.subarray(0, 2).toString('hex') || 'empty'}; expected c301)`,
    );
  }
  return bytes;
}

function header(fp: bigint): Buffer {
  const h = Buffer.alloc(HEADER);
  h[0] = MAGIC0;
  h[1] = MAGIC1;
  h.writeBigUInt64LE(fp, 2);
  return h;
}

/** The project's schemas, read from schemas/*.avsc, in dependency order (ExecveEvent before Alert). */
export function projectSchemas(): Schema[] {
  const dir = path.join(repoRoot, 'schemas');
  const order = [
    'execve-event.avsc',
    'collector-record.avsc',
    'alert.avsc',
    'rule-refused.avsc',
    'collector-heartbeat.avsc',
  ];
  const files = readdirSync(dir).filter((f) => f.endsWith('.avsc'));
  files.sort((a, b) => order.indexOf(a) - order.indexOf(b));
  return files.map((f) => JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as Schema);
}

let shared: Codec | undefined;
/** One codec over the project's schemas, built once per process. */
export function projectCodec(): Codec {
  shared ??= new Codec(projectSchemas());
  return shared;
}
