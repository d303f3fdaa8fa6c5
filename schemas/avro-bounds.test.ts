/**
 * Full decoding (sinks, correlations) checks every declared length against the bytes left before avsc reads the
 * body: crafted records are refused at once with the reason, and every record the project writes still decodes.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import {
  generateEvents,
  prng,
  sampleAlert,
  sampleCollectorRecord,
  sampleEvent,
} from '../test/fixtures/events.js';
import { MAX_EMPTY_ITEMS } from './avro-bounds.js';
import { Codec, projectCodec, type Schema } from './codec.js';
import type { ExecveEvent } from './types.js';

/** Avro's zigzag varint of `n` (a safe integer). */
function zz(n: number): number[] {
  let u = n >= 0 ? 2 * n : -2 * n - 1;
  const out: number[] = [];
  while (u >= 0x80) {
    out.push((u % 128) | 0x80);
    u = Math.floor(u / 128);
  }
  out.push(u);
  return out;
}

const codec = projectCodec();
/** The single-object header of the project's schema `name`. */
function headerOf(c: Codec, name: string): Buffer {
  const fp = [...c.writerSchemas()].find(([, s]) => JSON.parse(s).name === name)![0];
  const h = Buffer.alloc(10);
  h[0] = 0xc3;
  h[1] = 0x01;
  h.writeBigUInt64LE(fp, 2);
  return h;
}
const ALERT = headerOf(codec, 'dev.edr.v1.Alert');
/** An Alert body up to ruleTags: alertId, ruleId, ruleTitle, ruleLevel empty, ruleStatus null. */
const UP_TO_TAGS = [0, 0, 0, 0, 0];

// A schema with what the project's do not use (maps, enums, fixed, empty items), to cover the walk.
const TEST_SCHEMA: Schema = {
  type: 'record',
  name: 'test.Shapes',
  fields: [
    { name: 'tags', type: { type: 'map', values: 'long' } },
    { name: 'nothing', type: { type: 'array', items: 'null' } },
    { name: 'color', type: { type: 'enum', name: 'Color', symbols: ['RED', 'GREEN'] } },
    { name: 'id', type: { type: 'fixed', name: 'Id', size: 4 } },
    { name: 'ratio', type: 'double' },
  ],
};
const shapes = new Codec([TEST_SCHEMA]);
const SHAPES = headerOf(shapes, 'test.Shapes');
/** A sound Shapes body after its map (`nothing` empty, GREEN, id, 1.5). */
const AFTER_MAP = [0, 2, 1, 2, 3, 4, ...Buffer.from(new Float64Array([1.5]).buffer)];

function refused(c: Codec, record: Buffer, reason: RegExp): void {
  assert.throws(
    () => c.decode(record),
    (err: { code?: string; message?: string }) => {
      assert.equal(err.code, 'EDR_SCHEMA_CORRUPT');
      assert.match(err.message ?? '', reason);
      return true;
    },
  );
}

