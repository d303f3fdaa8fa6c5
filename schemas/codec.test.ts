import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import avro from 'avsc';
import { EdrError } from '../infra/errors.js';
import { repoRoot } from '../infra/paths.js';
import { sampleAlert, sampleCollectorRecord, sampleEvent } from '../test/fixtures/events.js';
import {
  Codec,
  canonicalForm,
  projectCodec,
  projectSchemas,
  rabinFingerprint,
  type Schema,
} from './codec.js';
import { ExecveView, plainEvent } from './execve-view.js';
import { commandLine, processCreationFields } from './sigma-fields.js';
import type { Alert, ExecveEvent } from './types.js';

// Inputs, canonical forms and fingerprints from the Avro specification's test data (share/test/data/schema-tests.txt);
// fingerprints there are signed 64-bit decimals.
const vectors: Array<[unknown, string, string]> = [
  ['null', '"null"', '7195948357588979594'],
  ['boolean', '"boolean"', '-6970731678124411036'],
  ['int', '"int"', '8247732601305521295'],
  ['string', '"string"', '-8142146995180207161'],
  [['int', { type: 'boolean' }], '["int","boolean"]', '5392556393470105090'],
  [
    { fields: [], type: 'record', name: 'foo' },
    '{"name":"foo","type":"record","fields":[]}',
    '-4824392279771201922',
  ],
  [
    { fields: [], type: 'record', name: 'foo', namespace: 'x.y' },
    '{"name":"x.y.foo","type":"record","fields":[]}',
    '5916914534497305771',
  ],
  [
    {
      fields: [
        { type: 'boolean', aliases: [], name: 'f1', default: true },
        { order: 'descending', name: 'f2', doc: 'Hello', type: 'int' },
      ],
      type: 'record',
      name: 'foo',
    },
    '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}',
    '-4860222112080293046',
  ],
  [
    { namespace: 'x.y.z', type: 'enum', name: 'foo', doc: 'foo bar', symbols: ['A1', 'A2'] },
    '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}',
    '-4448647247586288245',
  ],
  [
    { name: 'foo', type: 'fixed', size: 15 },
    '{"name":"foo","type":"fixed","size":15}',
    '1756455273707447556',
  ],
  [{ items: { type: 'null' }, type: 'array' }, '{"type":"array","items":"null"}', '-589620603366471059'],
  [{ values: 'string', type: 'map' }, '{"type":"map","values":"string"}', '-8732877298790414990'],
  [
    {
      name: 'PigValue',
      type: 'record',
      fields: [{ name: 'value', type: ['null', 'int', 'long', 'PigValue'] }],
    },
    '{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}',
    '-1759257747318642341',
  ],
];

/** avsc decodes records as instances of generated classes; compare their data only. */
const plain = <T>(v: T): T => structuredClone(v);

function expectCode(fn: () => unknown, code: string) {
  assert.throws(fn, (err: unknown) => err instanceof EdrError && err.code === code && !err.retryable);
}

describe('CRC-64-AVRO and Parsing Canonical Form', () => {
  for (const [input, canonical, signed] of vectors) {
    it(`matches the specification for ${canonical}`, () => {
      const type = avro.Type.forSchema(input as avro.Schema);
      assert.equal(canonicalForm(type), canonical);
      assert.equal(rabinFingerprint(Buffer.from(canonical)), BigInt.asUintN(64, BigInt(signed)));
    });
  }
});

