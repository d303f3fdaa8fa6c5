/**
 * The Kafka connection settings. Kept apart from the client: a process that only reads its config (the services'
 * config files import this schema) does not load kafkajs.
 */
import { z } from 'zod';
import { parseConfig, secret } from '../config.js';
import { EdrError } from '../errors.js';

const brokersSchema = z
  .array(z.string().regex(/^[^\s:]+:\d+$/, 'expected host:port'))
  .min(1, 'at least one broker');

/**
 * SASL OAUTHBEARER: a bearer token from an OAuth 2.0 token endpoint (client-credentials grant) or from a file that
 * something else keeps fresh. Exactly one of the two.
 */
const oauthBearerSchema = z
  .strictObject({
    mechanism: z.literal('oauthbearer'),
    tokenEndpoint: z.url().optional(),
    clientId: z.string().min(1).optional(),
    clientSecret: secret().optional(),
    /** Space-separated scopes, as the endpoint expects them. */
    scope: z.string().min(1).optional(),
    /** A file holding the token (a JWT), read again whenever a connection authenticates. */
    tokenFile: z.string().min(1).optional(),
    /** How long one request to the token endpoint may take. */
    tokenTimeoutMs: z.number().int().positive().default(10_000),
    /** The endpoint over plain http: the client secret in clear text, so only when this says so (tests, labs). */
    allowInsecureTokenEndpoint: z.boolean().default(false),
    /** A bearer token is a password on the wire: without TLS only when this says so. */
    allowWithoutTls: z.boolean().default(false),
  })
  .superRefine((o, ctx) => {
    const issue = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], message });
    if ((o.tokenEndpoint === undefined) === (o.tokenFile === undefined)) {
      issue('tokenEndpoint', 'give either tokenEndpoint (with clientId and clientSecret) or tokenFile');
    }
    if (o.tokenEndpoint !== undefined) {
      if (o.clientId === undefined) issue('clientId', 'the token endpoint needs the client id');
      if (o.clientSecret === undefined) issue('clientSecret', 'the token endpoint needs the client secret');
      const u = URL.parse(o.tokenEndpoint);
      if (u === null) return;
      if (u.protocol !== 'https:' && !(u.protocol === 'http:' && o.allowInsecureTokenEndpoint)) {
        issue(
          'tokenEndpoint',
          u.protocol === 'http:'
            ? 'an http token endpoint gets the client secret in clear text: use https, or set allowInsecureTokenEndpoint: true'
            : 'expected an https URL',
        );
      }
      // Credentials in the URL would be in every message that names the endpoint.
      if (u.username !== '' || u.password !== '') issue('tokenEndpoint', 'no user or password in the URL');
    } else if (o.clientId !== undefined || o.clientSecret !== undefined || o.scope !== undefined) {
      issue('tokenFile', 'clientId, clientSecret and scope are for a tokenEndpoint, not a tokenFile');
    }
  });

/** Connection settings, as they appear under `kafka:` in every service's config. */
export const kafkaConfigSchema = z
  .strictObject({
    brokers: brokersSchema,
    clientId: z.string().min(1).default('edr'),
    tls: z
      .union([
        z.boolean(),
        z.strictObject({
          caFile: z.string().optional(),
          certFile: z.string().optional(),
          keyFile: z.string().optional(),
          rejectUnauthorized: z.boolean().default(true),
        }),
      ])
      .default(false),
    sasl: z
      .discriminatedUnion('mechanism', [
        z.strictObject({
          mechanism: z.enum(['scram-sha-256', 'scram-sha-512', 'plain']),
          username: z.string().min(1),
          password: secret(),
          /** PLAIN sends the password as it is: without TLS only when this says so (a lab, a sidecar proxy). */
          allowPlainWithoutTls: z.boolean().default(false),
        }),
        oauthBearerSchema,
      ])
      .optional(),
    /** Replication factor for topics this transport creates (1 for a single development broker). */
    replicationFactor: z.number().int().min(1).default(1),
    connectionTimeoutMs: z.number().int().positive().default(5000),
    requestTimeoutMs: z.number().int().positive().default(30000),
    /** How long a silent group member keeps its partitions. */
    sessionTimeoutMs: z.number().int().positive().default(10000),
    /**
     * Most record bytes sent in one produce request. A partition's records in a request form one record batch,
     * which the broker refuses above its message.max.bytes (1 MiB by default): larger sends (a burst of alerts in
     * one transaction) go as several requests.
     */
    maxRequestBytes: z.number().int().min(1024).default(900_000),
  })
  .superRefine((c, ctx) => {
    if (c.tls !== false || c.sasl === undefined) return;
    // Anyone on the path between a host and the broker would read the password, then write the rules topic; whoever
    // reads a bearer token is the service until it expires.
    const inClear =
      c.sasl.mechanism === 'plain' && !c.sasl.allowPlainWithoutTls
        ? 'SASL PLAIN without TLS sends the password in clear text: set tls, use scram-sha-512, ' +
          'or set sasl.allowPlainWithoutTls: true'
        : c.sasl.mechanism === 'oauthbearer' && !c.sasl.allowWithoutTls
          ? 'SASL OAUTHBEARER without TLS sends the bearer token in clear text: set tls, ' +
            'or set sasl.allowWithoutTls: true'
          : undefined;
    if (inClear !== undefined)
      ctx.addIssue({ code: 'custom', path: ['sasl', 'mechanism'], message: inClear });
  });
