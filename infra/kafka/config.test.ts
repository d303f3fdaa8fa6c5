import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseConfig } from '../config.js';
import {
  commandKafkaConfig,
  type KafkaTransportConfig,
  kafkaConfigSchema,
  kafkaSectionFromEnv,
} from './config.js';

process.env['EDR_TEST_KAFKA_PASSWORD'] = 'not-a-real-password';
const sasl = (mechanism: string, more: Record<string, unknown> = {}) => ({
  mechanism,
  username: 'edr-collector',
  password: { env: 'EDR_TEST_KAFKA_PASSWORD' },
  ...more,
});
/** The user and password settings of a config (not OAUTHBEARER). */
function userSasl(c: KafkaTransportConfig) {
  assert.ok(c.sasl !== undefined && c.sasl.mechanism !== 'oauthbearer', 'SASL with a user and a password');
  return c.sasl;
}
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
  assert.equal(userSasl(allowed).allowPlainWithoutTls, true);
  assert.equal(userSasl(allowed).password.reveal(), 'not-a-real-password');
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
    assert.equal(userSasl(c).username, 'edr-operator');
    assert.equal(userSasl(c).password.reveal(), 'not-a-real-password');
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
    assert.equal(userSasl(allowed).allowPlainWithoutTls, true);
  });

  it('take a config file first, with --brokers replacing its brokers', () => {
    const fromFile = parse({ sasl: sasl('scram-sha-512') });
    const c = commandKafkaConfig({ fromFile, clientId: 'x', env, brokers: 'b-1:9093,b-2:9093' });
    assert.deepEqual(c.brokers, ['b-1:9093', 'b-2:9093']);
    assert.equal(userSasl(c).username, 'edr-collector');
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

describe('SASL OAUTHBEARER settings', () => {
  const endpoint = (more: Record<string, unknown> = {}) => ({
    mechanism: 'oauthbearer',
    tokenEndpoint: 'https://idp.example/oauth2/token',
    clientId: 'edr-collector',
    clientSecret: { env: 'EDR_TEST_KAFKA_PASSWORD' },
    ...more,
  });
  const problems = (kafka: Record<string, unknown>) => {
    try {
      parse(kafka);
    } catch (err) {
      assert.equal((err as { code?: string }).code, 'EDR_CONFIG_INVALID');
      assert.doesNotMatch((err as Error).message, /not-a-real-password/);
      return (err as Error).message;
    }
    assert.fail('accepted');
  };

  it('refuses a bearer token without TLS unless explicitly allowed', () => {
    assert.match(
      problems({ sasl: endpoint() }),
      /sasl\.mechanism: SASL OAUTHBEARER without TLS sends the bearer token in clear text.*allowWithoutTls/,
    );
    assert.match(problems({ sasl: { mechanism: 'oauthbearer', tokenFile: '/run/edr/token' } }), /clear text/);
    const c = parse({ tls: true, sasl: endpoint({ scope: 'kafka' }) });
    assert.ok(c.sasl?.mechanism === 'oauthbearer');
    assert.equal(c.sasl.clientSecret?.reveal(), 'not-a-real-password');
    assert.equal(c.sasl.tokenTimeoutMs, 10_000);
    assert.equal(parse({ sasl: endpoint({ allowWithoutTls: true }) }).sasl?.mechanism, 'oauthbearer');
  });

  it('wants https for the token endpoint, unless explicitly allowed, and one token source, complete', () => {
    const tls = { tls: true };
    assert.match(
      problems({ ...tls, sasl: endpoint({ tokenEndpoint: 'http://idp.example/token' }) }),
      /sasl\.tokenEndpoint: an http token endpoint gets the client secret in clear text.*allowInsecureTokenEndpoint/,
    );
    assert.equal(
      parse({
        ...tls,
        sasl: endpoint({ tokenEndpoint: 'http://127.0.0.1:8080/token', allowInsecureTokenEndpoint: true }),
      }).sasl?.mechanism,
      'oauthbearer',
    );
    assert.match(problems({ ...tls, sasl: endpoint({ tokenEndpoint: 'file:///etc/passwd' }) }), /https URL/);
    assert.match(
      problems({ ...tls, sasl: endpoint({ tokenEndpoint: 'https://u:p@idp.example/token' }) }),
      /no user or password in the URL/,
    );
    assert.match(
      problems({ ...tls, sasl: endpoint({ tokenFile: '/run/edr/token' }) }),
      /either tokenEndpoint .* or tokenFile/,
    );
    assert.match(problems({ ...tls, sasl: { mechanism: 'oauthbearer' } }), /either tokenEndpoint/);
    assert.match(
      problems({ ...tls, sasl: endpoint({ clientSecret: undefined }) }),
      /sasl\.clientSecret: the token endpoint needs the client secret/,
    );
    // A literal secret in a config file is refused, as a password is.
    assert.match(problems({ ...tls, sasl: endpoint({ clientSecret: 'literal' }) }), /sasl\.clientSecret/);
    assert.match(
      problems({ ...tls, sasl: { mechanism: 'oauthbearer', tokenFile: '/run/edr/token', clientId: 'x' } }),
      /sasl\.tokenFile: clientId, clientSecret and scope are for a tokenEndpoint/,
    );
    assert.match(problems({ ...tls, sasl: endpoint({ username: 'x' }) }), /username/);
  });

  it('come from the EDR_KAFKA_OAUTH_* environment, the secret by reference', () => {
    const env = {
      EDR_KAFKA_BROKERS: 'kafka-1:9093',
      EDR_KAFKA_TLS: 'true',
      EDR_KAFKA_SASL_MECHANISM: 'oauthbearer',
      EDR_KAFKA_OAUTH_TOKEN_ENDPOINT: 'https://idp.example/oauth2/token',
      EDR_KAFKA_OAUTH_CLIENT_ID: 'edr-replay',
      EDR_KAFKA_OAUTH_SCOPE: 'kafka',
    };
    process.env['EDR_KAFKA_OAUTH_CLIENT_SECRET'] = 'not-a-real-password';
    try {
      const section = kafkaSectionFromEnv(env);
      assert.deepEqual(section['sasl'], {
        mechanism: 'oauthbearer',
        tokenEndpoint: 'https://idp.example/oauth2/token',
        clientId: 'edr-replay',
        scope: 'kafka',
        clientSecret: { env: 'EDR_KAFKA_OAUTH_CLIENT_SECRET' },
      });
      const c = commandKafkaConfig({ clientId: 'edr-replay', env });
      assert.ok(c.sasl?.mechanism === 'oauthbearer');
      assert.equal(c.sasl.clientSecret?.reveal(), 'not-a-real-password');
    } finally {
      delete process.env['EDR_KAFKA_OAUTH_CLIENT_SECRET'];
    }
    const fromFile = kafkaSectionFromEnv({
      ...env,
      EDR_KAFKA_OAUTH_CLIENT_SECRET_FILE: '/run/secrets/edr-client',
    });
    assert.deepEqual((fromFile['sasl'] as Record<string, unknown>)['clientSecret'], {
      file: '/run/secrets/edr-client',
    });
    const tokenFile = commandKafkaConfig({
      clientId: 'x',
      env: {
        EDR_KAFKA_BROKERS: 'kafka-1:9092',
        EDR_KAFKA_SASL_MECHANISM: 'oauthbearer',
        EDR_KAFKA_OAUTH_TOKEN_FILE: '/run/edr/token',
        EDR_KAFKA_OAUTH_ALLOW_WITHOUT_TLS: 'true',
      },
    });
    assert.ok(tokenFile.sasl?.mechanism === 'oauthbearer');
    assert.equal(tokenFile.sasl.tokenFile, '/run/edr/token');
    assert.equal(tokenFile.sasl.allowWithoutTls, true);
    assert.throws(
      () =>
        commandKafkaConfig({
          clientId: 'x',
          env: {
            ...env,
            EDR_KAFKA_TLS: '',
            EDR_KAFKA_OAUTH_CLIENT_SECRET_FILE: fileURLToPath(import.meta.url),
          },
        }),
      /EDR_KAFKA_\* environment.*\n.*clear text/,
    );
  });
});