describe('single-object encoding', () => {
  const codec = projectCodec();

  it('round-trips each record type, keeping 64-bit values exact', () => {
    const event = sampleEvent({ timeNs: 1_800_000_000_123_456_789n, cgroupId: 2n ** 63n - 1n });
    const buf = codec.encode('dev.edr.v1.ExecveEvent', event);
    assert.deepEqual([buf[0], buf[1]], [0xc3, 0x01]);
    assert.deepEqual(structuredClone(codec.decode(buf)), { name: 'dev.edr.v1.ExecveEvent', value: event });
    const alert = sampleAlert();
    assert.deepEqual(
      plain(codec.decodeAs('dev.edr.v1.Alert', codec.encode('dev.edr.v1.Alert', alert))),
      alert,
    );
    const rec = sampleCollectorRecord();
    assert.deepEqual(
      plain(codec.decodeAs('dev.edr.v1.CollectorRecord', codec.encode('dev.edr.v1.CollectorRecord', rec))),
      rec,
    );
  });

  it('writes the fingerprint of the canonical form, little-endian', () => {
    const buf = codec.encode('dev.edr.v1.ExecveEvent', sampleEvent());
    const [fp, canonical] = [...codec.writerSchemas()].find(([, c]) =>
      c.includes('"dev.edr.v1.ExecveEvent"'),
    )!;
    assert.equal(buf.readBigUInt64LE(2), fp);
    assert.equal(fp, rabinFingerprint(Buffer.from(canonical)));
  });

  it('rejects a value that does not match its schema, naming the field', () => {
    const bad = { ...sampleEvent(), pid: 'nope' } as never;
    assert.throws(
      () => codec.encode('dev.edr.v1.ExecveEvent', bad),
      (err: unknown) =>
        err instanceof EdrError && err.code === 'EDR_SCHEMA_INVALID_VALUE' && /pid/.test(err.message),
    );
  });

  it('gives typed errors for bytes it cannot read', () => {
    const good = codec.encode('dev.edr.v1.ExecveEvent', sampleEvent());
    expectCode(() => codec.decode(Buffer.from('{"json":true}')), 'EDR_SCHEMA_NOT_SINGLE_OBJECT');
    expectCode(() => codec.decode(Buffer.alloc(0)), 'EDR_SCHEMA_NOT_SINGLE_OBJECT');
    const unknown = Buffer.from(good);
    unknown.writeBigUInt64LE(0x1234567890abcdefn, 2);
    expectCode(() => codec.decode(unknown), 'EDR_SCHEMA_UNKNOWN_FINGERPRINT');
    expectCode(() => codec.decode(good.subarray(0, good.length - 5)), 'EDR_SCHEMA_CORRUPT');
    expectCode(
      () => codec.decode(Buffer.concat([good.subarray(0, 10), Buffer.alloc(40, 0xff)])),
      'EDR_SCHEMA_CORRUPT',
    );
    expectCode(() => codec.decodeAs('dev.edr.v1.Alert', good), 'EDR_SCHEMA_UNEXPECTED');
  });
});

describe('schema evolution', () => {
  const current = projectSchemas();
  const eventSchema = JSON.parse(
    readFileSync(path.join(repoRoot, 'schemas', 'execve-event.avsc'), 'utf8'),
  ) as {
    fields: Array<{ name: string }>;
  };

  it('reads a record from a newer writer that added an optional field', () => {
    const newer = {
      ...eventSchema,
      fields: [...eventSchema.fields, { name: 'tty', type: ['null', 'string'], default: null }],
    } as Schema;
    const newerCodec = new Codec([newer]);
    const event = sampleEvent();
    const bytes = newerCodec.encode('dev.edr.v1.ExecveEvent', { ...event, tty: 'pts/3' } as never);
    const reader = new Codec(current);
    expectCode(() => reader.decode(bytes), 'EDR_SCHEMA_UNKNOWN_FINGERPRINT');
    reader.addWriterSchema(newer);
    assert.deepEqual(plain(reader.decodeAs('dev.edr.v1.ExecveEvent', bytes)), event);
  });

  it('reads a record from an older writer, filling the added field with its default', () => {
    const older = { ...eventSchema, fields: eventSchema.fields.filter((f) => f.name !== 'sha256') } as Schema;
    const olderCodec = new Codec([older]);
    const { sha256: _, ...old } = sampleEvent({ sha256: 'ignored' });
    const bytes = olderCodec.encode('dev.edr.v1.ExecveEvent', old as never);
    const reader = new Codec(current);
    reader.addWriterSchema(older);
    assert.deepEqual(plain(reader.decodeAs('dev.edr.v1.ExecveEvent', bytes)), { ...old, sha256: null });
  });
});

