import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import { createLogger } from '../infra/log.js';
import { FlakyTransport, readAll } from '../test/harness/flaky-transport.js';
import { fromSpoolPayload, type Outgoing, Publisher, toSpoolPayload } from './publish.js';
import { Spool } from './spool.js';

const root = mkdtempSync(path.join(tmpdir(), 'edr-publish-'));
after(() => rmSync(root, { recursive: true, force: true }));
const log = createLogger({}, 'error');
const key = Buffer.from('host-1');
const event = (i: number): Outgoing => ({
  key,
  value: Buffer.from(`e${i}`),
  toRaw: true,
  toAudit: true,
  event: true,
});
const options = {
  rawTopic: 'raw',
  auditTopic: 'audit',
  batchMaxEvents: 10,
  timeoutMs: 1000,
  retryIntervalMs: 10,
  maxPendingEvents: 1000,
};
const until = async (check: () => boolean): Promise<void> => {
  while (!check()) await new Promise((r) => setTimeout(r, 5));
};

it('round-trips records through the spool payload format', () => {
  const o: Outgoing = { key, value: Buffer.from([0xc3, 1, 2]), toRaw: false, toAudit: true, event: false };
  assert.deepEqual(fromSpoolPayload(toSpoolPayload(o)), o);
});

it('spools while the broker is down, drains in order before new records, and counts', async () => {
  const transport = new FlakyTransport();
  await transport.createTopics([
    { name: 'raw', partitions: 3 },
    { name: 'audit', partitions: 3 },
  ]);
  const spool = new Spool({
    dir: path.join(root, 'a'),
    maxBytes: 1 << 20,
    segmentBytes: 4096,
    fsync: 'never',
  });
  const p = new Publisher(transport, spool, options, log);
  p.start();
  await p.submit([0, 1, 2].map(event));
  await until(() => p.counters().eventsPublished === 3);
  transport.down = true;
  await p.submit([3, 4].map(event));
  await until(() => p.mode === 'offline');
  for (let i = 5; i < 40; i++) await p.submit([event(i)]);
  assert.ok(p.counters().eventsSpooled >= 35);
  transport.down = false;
  await until(() => p.mode === 'online');
  await p.submit([40, 41].map(event));
  await p.stop(1000);
  const c = p.counters();
  assert.equal(c.spoolDropped, 0);
  assert.equal(c.eventsPublished, 42);
  assert.ok(c.outages >= 1);
  assert.equal(c.resent, 2, 'the batch that failed is the one re-sent');
  for (const topic of ['raw', 'audit']) {
    const values = (await readAll(transport, topic, 42)).map((r) => r.value!.toString());
    assert.deepEqual(
      values,
      Array.from({ length: 42 }, (_, i) => `e${i}`),
      topic,
    );
  }
  spool.close();
  await transport.close();
});

it('starts by draining a spool left by an earlier run', async () => {
  const dir = path.join(root, 'b');
  const old = new Spool({ dir, maxBytes: 1 << 20, segmentBytes: 4096, fsync: 'never' });
  old.append([0, 1, 2].map((i) => toSpoolPayload(event(i))));
  old.close();
  const transport = new FlakyTransport();
  await transport.createTopics([
    { name: 'raw', partitions: 1 },
    { name: 'audit', partitions: 1 },
  ]);
  const spool = new Spool({ dir, maxBytes: 1 << 20, segmentBytes: 4096, fsync: 'never' });
  const p = new Publisher(transport, spool, options, log);
  assert.equal(p.mode, 'offline');
  p.start();
  await p.submit([event(3)]);
  await p.stop(1000);
  const values = (await readAll(transport, 'raw', 4)).map((r) => r.value!.toString());
  assert.deepEqual(values, ['e0', 'e1', 'e2', 'e3']);
  assert.equal(spool.empty, true);
  spool.close();
  await transport.close();
});

