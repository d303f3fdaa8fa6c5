import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import { loadConfig, parseConfig } from '../infra/config.js';
import { EdrError } from '../infra/errors.js';
import { collectorConfigSchema } from './config.js';

const dir = mkdtempSync(path.join(tmpdir(), 'edr-collector-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

it('needs only the brokers: the eBPF source, the topics table, hashing off by default', () => {
  const c = parseConfig(collectorConfigSchema, { kafka: { brokers: ['127.0.0.1:9092'] } });
  assert.equal(c.source.type, 'ebpf');
  assert.equal(c.topics.raw, 'edr.execve.raw.v1');
  assert.equal(c.topics.audit, 'edr.execve.audit.v1');
  assert.equal(c.topics.schemas, 'edr.schemas.v1');
  assert.equal(c.hashing.enabled, false);
  assert.equal(c.spool.fsync, 'interval');
  assert.equal(c.publish.batchMaxEvents, 1000);
  assert.equal(c.host.id, undefined);
});

it('reads a replay source and overrides from YAML', () => {
  const file = path.join(dir, 'ok.yaml');
  writeFileSync(
    file,
    [
      'kafka: { brokers: ["k1:9092", "k2:9092"] }',
      'source: { type: replay, path: /tmp/events.jsonl }',
      'topics: { raw: my.raw }',
      'spool: { dir: /tmp/spool, fsync: always, maxBytes: 1048576 }',
      'hashing: { enabled: true }',
      'host: { id: test-host }',
    ].join('\n'),
  );
  const c = loadConfig(collectorConfigSchema, file);
  assert.deepEqual(c.source, {
    type: 'replay',
    path: '/tmp/events.jsonl',
    format: 'auto',
    batchMaxEvents: 512,
  });
  assert.equal(c.topics.raw, 'my.raw');
  assert.equal(c.topics.audit, 'edr.execve.audit.v1');
  assert.equal(c.spool.fsync, 'always');
  assert.equal(c.hashing.enabled, true);
  assert.equal(c.host.id, 'test-host');
});

it('reports every problem at once: unknown keys, unknown source type, bad units, missing brokers', () => {
  assert.throws(
    () =>
      parseConfig(
        collectorConfigSchema,
        {
          kafka: { brokers: [] },
          source: { type: 'pcap' },
          spool: { maxBytes: 10, fsync: 'sometimes' },
          publish: { batchMaxEvents: 0 },
          hashing: { enable: true },
        },
        'collector.yaml',
      ),
    (err: unknown) => {
      assert.ok(err instanceof EdrError);
      assert.equal(err.code, 'EDR_CONFIG_INVALID');
      for (const where of [
        'kafka.brokers',
        'source.type',
        'spool.maxBytes',
        'spool.fsync',
        'publish.batchMaxEvents',
        'hashing',
      ]) {
        assert.ok(err.message.includes(where), `${where} in\n${err.message}`);
      }
      assert.match(err.message, /enable/);
      return true;
    },
  );
});

it('a replay source needs its path; an eBPF source rejects replay keys', () => {
  assert.throws(
    () => parseConfig(collectorConfigSchema, { kafka: { brokers: ['k:1'] }, source: { type: 'replay' } }),
    /source\.path/,
  );
  assert.throws(
    () =>
      parseConfig(collectorConfigSchema, {
        kafka: { brokers: ['k:1'] },
        source: { type: 'ebpf', path: '/x' },
      }),
    /path/,
  );
});
