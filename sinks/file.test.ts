import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { EdrError } from '../infra/errors.js';
import { createLogger } from '../infra/log.js';
import { sampleAlert } from '../test/fixtures/events.js';
import { create, type FileConfig, fileLines, insideDir, rotationDue } from './file.js';
import type { Message } from './sink.js';

const log = createLogger({}, 'error');
const msg = (...ids: string[]): Message => ({
  folds: ids.map((id) => {
    const a = sampleAlert({ alertId: id });
    return { key: 'k', alerts: [a], firstSeenNs: a.event.timeNs, lastSeenNs: a.event.timeNs };
  }),
});

function config(directory: string, over: Partial<FileConfig> = {}): FileConfig {
  return {
    directory,
    file: 'alerts.jsonl',
    fsync: 'always',
    fsyncIntervalMs: 1000,
    rotate: { maxBytes: 1 << 20, keep: 2 },
    startupReadBytes: 16 << 20,
    ...over,
  };
}

describe('file sink', () => {
  it('writes one JSON line per alert, the full event, bigints as strings', () => {
    const text = fileLines(msg('a', 'b').folds.flatMap((f) => f.alerts));
    const lines = text.split('\n');
    assert.equal(lines.length, 3);
    assert.equal(lines[2], '');
    const a = JSON.parse(lines[0]!);
    assert.equal(a.alertId, 'a');
    assert.equal(a.event.timeNs, '1795000000123456789');
    assert.equal(a.event.cgroupId, '9007199254740993');
    assert.deepEqual(a.event.argv, ['curl', '-fsSL', 'https://example.org/install.sh']);
  });

  it('rotates by size and by age', () => {
    const r = { maxBytes: 100, maxAgeMs: 1000 };
    const cases: Array<[number, number, number, boolean]> = [
      // size, incoming, age ms, rotate?
      [0, 500, 5000, false],
      [50, 50, 0, false],
      [50, 51, 0, true],
      [10, 10, 999, false],
      [10, 10, 1000, true],
    ];
    for (const [size, incoming, age, want] of cases) {
      assert.equal(
        rotationDue({ size, openedAtMs: 0 }, incoming, age, r),
        want,
        `${size} ${incoming} ${age}`,
      );
    }
    assert.equal(rotationDue({ size: 10, openedAtMs: 0 }, 10, 1e9, { maxBytes: 100 }), false);
  });

  it('confines paths to the directory', () => {
    const cases: Array<[string, boolean]> = [
      ['alerts.jsonl', true],
      ['sub/alerts.jsonl', true],
      ['../alerts.jsonl', false],
      ['sub/../../alerts.jsonl', false],
      ['/etc/passwd', false],
      ['.', false],
    ];
    for (const [f, want] of cases) assert.equal(insideDir('/var/log/edr', f), want, f);
  });

  it('appends, rotates keeping the configured count, and reports what it holds', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-file-sink-'));
    const one = fileLines(msg('x').folds[0]!.alerts).length;
    const sink = create(config(dir, { rotate: { maxBytes: one * 2, keep: 2 } }), {
      name: 'f',
      log,
      timeoutMs: 1000,
    });
    const signal = new AbortController().signal;
    for (const id of ['a', 'b', 'c', 'd', 'e', 'f', 'g']) await sink.send(msg(id), signal);
    await sink.close();
    assert.deepEqual((await readdir(dir)).sort(), ['alerts.jsonl', 'alerts.jsonl.1', 'alerts.jsonl.2']);
    const ids = async (f: string) =>
      (await readFile(path.join(dir, f), 'utf8'))
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).alertId);
    assert.deepEqual(await ids('alerts.jsonl'), ['g']);
    assert.deepEqual(await ids('alerts.jsonl.1'), ['e', 'f']);
    assert.deepEqual(await ids('alerts.jsonl.2'), ['c', 'd']);
    const again = create(config(dir, { rotate: { maxBytes: one * 2, keep: 2 } }), {
      name: 'f',
      log,
      timeoutMs: 1000,
    });
    assert.deepEqual([...(await again.delivered!())], ['g']);
    await again.close();
  });

  it('reads only the last startupReadBytes of the file at start-up, skipping the partial first line', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-file-sink-'));
    const ids = Array.from({ length: 3000 }, (_, i) => `id-${String(i).padStart(4, '0')}`);
    const text = fileLines(msg(...ids).folds.flatMap((f) => f.alerts));
    const lineBytes = Buffer.byteLength(text) / ids.length;
    assert.ok(Buffer.byteLength(text) > 2 << 20, 'the file is larger than the bound');
    await writeFile(path.join(dir, 'alerts.jsonl'), text);
    const sink = create(config(dir, { startupReadBytes: 1 << 20 }), { name: 'f', log, timeoutMs: 1000 });
    const got = [...(await sink.delivered!())];
    // The tail holds floor(bound / line) whole lines (every line is as long here), the newest ones.
    const whole = Math.floor((1 << 20) / lineBytes);
    assert.equal(got.length, whole);
    assert.deepEqual(got, ids.slice(ids.length - whole));
    await sink.close();
    assert.equal((await stat(path.join(dir, 'alerts.jsonl'))).size, Buffer.byteLength(text), 'nothing cut');
  });

  it('cuts a line torn by a kill, so the alert is written again whole', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-file-sink-'));
    const whole = fileLines(msg('a').folds[0]!.alerts);
    await writeFile(path.join(dir, 'alerts.jsonl'), whole + whole.slice(0, 40).replace('"a"', '"b"'));
    const sink = create(config(dir), { name: 'f', log, timeoutMs: 1000 });
    assert.deepEqual([...(await sink.delivered!())], ['a']);
    await sink.send(msg('b'), new AbortController().signal);
    await sink.close();
    const lines = (await readFile(path.join(dir, 'alerts.jsonl'), 'utf8')).trim().split('\n');
    assert.deepEqual(
      lines.map((l) => JSON.parse(l).alertId),
      ['a', 'b'],
    );
  });

  it('refuses a file that is a symlink out of the directory', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-file-sink-'));
    const outside = await mkdtemp(path.join(tmpdir(), 'edr-file-outside-'));
    await mkdir(path.join(dir, 'out'));
    await symlink(path.join(outside, 'target'), path.join(dir, 'out', 'alerts.jsonl'));
    await symlink(outside, path.join(dir, 'out', 'sub'));
    for (const file of ['alerts.jsonl', 'sub/alerts.jsonl']) {
      const sink = create(config(path.join(dir, 'out'), { file }), { name: 'f', log, timeoutMs: 1000 });
      await assert.rejects(sink.send(msg('a'), new AbortController().signal), (err: unknown) => {
        return err instanceof EdrError && err.code === 'EDR_SINK_FILE_PATH' && !err.retryable;
      });
      await sink.close();
    }
    assert.deepEqual(await readdir(outside), []);
  });

  it('does not follow a symlink planted at the file: neither writing nor cutting a torn line touches its target', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-file-sink-'));
    const outside = await mkdtemp(path.join(tmpdir(), 'edr-file-outside-'));
    const target = path.join(outside, 'precious');
    // No final newline: a sink that followed the link would cut it as a torn line at start.
    await writeFile(target, 'first line\nsecond line');
    await symlink(target, path.join(dir, 'alerts.jsonl'));
    const sink = create(config(dir), { name: 'f', log, timeoutMs: 1000 });
    const refused = (err: unknown) =>
      err instanceof EdrError &&
      err.code === 'EDR_SINK_FILE_PATH' &&
      !err.retryable &&
      err.message.includes('symlink');
    await assert.rejects(sink.delivered!(), refused);
    await assert.rejects(sink.send(msg('a'), new AbortController().signal), refused);
    await sink.close();
    assert.equal(await readFile(target, 'utf8'), 'first line\nsecond line');
  });

  it('creates its files 0600 whatever the umask, rotated ones included', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'edr-file-sink-'));
    const one = fileLines(msg('x').folds[0]!.alerts).length;
    const old = process.umask(0);
    try {
      const sink = create(config(dir, { rotate: { maxBytes: one, keep: 2 } }), {
        name: 'f',
        log,
        timeoutMs: 1000,
      });
      for (const id of ['a', 'b', 'c']) await sink.send(msg(id), new AbortController().signal);
      await sink.close();
    } finally {
      process.umask(old);
    }
    const files = (await readdir(dir)).sort();
    assert.deepEqual(files, ['alerts.jsonl', 'alerts.jsonl.1', 'alerts.jsonl.2']);
    for (const f of files) assert.equal((await stat(path.join(dir, f))).mode & 0o777, 0o600, f);
  });
});