export type KafkaConfigInput = z.input<typeof kafkaConfigSchema>;
export type KafkaTransportConfig = z.output<typeof kafkaConfigSchema>;

/**
 * The settings of a command run without a service config (`edr replay`, `edr rules`, `edr topics`, `edr up`): the
 * `EDR_KAFKA_*` environment, read into the same schema as the config files, so the same checks apply (SASL PLAIN
 * without TLS refused, secrets never printed). The password is only ever referenced (`{ env }` or `{ file }`), so
 * the config `edr up` writes for its services carries no secret.
 */
export const kafkaEnvironment = {
  EDR_KAFKA_BROKERS: 'host:port,... (brokers)',
  EDR_KAFKA_CLIENT_ID: 'client id (clientId)',
  EDR_KAFKA_TLS: 'true to connect with TLS and the system CAs (tls)',
  EDR_KAFKA_TLS_CA_FILE: 'PEM file of the CA that signed the brokers (tls.caFile)',
  EDR_KAFKA_TLS_CERT_FILE: 'client certificate, PEM (tls.certFile)',
  EDR_KAFKA_TLS_KEY_FILE: 'client key, PEM (tls.keyFile)',
  EDR_KAFKA_SASL_MECHANISM: 'scram-sha-512, scram-sha-256, plain or oauthbearer (sasl.mechanism)',
  EDR_KAFKA_SASL_USERNAME: 'the principal (sasl.username)',
  EDR_KAFKA_SASL_PASSWORD: 'its password (sasl.password), or',
  EDR_KAFKA_SASL_PASSWORD_FILE: 'a file holding it',
  EDR_KAFKA_SASL_ALLOW_PLAIN_WITHOUT_TLS: 'true to allow PLAIN without TLS (sasl.allowPlainWithoutTls)',
  EDR_KAFKA_OAUTH_TOKEN_ENDPOINT: 'oauthbearer: the https token endpoint (sasl.tokenEndpoint), with',
  EDR_KAFKA_OAUTH_CLIENT_ID: 'the client id (sasl.clientId) and',
  EDR_KAFKA_OAUTH_CLIENT_SECRET: 'the client secret (sasl.clientSecret), or',
  EDR_KAFKA_OAUTH_CLIENT_SECRET_FILE: 'a file holding it',
  EDR_KAFKA_OAUTH_SCOPE: 'scopes to ask for (sasl.scope)',
  EDR_KAFKA_OAUTH_TOKEN_FILE: 'oauthbearer: a file holding the token instead (sasl.tokenFile)',
  EDR_KAFKA_OAUTH_ALLOW_INSECURE_TOKEN_ENDPOINT:
    'true to allow an http endpoint (sasl.allowInsecureTokenEndpoint)',
  EDR_KAFKA_OAUTH_ALLOW_WITHOUT_TLS: 'true to allow oauthbearer without TLS (sasl.allowWithoutTls)',
} as const;

/** The lines a command's --help gives about where its Kafka settings come from. */
export function kafkaUsage(configWhat: string): string {
  const env = Object.entries(kafkaEnvironment).map(([k, v]) => `      ${k.padEnd(46)}${v}`);
  return [
    `    --config FILE       ${configWhat}`,
    '    --brokers LIST      host:port,... (replaces the brokers of the config or the environment)',
    '    without --config, the Kafka settings come from the environment:',
    ...env,
  ].join('\n');
}