it('leaves what it could not publish in the spool when stopped while the broker is down', async () => {
  const dir = path.join(root, 'c');
  const transport = new FlakyTransport();
  transport.down = true;
  const spool = new Spool({ dir, maxBytes: 1 << 20, segmentBytes: 4096, fsync: 'never' });
  const p = new Publisher(transport, spool, options, log);
  p.start();
  await p.submit([0, 1].map(event));
  await p.stop(50);
  spool.close();
  const again = new Spool({ dir, maxBytes: 1 << 20, segmentBytes: 4096, fsync: 'never' });
  assert.deepEqual(
    again.read(10).payloads.map((b) => fromSpoolPayload(b).value.toString()),
    ['e0', 'e1'],
  );
  again.close();
  await transport.close();
});

it('counts events a full spool refuses, and reports refused lifecycle records', async () => {
  const transport = new FlakyTransport();
  transport.down = true;
  const spool = new Spool({ dir: path.join(root, 'd'), maxBytes: 65536, segmentBytes: 8192, fsync: 'never' });
  const refused: Outgoing[] = [];
  const p = new Publisher(transport, spool, { ...options, onDroppedRecord: (o) => refused.push(o) }, log);
  p.start();
  await p.submit([event(0)]);
  await until(() => p.mode === 'offline');
  const big = (i: number): Outgoing => ({ ...event(i), value: Buffer.alloc(1000, i) });
  for (let i = 0; i < 100; i++) await p.submit([big(i)]);
  await p.submit([{ ...event(999), value: Buffer.alloc(4000), event: false }]);
  const c = p.counters();
  assert.ok(c.spoolDropped > 0);
  assert.equal(c.eventsSpooled + c.spoolDropped, 101);
  assert.equal(refused.length, 1);
  await p.stop(10);
  spool.close();
  await transport.close();
});

it('a crash mid-drain loses nothing and repeats only the batch whose acknowledgement was lost', async () => {
  const dir = path.join(root, 'crash');
  const old = new Spool({ dir, maxBytes: 1 << 20, segmentBytes: 4096, fsync: 'never' });
  old.append(Array.from({ length: 50 }, (_, i) => toSpoolPayload(event(i))));
  old.close();
  const transport = new FlakyTransport();
  await transport.createTopics([
    { name: 'raw', partitions: 1 },
    { name: 'audit', partitions: 1 },
  ]);
  // The third publish reaches the broker but its acknowledgement never comes back: then the process "dies".
  let release!: (err: Error) => void;
  const lostAck = new Promise<never>((_, reject) => {
    release = reject;
  });
  const real = transport.producer.bind(transport);
  let calls = 0;
  const crashing = Object.create(transport) as FlakyTransport;
  crashing.producer = async () => {
    const p = await real();
    return {
      publish: async (records) => {
        await p.publish(records);
        if (++calls === 3) await lostAck;
      },
      close: () => p.close(),
    };
  };
  const spoolA = new Spool({ dir, maxBytes: 1 << 20, segmentBytes: 4096, fsync: 'never' });
  const a = new Publisher(crashing, spoolA, { ...options, timeoutMs: 60_000 }, log);
  a.start();
  await until(() => calls === 3);
  // The restarted collector opens the same spool; the first process never ran again.
  const spoolB = new Spool({ dir, maxBytes: 1 << 20, segmentBytes: 4096, fsync: 'never' });
  const b = new Publisher(transport, spoolB, options, log);
  b.start();
  await b.stop(1000);
  const values = (await readAll(transport, 'raw', 60)).map((r) => r.value!.toString());
  const expected = [
    ...Array.from({ length: 30 }, (_, i) => `e${i}`),
    ...Array.from({ length: 30 }, (_, i) => `e${20 + i}`),
  ];
  assert.deepEqual(values, expected, 'everything, with only the unacknowledged batch (e20..e29) twice');
  assert.equal(spoolB.empty, true);
  // Let the first process's publisher end (its publish fails now) without touching the spool further.
  release(new Error('process died'));
  await a.stop(0);
  spoolA.close();
  spoolB.close();
  await transport.close();
});
