/**
 * File sink over the real broker, in a real `edr sinks` process: every alert written exactly once across a
 * SIGKILL and a restart, size rotation as configured, and a path outside the directory refused at start.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { KafkaTransport } from '../../infra/kafka/transport.js';
import { repoRoot } from '../../infra/paths.js';
import { deadLetterHeaders } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import { stopOwnBroker, testTransport } from '../harness/broker.js';
import { unique, waitFor } from '../harness/names.js';
import {
  alertN,
  publishAlerts,
  readTopic as readRecords,
  sinksConfig,
  sinkTopics,
  tempDir,
  writeYaml,
} from './sinks-harness.js';

const cli = path.join(repoRoot, 'dist', 'cli', 'edr.js');

interface Proc {
  child: ChildProcess;
  stderr: () => string;
  exited: Promise<number | null>;
}

function startSinks(configFile: string): Proc {
  const child = spawn(process.execPath, [cli, 'sinks', '--config', configFile], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, EDR_LOG_LEVEL: 'warn' },
  });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, stderr: () => err, exited };
}

/** Every line of the sink's files (current and rotated), and the files with their sizes. */
async function readOutput(
  dir: string,
): Promise<{ ids: string[]; files: Array<{ name: string; size: number }> }> {
  const ids: string[] = [];
  const files: Array<{ name: string; size: number }> = [];
  for (const name of (await readdir(dir)).filter((n) => n.startsWith('alerts.jsonl')).sort()) {
    let text: string;
    let size: number;
    try {
      text = await readFile(path.join(dir, name), 'utf8');
      size = (await stat(path.join(dir, name))).size;
    } catch (err) {
      // Rotated away between the listing and the read (the sink is still running): the next poll sees it.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    files.push({ name, size });
    for (const line of text.split('\n')) {
      if (line === '') continue;
      try {
        ids.push((JSON.parse(line) as { alertId: string }).alertId);
      } catch {
        // a torn line of the killed process, cut on restart
      }
    }
  }
  return { ids, files };
}

describe('sinks: file', () => {
  let transport: KafkaTransport;
  before(async () => {
    transport = await testTransport('sinks-file-test');
  });
  after(async () => {
    await transport.close();
    await stopOwnBroker();
  });

  test('writes every alert once across SIGKILL and restart, rotating by size', {
    timeout: 90_000,
  }, async (t) => {
    const topics = await sinkTopics(transport);
    const dir = await tempDir('edr-sinks-file');
    const out = path.join(dir, 'out');
    const name = unique('archive');
    const maxBytes = 256 * 1024;
    const cfg = await sinksConfig(
      topics,
      path.join(dir, 'state'),
      {
        [name]: {
          type: 'file',
          directory: out,
          fsync: 'always',
          rotate: { maxBytes, keep: 1000 },
          maxBatchRecords: 100,
        },
      },
      [{ to: [name] }],
    );
    const file = await writeYaml(dir, cfg);
    // Several hosts, so the three partitions all carry alerts.
    const hosts = ['a', 'b', 'c', 'd', 'e', 'f'];
    const alerts = Array.from({ length: 4000 }, (_, i) =>
      alertN(i, {
        event: { ...alertN(i).event, hostId: `host-${hosts[i % hosts.length]}`, hostname: `h${i % 6}` },
      }),
    );
    await publishAlerts(transport, topics.alerts, alerts.slice(0, 2000));

    const first = startSinks(file);
    await waitFor('the first lines', async () => {
      try {
        return (await readOutput(out)).ids.length >= 300;
      } catch {
        return false;
      }
    });
    first.child.kill('SIGKILL');
    await first.exited;
    const atKill = (await readOutput(out)).ids.length;
    t.diagnostic(`${atKill} of 2000 written when killed`);
    // While the sink is down, more alerts arrive: the restart has work whatever the timing of the kill.
    await publishAlerts(transport, topics.alerts, alerts.slice(2000));

    const second = startSinks(file);
    try {
      await waitFor(
        `all 4000 alerts (had ${atKill} at the kill)`,
        async () => (await readOutput(out)).ids.length >= 4000,
        60_000,
      );
      // Give a duplicate the time to show up before judging.
      await new Promise((r) => setTimeout(r, 1500));
    } finally {
      second.child.kill('SIGTERM');
      assert.equal(await second.exited, 0, second.stderr());
    }
    const { ids, files } = await readOutput(out);
    assert.equal(ids.length, 4000, `${ids.length} lines (${atKill} at the kill)`);
    assert.equal(new Set(ids).size, 4000, 'no alert twice');
    assert.ok(files.length >= 4, `rotated into ${files.length} files`);
    for (const f of files) assert.ok(f.size <= maxBytes, `${f.name} is ${f.size} bytes`);
    // The full event is kept: bigints as decimal strings.
    const line = JSON.parse((await readFile(path.join(out, 'alerts.jsonl'), 'utf8')).split('\n')[0]!);
    assert.equal(typeof line.event.timeNs, 'string');
    assert.ok(line.event.argv.length > 0);
  });

  test('a crafted alert declaring 2^31 items is dead-lettered at once, the alerts around it delivered', {
    timeout: 60_000,
  }, async () => {
    const topics = await sinkTopics(transport, 1);
    const dir = await tempDir('edr-sinks-file-crafted');
    const out = path.join(dir, 'out');
    const name = unique('archive');
    const file = await writeYaml(
      dir,
      await sinksConfig(topics, path.join(dir, 'state'), { [name]: { type: 'file', directory: out } }, [
        { to: [name] },
      ]),
    );
    const codec = projectCodec();
    const good = codec.encode('dev.edr.v1.Alert', alertN(1));
    // The Alert header, four empty strings and a null, then ruleTags declaring 2^31 - 1 items in 0 bytes: avsc
    // alone loops and allocates an item per declared count (the sink ran out of memory on it).
    const crafted = Buffer.concat([
      good.subarray(0, 10),
      Buffer.from([0, 0, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 0x0f]),
    ]);
    const producer = await transport.producer();
    await producer.publish(
      [good, crafted, codec.encode('dev.edr.v1.Alert', alertN(2))].map((value) => ({
        topic: topics.alerts,
        key: 'host-a',
        value,
      })),
    );
    await producer.close();
    const p = startSinks(file);
    try {
      const dead = await readRecords(transport, topics.deadLetter, (r) => r.length >= 1, 30_000);
      assert.equal(dead[0]!.headers[deadLetterHeaders.errorCode]?.toString(), 'EDR_SCHEMA_CORRUPT');
      assert.match(
        dead[0]!.headers[deadLetterHeaders.error]?.toString() ?? '',
        /array block of 2147483647 items in 0 bytes/,
      );
      assert.deepEqual(dead[0]!.value, crafted);
      await waitFor('both good alerts', async () => {
        try {
          return (await readOutput(out)).ids.length >= 2;
        } catch {
          return false;
        }
      });
      assert.deepEqual((await readOutput(out)).ids, ['alert-1', 'alert-2']);
    } finally {
      p.child.kill('SIGTERM');
      assert.equal(await p.exited, 0, p.stderr());
    }
  });

  test('refuses a path outside its directory at start', { timeout: 30_000 }, async () => {
    const dir = await tempDir('edr-sinks-file-bad');
    const cfg = await sinksConfig(
      { alerts: 'x', undeliverable: 'y', deadLetter: 'z' },
      path.join(dir, 'state'),
      {
        escape: { type: 'file', directory: path.join(dir, 'out'), file: '../../etc/cron.d/evil' },
        absolute: { type: 'file', directory: path.join(dir, 'out'), file: '/etc/passwd' },
      },
      [{ to: ['escape', 'absolute'] }],
    );
    const p = startSinks(await writeYaml(dir, cfg));
    assert.equal(await p.exited, 1);
    assert.match(p.stderr(), /sinks\.escape\.file: path outside its directory/);
    assert.match(p.stderr(), /sinks\.absolute\.file: path outside its directory/);
    assert.deepEqual(await readdir(dir), ['sinks.yaml']);
  });
});
