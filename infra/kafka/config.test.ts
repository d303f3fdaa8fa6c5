import assert from 'node:assert/strict';
import { it } from 'node:test';
import { parseConfig } from '../config.js';
import { kafkaConfigSchema } from './config.js';

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