describe('full decoding: declared lengths against the bytes left', () => {
  it('refuses an array declaring 2^24 items in a few bytes (2^31: the last test)', () => {
    refused(
      codec,
      Buffer.concat([ALERT, Buffer.from([...UP_TO_TAGS, ...zz(2 ** 24), 0x61])]),
      /Alert record body: array block of 16777216 items in 1 bytes/,
    );
  });

  it('refuses a string declaring 2 GiB', () => {
    refused(
      codec,
      Buffer.concat([ALERT, Buffer.from(zz(2 ** 31))]),
      /a length of 2147483648 runs past the end/,
    );
  });

  it('refuses a map declaring more entries than bytes', () => {
    refused(shapes, Buffer.concat([SHAPES, Buffer.from([...zz(1e7), 2, 2])]), /map block of 10000000 items/);
  });

  it('refuses a negative block count whose byte size lies', () => {
    // Two entries ("a" → 1, "b" → 2) take 6 bytes; the block says 60, then 5.
    const entries = [2, 0x61, 2, 2, 0x62, 4];
    refused(
      shapes,
      Buffer.concat([SHAPES, Buffer.from([...zz(-2), ...zz(60), ...entries, 0, ...AFTER_MAP])]),
      /map block of 60 bytes runs past the end/,
    );
    refused(
      shapes,
      Buffer.concat([SHAPES, Buffer.from([...zz(-2), ...zz(5), ...entries, 0, ...AFTER_MAP])]),
      /map block size does not match its items/,
    );
    // Told the truth, it decodes.
    const ok = shapes.decode(
      Buffer.concat([SHAPES, Buffer.from([...zz(-2), ...zz(6), ...entries, 0, ...AFTER_MAP])]),
    );
    assert.deepEqual({ ...(ok.value as unknown as { tags: object }).tags }, { a: 1n, b: 2n });
  });

  it('refuses a long of 11 bytes and one past 64 bits', () => {
    const entry = (long: number[]) =>
      Buffer.concat([SHAPES, Buffer.from([2, 2, 0x61, ...long, 0, ...AFTER_MAP])]);
    refused(shapes, entry([...Array(10).fill(0x80), 0x00]), /a long is longer than 10 bytes/);
    refused(shapes, entry([...Array(9).fill(0xff), 0x02]), /a long is out of range/);
    assert.equal(
      (shapes.decode(entry([0xfe, ...Array(8).fill(0xff), 0x01])).value as unknown as { tags: { a: bigint } })
        .tags.a,
      2n ** 63n - 1n,
    );
  });

  it('caps items that take no bytes, refuses enum and union indexes out of range, and trailing bytes', () => {
    const body = (nothing: number[], rest = AFTER_MAP.slice(1)) =>
      Buffer.concat([SHAPES, Buffer.from([0, ...nothing, ...rest])]);
    assert.equal(
      (shapes.decode(body([...zz(1000), 0])).value as unknown as { nothing: null[] }).nothing.length,
      1000,
    );
    refused(shapes, body([...zz(MAX_EMPTY_ITEMS + 1), 0]), /more than 65536 empty array items/);
    refused(shapes, body([0], [7, 1, 2, 3, 4, ...AFTER_MAP.slice(6)]), /enum index -4 out of range/);
    refused(codec, Buffer.concat([ALERT, Buffer.from([0, 0, 0, 0, 9])]), /union branch -5 out of range/);
    refused(shapes, Buffer.concat([body([0]), Buffer.from([1])]), /1 trailing bytes/);
  });

  it('decodes every record the project writes as before (round trip over generated alerts and records)', () => {
    const rand = prng(7);
    const events = generateEvents(300, 11, 0.2);
    for (const [i, event] of events.entries()) {
      const alert = sampleAlert({
        event,
        ruleTags: Array.from({ length: Math.floor(rand() * 5) }, (_, k) => `attack.t${k}`),
        ruleStatus: rand() < 0.5 ? null : 'test',
        matchedFields: Array.from({ length: Math.floor(rand() * 4) }, (_, k) => ({
          field: `F${k}`,
          value: 'é'.repeat(Math.floor(rand() * 200)),
        })),
        replayRunId: i % 3 === 0 ? `run-${i}` : null,
      });
      assert.deepEqual(
        structuredClone(codec.decodeAs('dev.edr.v1.Alert', codec.encode('dev.edr.v1.Alert', alert))),
        alert,
      );
      assert.deepEqual(
        structuredClone(
          codec.decodeAs('dev.edr.v1.ExecveEvent', codec.encode('dev.edr.v1.ExecveEvent', event)),
        ),
        event,
      );
    }
    const rec = sampleCollectorRecord();
    assert.deepEqual(
      structuredClone(
        codec.decodeAs('dev.edr.v1.CollectorRecord', codec.encode('dev.edr.v1.CollectorRecord', rec)),
      ),
      rec,
    );
  });

  it('refuses the 2^31-item array within a 64 MiB heap (avsc alone looped and allocated past it)', async () => {
    // Run where memory is bounded: before the check, avsc pushed an item per declared count and this thread
    // died out of memory; now the decode throws at once. No timing: either the error comes back, or the thread dies.
    const record = Buffer.concat([ALERT, Buffer.from([...UP_TO_TAGS, ...zz(2 ** 31 - 1)])]);
    const src = `
      const { parentPort, workerData } = require('node:worker_threads');
      import(workerData.codec).then(({ projectCodec }) => {
        try { projectCodec().decode(Buffer.from(workerData.record)); parentPort.postMessage('decoded'); }
        catch (err) { parentPort.postMessage(err.code + ': ' + err.message); }
      });`;
    const w = new Worker(src, {
      eval: true,
      workerData: { codec: new URL('./codec.js', import.meta.url).href, record },
      resourceLimits: { maxOldGenerationSizeMb: 64 },
    });
    const answer = await new Promise<string>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
      w.once('exit', (code) => reject(new Error(`decode thread exited with code ${code}`)));
    });
    await w.terminate();
    assert.match(answer, /^EDR_SCHEMA_CORRUPT: .*array block of 2147483647 items/);
  });
});

describe('the lazy view and the full decode agree on block sizes', () => {
  it('both refuse an argv block whose byte size lies, and both read one that tells the truth', () => {
    const body = codec.encode('dev.edr.v1.ExecveEvent', sampleEvent({ argv: ['a', 'bc'] }));
    // argv [a, bc] as written: count 2, "a", "bc", end; then as one block of count -2 and byte size n.
    const plain = Buffer.from([4, 2, 0x61, 4, 0x62, 0x63, 0]);
    const at = body.indexOf(plain, 10);
    assert.ok(at > 0 && body.indexOf(plain, at + 1) === -1);
    const blocked = (size: number) =>
      Buffer.concat([
        body.subarray(0, at),
        Buffer.from([...zz(-2), ...zz(size), 2, 0x61, 4, 0x62, 0x63, 0]),
        body.subarray(at + plain.length),
      ]);
    for (const size of [4, 6, 600]) {
      for (const read of [() => codec.view(blocked(size)), () => codec.decode(blocked(size))]) {
        assert.throws(read, { code: 'EDR_SCHEMA_CORRUPT' }, `size ${size}`);
      }
    }
    assert.deepEqual((codec.view(blocked(5)).value as ExecveEvent).argv, ['a', 'bc']);
    assert.deepEqual(codec.decodeAs('dev.edr.v1.ExecveEvent', blocked(5)).argv, ['a', 'bc']);
  });
});