/** The `kafka:` section the environment describes, before validation; undefined keys are left out. */
export function kafkaSectionFromEnv(env: NodeJS.ProcessEnv = process.env): Record<string, unknown> {
  const get = (name: keyof typeof kafkaEnvironment) => {
    const v = env[name];
    return v === undefined || v === '' ? undefined : v;
  };
  const flag = (name: keyof typeof kafkaEnvironment) => {
    const v = get(name);
    return v === undefined
      ? undefined
      : v === 'true' || v === '1'
        ? true
        : v === 'false' || v === '0'
          ? false
          : v;
  };
  const section: Record<string, unknown> = {};
  const brokers = get('EDR_KAFKA_BROKERS');
  if (brokers !== undefined) section['brokers'] = brokers.split(',').map((b) => b.trim());
  const clientId = get('EDR_KAFKA_CLIENT_ID');
  if (clientId !== undefined) section['clientId'] = clientId;
  const files = {
    caFile: get('EDR_KAFKA_TLS_CA_FILE'),
    certFile: get('EDR_KAFKA_TLS_CERT_FILE'),
    keyFile: get('EDR_KAFKA_TLS_KEY_FILE'),
  };
  const tls = flag('EDR_KAFKA_TLS');
  if (Object.values(files).some((f) => f !== undefined)) {
    section['tls'] = Object.fromEntries(Object.entries(files).filter(([, v]) => v !== undefined));
  } else if (tls !== undefined) section['tls'] = tls;
  const mechanism = get('EDR_KAFKA_SASL_MECHANISM');
  if (mechanism === 'oauthbearer') {
    section['sasl'] = oauthSectionFromEnv(get, flag);
  } else if (mechanism !== undefined) {
    const file = get('EDR_KAFKA_SASL_PASSWORD_FILE');
    section['sasl'] = {
      mechanism,
      username: get('EDR_KAFKA_SASL_USERNAME'),
      // A reference, never the value: the config `edr up` writes from this stays free of secrets.
      password: file !== undefined ? { file } : { env: 'EDR_KAFKA_SASL_PASSWORD' },
      ...(flag('EDR_KAFKA_SASL_ALLOW_PLAIN_WITHOUT_TLS') !== undefined
        ? { allowPlainWithoutTls: flag('EDR_KAFKA_SASL_ALLOW_PLAIN_WITHOUT_TLS') }
        : {}),
    };
  }
  return section;
}

/** `sasl:` for OAUTHBEARER from the environment; what is not set is left out, for the schema to name. */
function oauthSectionFromEnv(
  get: (name: keyof typeof kafkaEnvironment) => string | undefined,
  flag: (name: keyof typeof kafkaEnvironment) => unknown,
): Record<string, unknown> {
  const entries: Array<[string, unknown]> = [
    ['mechanism', 'oauthbearer'],
    ['tokenEndpoint', get('EDR_KAFKA_OAUTH_TOKEN_ENDPOINT')],
    ['clientId', get('EDR_KAFKA_OAUTH_CLIENT_ID')],
    ['scope', get('EDR_KAFKA_OAUTH_SCOPE')],
    ['tokenFile', get('EDR_KAFKA_OAUTH_TOKEN_FILE')],
    ['allowInsecureTokenEndpoint', flag('EDR_KAFKA_OAUTH_ALLOW_INSECURE_TOKEN_ENDPOINT')],
    ['allowWithoutTls', flag('EDR_KAFKA_OAUTH_ALLOW_WITHOUT_TLS')],
  ];
  const secretFile = get('EDR_KAFKA_OAUTH_CLIENT_SECRET_FILE');
  // A reference, never the value, as for the password; only with an endpoint, which is what needs it.
  if (secretFile !== undefined) entries.push(['clientSecret', { file: secretFile }]);
  else if (get('EDR_KAFKA_OAUTH_TOKEN_ENDPOINT') !== undefined) {
    entries.push(['clientSecret', { env: 'EDR_KAFKA_OAUTH_CLIENT_SECRET' }]);
  }
  return Object.fromEntries(entries.filter(([, v]) => v !== undefined));
}

/**
 * The Kafka settings of a command: a config file's `kafka:` section when `--config` gave one, else the
 * `EDR_KAFKA_*` environment; `--brokers` replaces the brokers of either.
 */
export function commandKafkaConfig(o: {
  fromFile?: KafkaTransportConfig;
  brokers?: string;
  clientId: string;
  env?: NodeJS.ProcessEnv;
}): KafkaTransportConfig {
  const brokers = o.brokers?.split(',').map((b) => b.trim());
  if (o.fromFile !== undefined) {
    return brokers === undefined
      ? o.fromFile
      : { ...o.fromFile, brokers: parseConfig(brokersSchema, brokers, '--brokers') };
  }
  const section = { clientId: o.clientId, ...kafkaSectionFromEnv(o.env), ...(brokers ? { brokers } : {}) };
  if (section['brokers'] === undefined) {
    throw new EdrError(
      'EDR_KAFKA_NO_BROKERS',
      'give --config FILE, --brokers HOST:PORT,... or EDR_KAFKA_BROKERS',
    );
  }
  return parseConfig(kafkaConfigSchema, section, 'the EDR_KAFKA_* environment');
}
