import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import { collectorConfigSchema } from '../collector/config.js';
import { detectorConfigSchema } from '../detector/config.js';
import { loadConfig } from '../infra/config.js';
import { kafkaSectionFromEnv } from '../infra/kafka/config.js';
import { loadSinksConfig } from '../sinks/config.js';
import { configText } from './background.js';
import { localConfigs, localRulesKey } from './up.js';

const dir = mkdtempSync(path.join(tmpdir(), 'edr-up-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, config: Record<string, unknown>): string {
  const file = path.join(dir, `${name}.yaml`);
  const text = configText(config);
  assert.match(text, /^# written by edr up: the local pipeline\n/);
  writeFileSync(file, text);
  return file;
}

it('writes configs each service loads, whatever characters the paths hold', () => {
  // Characters that need quoting in YAML: a colon and space, a hash, quotes.
  const stateDir = path.join(dir, 'state: #1 \'q"');
  const key = localRulesKey(stateDir);
  assert.equal(key.made, true);
  const configs = localConfigs({
    stateDir,
    kafka: { brokers: ['127.0.0.1:9092', 'b:9093'] },
    rulesDir: 'rules dir',
    rulesPublicKey: key.publicKey,
  });
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

it('gives every service the Kafka security settings of the environment, with the password as a reference', () => {
  const env = {
    EDR_KAFKA_BROKERS: 'kafka-1:9093,kafka-2:9093',
    EDR_KAFKA_TLS_CA_FILE: '/etc/edr/ca.pem',
    EDR_KAFKA_SASL_MECHANISM: 'scram-sha-512',
    EDR_KAFKA_SASL_USERNAME: 'edr-lab',
    EDR_KAFKA_SASL_PASSWORD: 'env-password-not-in-files',
  };
  Object.assign(process.env, env);
  try {
    const configs = localConfigs({
      stateDir: dir,
      kafka: kafkaSectionFromEnv(env),
      rulesDir: 'rules',
      rulesPublicKey: localRulesKey(path.join(dir, 'env')).publicKey,
    });
    for (const [name, config] of Object.entries(configs)) {
      const file = write(`env-${name}`, config);
      assert.doesNotMatch(readFileSync(file, 'utf8'), /env-password-not-in-files/);
    }
    const detector = loadConfig(detectorConfigSchema, path.join(dir, 'env-detector.yaml'));
    assert.deepEqual(detector.kafka.brokers, ['kafka-1:9093', 'kafka-2:9093']);
    assert.deepEqual(detector.kafka.tls, { caFile: '/etc/edr/ca.pem', rejectUnauthorized: true });
    assert.equal(detector.kafka.sasl?.mechanism, 'scram-sha-512');
    assert.equal(detector.kafka.sasl?.username, 'edr-lab');
    assert.equal(detector.kafka.sasl?.password.reveal(), 'env-password-not-in-files');
    assert.equal(detector.kafka.clientId, 'edr-detector');
  } finally {
    for (const k of Object.keys(env)) delete process.env[k];
  }
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
