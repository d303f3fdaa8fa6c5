import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Codec, projectCodec, projectSchemas, type Schema } from '../schemas/codec.js';
import type { Alert } from '../schemas/types.js';
import { sampleAlert, sampleEvent } from '../test/fixtures/events.js';
import { alertId, encodeFitted, uuidV5 } from './alerts.js';

test('uuidV5 gives the RFC 9562 name-based UUIDs', () => {
  // The DNS namespace example ("www.example.com") that RFC 9562 and most UUID libraries use as a test vector.
  assert.equal(
    uuidV5('www.example.com', '6ba7b810-9dad-11d1-80b4-00c04fd430c8'),
    '2ed6657d-e927-568b-95e1-2665a8aea6a2',
  );
});

test('alert ids stay what they were (consumers de-duplicate on them across versions)', () => {
  // Values produced by the uuid package's v5 before the detector made its own: a change here re-ids every alert.
  assert.equal(alertId('rule-1', sampleEvent()), '2cc4d3df-ad70-5f2e-8769-bac62ce2c224');
  assert.equal(alertId('rule-1', sampleEvent(), 'run-7'), 'f6457cb9-f710-578e-a4fa-009b6e08b99b');
  assert.notEqual(alertId('rule-1', sampleEvent({ seq: 2n })), alertId('rule-1', sampleEvent()));
});

test('an alert over maxAlertBytes is cut short to fit, marked truncated; one under it is left whole', () => {
  const codec = projectCodec();
  const small = sampleAlert();
  assert.deepEqual(encodeFitted(codec, small, 4096), codec.encode('dev.edr.v1.Alert', small));
  const argv = Array.from({ length: 5000 }, (_, i) => `arg-${i}-${'z'.repeat(150)}`);
  const big = sampleAlert({
    event: sampleEvent({ argv, ancestors: ['a'.repeat(100_000)] }),
    matchedFields: [{ field: 'CommandLine', value: argv.join(' ') }],
  });
  const max = 64 * 1024;
  const bytes = encodeFitted(codec, big, max);
  assert.ok(bytes.length <= max, `${bytes.length} bytes`);
  const back = codec.decodeAs('dev.edr.v1.Alert', bytes);
  assert.equal(back.truncated, true);
  assert.equal(back.alertId, big.alertId);
  assert.equal(back.event.argvTruncated, true);
  assert.deepEqual(back.event.argv, argv.slice(0, back.event.argv.length));
  assert.ok(back.event.ancestors[0]!.endsWith('…'));
  assert.throws(() => encodeFitted(codec, big, 200), { code: 'EDR_DETECTOR_ALERT_TOO_LARGE' });
});

test('truncated is a new field with a default: alerts of the previous schema read as not truncated, and back', () => {
  const schemas = projectSchemas();
  const previous = schemas.map((s) =>
    (s as { name?: string }).name === 'Alert'
      ? {
          ...(s as object),
          fields: (s as { fields: Array<{ name: string }> }).fields.filter((f) => f.name !== 'truncated'),
        }
      : s,
  ) as Schema[];
  const old = new Codec(previous);
  const now = projectCodec();
  const { truncated: _, ...alert } = sampleAlert();
  const oldRecord = old.encode('dev.edr.v1.Alert', alert as Alert);
  for (const [fp, canonical] of old.writerSchemas())
    if (!now.writerSchemas().has(fp)) now.addWriterSchema(canonical);
  assert.equal(now.decodeAs('dev.edr.v1.Alert', oldRecord).truncated, false);
  for (const [, canonical] of now.writerSchemas()) old.addWriterSchema(canonical);
  const read = old.decodeAs(
    'dev.edr.v1.Alert',
    now.encode('dev.edr.v1.Alert', sampleAlert({ truncated: true })),
  );
  assert.equal(read.alertId, alert.alertId);
  assert.equal('truncated' in read, false);
});
