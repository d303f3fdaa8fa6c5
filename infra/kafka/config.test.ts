import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../config.js';
import { commandKafkaConfig, kafkaConfigSchema } from './config.js';

process.env['EDR_TEST_KAFKA_PASSWORD'] = 'not-a-real-password';
const sasl = (mechanism: string, more: Record<string, unknown> = {}) => ({
  mechanism,
  username: 'edr-collector',
  password: { env: 'EDR_TEST_KAFKA_PASSWORD' },
  ...more,
});
const parse = (kafka: Record<string, unknown>) =>
  parseConfig(kafkaConfigSchema, { brokers: ['kafka-1:9093'], ...kafka }, 'collector.yaml');

it('refuses SASL PLAIN without TLS, naming the key and the ways out, and never the password', () => {
  assert.throws(
    () => parse({ sasl: sasl('plain') }),
    (err: Error & { code?: string }) => {
      assert.equal(err.code, 'EDR_CONFIG_INVALID');
      assert.match(err.message, /sasl\.mechanism/);
      assert.match(err.message, /clear text/);
      assert.match(err.message, /allowPlainWithoutTls/);
      assert.doesNotMatch(err.message, /not-a-real-password/);
      return true;
    },
  );
});

it('takes SASL PLAIN over TLS, or without it when explicitly allowed; SCRAM without TLS', () => {
  assert.equal(parse({ tls: true, sasl: sasl('plain') }).sasl?.mechanism, 'plain');
  assert.equal(parse({ tls: { caFile: '/etc/edr/ca.pem' }, sasl: sasl('plain') }).sasl?.mechanism, 'plain');
  const allowed = parse({ sasl: sasl('plain', { allowPlainWithoutTls: true }) });
  assert.equal(allowed.sasl?.allowPlainWithoutTls, true);
  assert.equal(allowed.sasl?.password.reveal(), 'not-a-real-password');
  assert.equal(parse({ sasl: sasl('scram-sha-512') }).sasl?.mechanism, 'scram-sha-512');
  assert.equal(parse({}).sasl, undefined);
});

describe('the Kafka settings of a command', () => {
  const env = {
    EDR_KAFKA_BROKERS: 'kafka-1:9093, kafka-2:9093',
    EDR_KAFKA_TLS_CA_FILE: '/etc/edr/ca.pem',
    EDR_KAFKA_SASL_MECHANISM: 'scram-sha-512',
    EDR_KAFKA_SASL_USERNAME: 'edr-operator',
  };
  // The password is read where the reference points: the process's own environment.
  before(() => {
    process.env['EDR_KAFKA_SASL_PASSWORD'] = 'not-a-real-password';
  });
  after(() => {
    delete process.env['EDR_KAFKA_SASL_PASSWORD'];
  });

  it('come from the EDR_KAFKA_* environment, checked by the config schema', () => {
    const c = commandKafkaConfig({ clientId: 'edr-rules', env });
    assert.deepEqual(c.brokers, ['kafka-1:9093', 'kafka-2:9093']);
    assert.equal(c.clientId, 'edr-rules');
    assert.deepEqual(c.tls, { caFile: '/etc/edr/ca.pem', rejectUnauthorized: true });
    assert.equal(c.sasl?.username, 'edr-operator');
    assert.equal(c.sasl?.password.reveal(), 'not-a-real-password');
    assert.deepEqual(commandKafkaConfig({ clientId: 'x', env, brokers: 'other:9092' }).brokers, [
      'other:9092',
    ]);
  });

  it('refuse PLAIN without TLS from the environment too, and name no password', () => {
    const plain = { ...env, EDR_KAFKA_TLS_CA_FILE: '', EDR_KAFKA_SASL_MECHANISM: 'plain' };
    assert.throws(
      () => commandKafkaConfig({ clientId: 'x', env: plain }),
      (err: Error) =>
        /EDR_KAFKA_\* environment/.test(err.message) &&
        /clear text/.test(err.message) &&
        !err.message.includes('not-a-real-password'),
    );
    const allowed = commandKafkaConfig({
      clientId: 'x',
      env: { ...plain, EDR_KAFKA_SASL_ALLOW_PLAIN_WITHOUT_TLS: 'true' },
    });
    assert.equal(allowed.sasl?.allowPlainWithoutTls, true);
  });

  it('take a config file first, with --brokers replacing its brokers', () => {
    const fromFile = parse({ sasl: sasl('scram-sha-512') });
    const c = commandKafkaConfig({ fromFile, clientId: 'x', env, brokers: 'b-1:9093,b-2:9093' });
    assert.deepEqual(c.brokers, ['b-1:9093', 'b-2:9093']);
    assert.equal(c.sasl?.username, 'edr-collector');
    assert.throws(() => commandKafkaConfig({ fromFile, clientId: 'x', brokers: 'no port' }), /--brokers/);
  });

  it('say where brokers come from when none are given', () => {
    assert.throws(
      () => commandKafkaConfig({ clientId: 'x', env: {} }),
      (err: Error & { code?: string }) =>
        err.code === 'EDR_KAFKA_NO_BROKERS' && /EDR_KAFKA_BROKERS/.test(err.message),
    );
  });
});