describe('64-bit longs', () => {
  const codec = projectCodec();
  it('round-trip exactly at every width, negative values and the extremes included', () => {
    const values = [
      0n,
      1n,
      -1n,
      63n,
      -64n,
      64n,
      2n ** 31n,
      -(2n ** 31n),
      2n ** 48n - 1n,
      2n ** 48n,
      2n ** 49n + 7n,
      -(2n ** 49n) - 3n,
      2n ** 53n + 1n,
      1_800_000_000_123_456_789n,
      2n ** 63n - 1n,
      -(2n ** 63n),
    ];
    for (const v of values) {
      const e = sampleEvent({ timeNs: v, cgroupId: -v - 1n < -(2n ** 63n) ? 0n : -v - 1n, seq: v });
      const back = codec.decodeAs('dev.edr.v1.ExecveEvent', codec.encode('dev.edr.v1.ExecveEvent', e));
      assert.equal(back.timeNs, v);
      assert.equal(back.seq, v);
      assert.equal(back.cgroupId, e.cgroupId);
    }
  });

  it('are written as Avro zig-zag varints, readable by any Avro reader', () => {
    const plain = avro.Type.forSchema('long');
    const [fp] = [...codec.writerSchemas()].find(([, c]) => c.includes('"dev.edr.v1.CollectorRecord"'))!;
    assert.ok(fp > 0n);
    const rec = sampleCollectorRecord({ timeNs: 123_456_789n });
    const body = codec.encode('dev.edr.v1.CollectorRecord', rec).subarray(10);
    // Skip the three leading strings, then the long is where a standard long reader expects it.
    const str = avro.Type.forSchema('string');
    let pos = 0;
    for (let i = 0; i < 3; i++) pos = str.decode(body, pos).offset;
    assert.equal(plain.decode(body, pos).value, 123_456_789);
    assert.throws(() =>
      codec.encode('dev.edr.v1.CollectorRecord', sampleCollectorRecord({ timeNs: 2n ** 63n })),
    );
  });
});

