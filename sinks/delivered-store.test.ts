import assert from 'node:assert/strict';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { EdrError } from '../infra/errors.js';
import { DeliveredStore } from './delivered-store.js';

describe('delivered store', () => {
  it('remembers ids across a reopen, forgets expired ones, ignores a torn line', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-delivered-'));
    let now = 1_000_000;
    const s1 = await DeliveredStore.open({ dir, name: 's', windowMs: 1000, now: () => now });
    await s1.add(['a', 'b']);
    now += 600;
    await s1.add(['c', 'a']);
    await s1.close();
    await writeFile(
      path.join(dir, 's.delivered'),
      `${await readFile(path.join(dir, 's.delivered'), 'utf8')}1000700 tor`,
    );
    now += 600;
    const s2 = await DeliveredStore.open({ dir, name: 's', windowMs: 1000, now: () => now });
    assert.deepEqual(
      ['a', 'b', 'c', 'tor'].map((id) => s2.has(id)),
      [false, false, true, false],
    );
    await s2.close();
  });

  it('remembers at most maxEntries ids (the newest), never forgetting a held alert; counted; the journal follows', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-delivered-'));
    const s1 = await DeliveredStore.open({ dir, name: 's', windowMs: 3_600_000, maxEntries: 3 });
    const held = { id: 'h', key: 'k', topic: 't', partition: 0, offset: 0, recordKey: null, value: '' };
    await s1.hold([held]);
    await s1.add(['a', 'b', 'c', 'd', 'e']);
    assert.equal(s1.size, 3);
    assert.deepEqual(
      ['h', 'a', 'b', 'c', 'd', 'e'].map((id) => s1.has(id)),
      [true, false, false, false, true, true],
    );
    assert.equal(s1.evicted, 3);
    await s1.close();
    const s2 = await DeliveredStore.open({ dir, name: 's', windowMs: 3_600_000, maxEntries: 3 });
    assert.deepEqual(
      ['h', 'a', 'd', 'e'].map((id) => s2.has(id)),
      [true, false, true, true],
    );
    assert.equal(s2.held().length, 1);
    assert.equal((await readFile(path.join(dir, 's.delivered'), 'utf8')).trim().split('\n').length, 3);
    await s2.close();
  });

  it('refuses a state directory a live process holds', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-delivered-'));
    await writeFile(path.join(dir, 's.lock'), String(process.ppid));
    await assert.rejects(DeliveredStore.open({ dir, name: 's', windowMs: 1000 }), (err: unknown) => {
      return err instanceof EdrError && err.code === 'EDR_SINK_STATE_LOCKED';
    });
  });
});
