import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import { EdrError } from '../infra/errors.js';
import { projectCodec } from '../schemas/codec.js';
import { sampleEvent } from '../test/fixtures/events.js';
import { frameAvro, ReplaySource } from './replay-source.js';
import type { ReplayedExecEvent } from './source.js';

const dir = mkdtempSync(path.join(tmpdir(), 'edr-replay-'));
after(() => rmSync(dir, { recursive: true, force: true }));

async function readAll(file: string, batchMaxEvents = 2, signal = new AbortController().signal) {
  const source = new ReplaySource({ type: 'replay', path: file, format: 'auto', batchMaxEvents }, signal);
  const batches: ReplayedExecEvent[][] = [];
  for await (const b of source) batches.push(b as ReplayedExecEvent[]);
  return { batches, events: batches.flat(), counters: source.counters() };
}

it('reads JSON lines in batches: 64-bit fields from numbers or strings, given enrichment kept', async () => {
  const file = path.join(dir, 'events.jsonl');
  writeFileSync(
    file,
    [
      JSON.stringify({ image: '/usr/bin/id', argv: ['id'], pid: 10, ppid: 1, uid: 1000, cwd: '/home/a' }),
      '',
      JSON.stringify({
        image: '/bin/ls',
        argv: ['ls', '-l'],
        cgroupId: '18446744073709551615',
        userName: 'eve',
        timeNs: 5,
      }),
      JSON.stringify({ image: '/bin/true', argv: ['true'], parentImage: null }),
    ].join('\n'),
  );
  const { batches, events, counters } = await readAll(file);
  assert.deepEqual(
    batches.map((b) => b.length),
    [2, 1],
  );
  assert.equal(counters.kernelSeen, 3);
  assert.equal(counters.kernelDrops + counters.queueDrops, 0);
  const [id, ls, tru] = events;
  assert.equal(id!.kind, 'exec');
  assert.equal(id!.exePath, '/usr/bin/id');
  assert.equal(id!.uid, 1000);
  assert.equal(id!.cwd, '/home/a');
  assert.equal(id!.argvBytes, 3);
  assert.equal(id!.comm, 'id');
  assert.deepEqual(id!.given, {});
  assert.equal(ls!.cgroupId, 18446744073709551615n);
  assert.deepEqual(ls!.given, { userName: 'eve', wallTimeNs: 5n });
  assert.deepEqual(tru!.given, { parentImage: null });
});

it('reports a bad line with its number', async () => {
  const file = path.join(dir, 'bad.jsonl');
  writeFileSync(file, `${JSON.stringify({ image: '/bin/a', argv: ['a'] })}\n{"image": 3}\n`);
  await assert.rejects(readAll(file), (err: unknown) => {
    assert.ok(err instanceof EdrError);
    assert.equal(err.code, 'EDR_COLLECTOR_REPLAY_PARSE');
    assert.match(err.message, /bad\.jsonl:2: 'image' must be a string/);
    return true;
  });
});

it('reads length-prefixed Avro single-object records (auto-detected) with every field as given', async () => {
  const codec = projectCodec();
  const file = path.join(dir, 'events.avro');
  const a = sampleEvent({ pid: 1, argv: ['curl', 'x'] });
  const b = sampleEvent({ pid: 2, userName: null, containerId: 'c'.repeat(64) });
  writeFileSync(
    file,
    frameAvro([codec.encode('dev.edr.v1.ExecveEvent', a), codec.encode('dev.edr.v1.ExecveEvent', b)]),
  );
  const { events } = await readAll(file, 10);
  assert.equal(events.length, 2);
  assert.equal(events[0]!.pid, 1);
  assert.deepEqual(events[0]!.argv, ['curl', 'x']);
  assert.equal(events[0]!.given?.userName, 'alice');
  assert.equal(events[0]!.given?.parentImage, '/usr/bin/bash');
  assert.equal(events[0]!.given?.wallTimeNs, a.timeNs);
  assert.equal(events[1]!.given?.userName, null);
  assert.equal(events[1]!.given?.containerId, 'c'.repeat(64));
});

it('fails on a truncated Avro file, and on a missing file', async () => {
  const codec = projectCodec();
  const file = path.join(dir, 'cut.avro');
  const framed = frameAvro([codec.encode('dev.edr.v1.ExecveEvent', sampleEvent())]);
  writeFileSync(file, framed.subarray(0, framed.length - 3));
  await assert.rejects(readAll(file), /EDR_COLLECTOR_REPLAY_PARSE|trailing bytes/);
  await assert.rejects(readAll(path.join(dir, 'missing.jsonl')), (err: unknown) => {
    return err instanceof EdrError && err.code === 'EDR_COLLECTOR_REPLAY_OPEN';
  });
});

it('stops at the next batch once its signal aborts', async () => {
  const file = path.join(dir, 'many.jsonl');
  writeFileSync(
    file,
    Array.from({ length: 100 }, (_, i) =>
      JSON.stringify({ image: '/bin/true', argv: ['true', String(i)] }),
    ).join('\n'),
  );
  const stop = new AbortController();
  const source = new ReplaySource(
    { type: 'replay', path: file, format: 'jsonl', batchMaxEvents: 10 },
    stop.signal,
  );
  let n = 0;
  for await (const b of source) {
    n += b.length;
    stop.abort();
  }
  assert.equal(n, 10);
});