describe('ExecveEvent views (lazy decoding)', () => {
  const codec = projectCodec();
  const bigs = [0n, -1n, 2n ** 48n, -(2n ** 49n) - 3n, 2n ** 53n + 1n, 2n ** 63n - 1n, -(2n ** 63n)];

  it('read every field exactly as the eager decoder does', () => {
    const events = [
      sampleEvent(),
      sampleEvent({ containerId: 'abc', sha256: 'f'.repeat(64), userName: null, parentImage: null }),
      sampleEvent({ argv: [], ancestors: [], image: 'ünïcødé/路径', cwd: '' }),
      sampleEvent({ argv: Array.from({ length: 300 }, (_, i) => `arg${i}`), pid: -5, argvTruncated: true }),
      ...bigs.map((v) => sampleEvent({ timeNs: v, seq: v, cgroupId: v, loginUid: v })),
    ];
    for (const e of events) {
      const bytes = codec.encode('dev.edr.v1.ExecveEvent', e);
      const view = codec.view(bytes);
      assert.equal(view.name, 'dev.edr.v1.ExecveEvent');
      assert.ok(view.value instanceof ExecveView);
      // Field by field first (each read decodes it), then the whole object.
      assert.equal(view.value.image, e.image);
      assert.equal(view.value.loginUid, e.loginUid);
      assert.deepEqual(view.value.argv, e.argv);
      assert.deepEqual(plainEvent(view.value), plain(codec.decode(bytes).value));
    }
  });

  it('decode ASCII, multi-byte UTF-8, empty and long strings, and argv as a command line', () => {
    const long = `${'x'.repeat(70)}/dev/tcp/10.0.0.9/4444`; // past 63 bytes: a two-byte length
    const cases: Partial<ExecveEvent>[] = [
      { image: '/usr/bin/ls', argv: ['ls', '-la'], cwd: '/home/alice' },
      { image: 'ünïcødé/路径', argv: ['é', 'b', '😀 x', ''], cwd: '/tmp/日本語', userName: 'José' },
      { image: '', argv: [], cwd: '', userName: '', parentImage: '', parentCommandLine: '' },
      { argv: [''], parentCommandLine: 'bash -i' },
      { argv: ['', '', 'a', ''], cwd: 'a\u0000b' },
      { argv: ['sh', '-c', long, 'é'.repeat(200)], cwd: long, parentCommandLine: `${long}é` },
      { argv: Array.from({ length: 300 }, (_, i) => (i % 7 === 0 ? `ärg${i}` : `arg${i}`)) },
      { argv: ['x'.repeat(10_000)], image: 'y'.repeat(5000) },
    ];
    const expected: Record<string, string> = {
      '/usr/bin/ls': 'ls -la',
      'ünïcødé/路径': 'é b 😀 x ',
      '': '',
    };
    for (const c of cases) {
      const e = sampleEvent(c);
      const bytes = codec.encode('dev.edr.v1.ExecveEvent', e);
      // The command line first (before argv is decoded), then every field, then the command line again.
      const first = codec.view(bytes).value as ExecveView;
      assert.equal(first.commandLine(), e.argv.join(' '));
      if (expected[e.image] !== undefined) assert.equal(first.commandLine(), expected[e.image]);
      for (const [name, value] of Object.entries(e))
        assert.deepEqual(first[name as keyof ExecveEvent], value, name);
      assert.equal(first.commandLine(), e.argv.join(' '));
      // argv first, then the command line (joined from it).
      const second = codec.view(bytes).value as ExecveView;
      assert.deepEqual(second.argv, e.argv);
      assert.equal(second.commandLine(), commandLine(e.argv));
      // Through the Sigma field table, as the engine reads it.
      const third = codec.view(bytes).value as ExecveView;
      assert.equal(processCreationFields['CommandLine']!(third), commandLine(e.argv));
      assert.equal(processCreationFields['Image']!(third), e.image);
    }
  });

  it('read a record inside a larger buffer (a message value sliced from a fetch)', () => {
    const e = sampleEvent({ image: '/usr/bin/ünï', argv: ['a', 'bé', 'c'], cwd: '/srv/app' });
    const bytes = codec.encode('dev.edr.v1.ExecveEvent', e);
    const big = Buffer.concat([Buffer.from('junk-before-é'), bytes, Buffer.from('junk-after')]);
    const inner = big.subarray(big.indexOf(bytes), big.indexOf(bytes) + bytes.length);
    const view = codec.view(inner).value as ExecveView;
    assert.equal(view.image, '/usr/bin/ünï');
    assert.equal(view.cwd, '/srv/app');
    assert.equal(view.commandLine(), 'a bé c');
    assert.equal(view.hostId, e.hostId);
    assert.deepEqual(plainEvent(view), plain(codec.decode(inner).value));
  });

  it('decode invalid UTF-8 in argv the same whether the command line is joined or read at once', () => {
    const e = sampleEvent({ argv: ['aXY', 'Zb', 'c'] });
    const bytes = Buffer.from(codec.encode('dev.edr.v1.ExecveEvent', e));
    const at = bytes.indexOf('aXY');
    bytes[at + 1] = 0xe2; // a three-byte sequence cut after two bytes, at the end of the argument
    bytes[at + 2] = 0x82;
    bytes[at + 4] = 0x80; // the next argument starts with a lone continuation byte
    const view = codec.view(bytes).value as ExecveView;
    assert.equal(view.commandLine(), 'a\ufffd \ufffdb c');
    assert.equal((codec.view(bytes).value as ExecveView).argv.join(' '), 'a\ufffd \ufffdb c');
    assert.deepEqual(view.argv, ['a\ufffd', '\ufffdb', 'c']);
  });

  it('reads arrays written in blocks with byte sizes (negative counts), as other Avro writers may', () => {
    const e = sampleEvent({ argv: ['a', 'bc'], ancestors: [] });
    const body = codec.encode('dev.edr.v1.ExecveEvent', e);
    // Re-encode argv as one block of count -2 and byte size 5 ("a" is 2 bytes, "bc" 3).
    const str = avro.Type.forSchema('string');
    const arr = avro.Type.forSchema({ type: 'array', items: 'string' });
    const plainArgv = arr.toBuffer(['a', 'bc']);
    const blocked = Buffer.concat([
      avro.Type.forSchema('long').toBuffer(-2),
      avro.Type.forSchema('long').toBuffer(5),
      str.toBuffer('a'),
      str.toBuffer('bc'),
      Buffer.from([0]),
    ]);
    const at = body.indexOf(plainArgv, 10);
    assert.ok(at > 0);
    const bytes = Buffer.concat([body.subarray(0, at), blocked, body.subarray(at + plainArgv.length)]);
    const view = codec.view(bytes).value;
    assert.ok(view instanceof ExecveView);
    assert.deepEqual(view.argv, ['a', 'bc']);
    assert.deepEqual(plainEvent(view), plain(codec.decode(bytes).value));
  });

  it('reject a corrupt body when made, with the same codes as decode', () => {
    const good = codec.encode('dev.edr.v1.ExecveEvent', sampleEvent());
    expectCode(() => codec.view(good.subarray(0, good.length - 5)), 'EDR_SCHEMA_CORRUPT');
    expectCode(() => codec.view(Buffer.concat([good, Buffer.from([0])])), 'EDR_SCHEMA_CORRUPT');
    expectCode(
      () => codec.view(Buffer.concat([good.subarray(0, 10), Buffer.alloc(40, 0xff)])),
      'EDR_SCHEMA_CORRUPT',
    );
    expectCode(() => codec.view(Buffer.from('{"json":true}')), 'EDR_SCHEMA_NOT_SINGLE_OBJECT');
  });

  it('fall back to eager decoding for other records and other writer schemas', () => {
    const rec = sampleCollectorRecord();
    const d = codec.view(codec.encode('dev.edr.v1.CollectorRecord', rec));
    assert.equal(d.name, 'dev.edr.v1.CollectorRecord');
    const eventSchema = JSON.parse(readFileSync(path.join(repoRoot, 'schemas', 'execve-event.avsc'), 'utf8'));
    const newer = {
      ...eventSchema,
      fields: [...eventSchema.fields, { name: 'tty', type: ['null', 'string'], default: null }],
    } as Schema;
    const reader = new Codec(projectSchemas());
    reader.addWriterSchema(newer);
    const e = sampleEvent();
    const v = reader.view(new Codec([newer]).encode('dev.edr.v1.ExecveEvent', { ...e, tty: 'x' } as never));
    assert.ok(!(v.value instanceof ExecveView));
    assert.deepEqual(plain(v.value), e);
  });
});

