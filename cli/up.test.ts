import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import { collectorConfigSchema } from '../collector/config.js';
import { detectorConfigSchema } from '../detector/config.js';
import { loadConfig } from '../infra/config.js';
import { loadSinksConfig } from '../sinks/config.js';
import { configText } from './background.js';
import { localConfigs, localRulesKey } from './up.js';

const dir = mkdtempSync(path.join(tmpdir(), 'edr-up-'));
after(() => rmSync(dir, { recursive: true, force: true }));

it('writes configs each service loads, whatever characters the paths hold', () => {
  // Characters that need quoting in YAML: a colon and space, a hash, quotes.
  const stateDir = path.join(dir, 'state: #1 \'q"');
  const key = localRulesKey(stateDir);
  assert.equal(key.made, true);
  const configs = localConfigs({
    stateDir,
    brokers: ['127.0.0.1:9092', 'b:9093'],
    rulesDir: 'rules dir',
    rulesPublicKey: key.publicKey,
  });
  const write = (name: string, config: Record<string, unknown>): string => {
    const file = path.join(dir, `${name}.yaml`);
    const text = configText(config);
    assert.match(text, /^# written by edr up: the local pipeline\n/);
    writeFileSync(file, text);
    return file;
  };
  const collector = loadConfig(collectorConfigSchema, write('collector', configs.collector));
  assert.deepEqual(collector.kafka.brokers, ['127.0.0.1:9092', 'b:9093']);
  assert.equal(collector.kafka.clientId, 'edr-collector');
  assert.equal(collector.source.type, 'ebpf');
  assert.equal(collector.spool.dir, path.join(stateDir, 'collector-spool'));
  const detector = loadConfig(detectorConfigSchema, write('detector', configs.detector));
  assert.equal(detector.kafka.clientId, 'edr-detector');
  assert.equal(detector.rules.dir, path.resolve('rules dir'));
  // The detector follows the rules topic trusting the key pair made in the state dir.
  assert.equal(detector.rules.topic, true);
  assert.deepEqual(
    detector.rules.publicKeys.map((k) => k.id),
    [key.keyId],
  );
  const sinks = loadSinksConfig(write('sinks', configs.sinks));
  assert.equal(sinks.kafka.clientId, 'edr-sinks');
  assert.equal(sinks.stateDir, path.join(stateDir, 'sinks-state'));
  assert.deepEqual(sinks.sinks['alerts-file'], {
    ...sinks.sinks['alerts-file'],
    type: 'file',
    directory: path.join(stateDir, 'alerts'),
    file: 'alerts.jsonl',
  });
  assert.deepEqual(
    sinks.routes.map((r) => r.to),
    [['alerts-file']],
  );
});

it('makes the rules signing key pair once and keeps it', () => {
  const stateDir = path.join(dir, 'once');
  const first = localRulesKey(stateDir);
  const again = localRulesKey(stateDir);
  assert.equal(first.made, true);
  assert.equal(again.made, false);
  assert.equal(again.keyId, first.keyId);
  assert.equal(statSync(first.privateKey).mode & 0o777, 0o600);
});