describe('alerts around an event record (encodeAlertAround)', () => {
  const codec = projectCodec();
  const head = (over: Partial<Alert> = {}) => {
    const { event: _, ...rest } = sampleAlert(over);
    return rest;
  };

  it('gives the bytes encode gives, for events with nulls, empty and multi-byte strings and 64-bit values', () => {
    const events = [
      sampleEvent(),
      sampleEvent({ argv: [], cwd: '', userName: null, parentImage: null, parentCommandLine: null }),
      sampleEvent({
        argv: ['echo', 'héllo wörld ✓', '日本語'],
        image: '/usr/bin/ünï',
        sha256: 'ab'.repeat(32),
      }),
      sampleEvent({ timeNs: 2n ** 63n - 1n, seq: 2n ** 62n, uid: 4294967295n, argv: ['x'.repeat(5000)] }),
    ];
    const heads = [
      head(),
      head({ ruleStatus: null, ruleAuthor: null, ruleTags: [], replayRunId: 'run-1', matchedFields: [] }),
    ];
    for (const event of events) {
      const record = codec.encode('dev.edr.v1.ExecveEvent', event);
      for (const [i, h] of heads.entries()) {
        const spliced = codec.encodeAlertAround(h, record, `splice-test-${i}`);
        assert.ok(spliced !== undefined);
        assert.deepEqual(spliced, codec.encode('dev.edr.v1.Alert', { ...h, event }));
        assert.deepEqual(plain(codec.decodeAs('dev.edr.v1.Alert', spliced)), { ...h, event });
      }
    }
  });

  it('encodes a rule key once: the same key gives the rule fields it was first given', () => {
    const record = codec.encode('dev.edr.v1.ExecveEvent', sampleEvent());
    const key = `cache-test-${Math.random()}`;
    codec.encodeAlertAround(head({ ruleTitle: 'first' }), record, key);
    const again = codec.encodeAlertAround(head({ ruleTitle: 'second' }), record, key)!;
    assert.equal(codec.decodeAs('dev.edr.v1.Alert', again).ruleTitle, 'first');
    const unkeyed = codec.encodeAlertAround(head({ ruleTitle: 'second' }), record)!;
    assert.equal(codec.decodeAs('dev.edr.v1.Alert', unkeyed).ruleTitle, 'second');
  });

  it('declines an event written with another ExecveEvent schema, and rejects a bad alert value', () => {
    const schemas = projectSchemas() as Array<{ name?: string; fields?: Array<{ name: string }> }>;
    const older = schemas.find((s) => s.name === 'ExecveEvent')!;
    const olderCodec = new Codec([
      { ...older, fields: older.fields!.filter((f) => f.name !== 'sha256') } as Schema,
    ]);
    const { sha256: _, ...old } = sampleEvent();
    const record = olderCodec.encode('dev.edr.v1.ExecveEvent', old as never);
    assert.equal(codec.encodeAlertAround(head(), record), undefined);
    const current = codec.encode('dev.edr.v1.ExecveEvent', sampleEvent());
    expectCode(
      () => codec.encodeAlertAround({ ...head(), detectorId: 7 as never }, current),
      'EDR_SCHEMA_INVALID_VALUE',
    );
    expectCode(() => codec.encodeAlertAround(head(), Buffer.from('nope')), 'EDR_SCHEMA_NOT_SINGLE_OBJECT');
  });
});
