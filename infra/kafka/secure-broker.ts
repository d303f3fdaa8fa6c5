/**
 * What makes the development broker a secured one (broker.ts `security`): a test CA and a broker certificate made
 * with openssl, SCRAM-SHA-512 users written at format time, the standard authorizer denying what no ACL allows,
 * and the ACL table applied once the broker answers.
 *
 * Listeners, all on loopback:
 * - SASL_SSL (clients): TLS, then SCRAM-SHA-512; the principal is the SCRAM user. With `unsecuredOAuthBearer`
 *   (tests only), OAUTHBEARER too; the principal is the token's `sub`.
 * - BROKER (inter-broker; the broker sends itself transaction markers) and CONTROLLER: TLS with a client
 *   certificate required. The only certificate the CA ever signed is the broker's (the CA key is deleted once it
 *   has), so the only principal these listeners admit is the broker's own, `User:CN=edr-broker`, a super user.
 *   No listener admits an unauthenticated (ANONYMOUS) client.
 */
import { execFile } from 'node:child_process';
import { pbkdf2Sync, randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { EdrError } from '../errors.js';
import { retry } from '../retry.js';
import type { AclOperation, AclRow } from './acls.js';

const run = promisify(execFile);

export interface ScramUser {
  name: string;
  password: string;
}

export interface BrokerSecurity {
  /**
   * SCRAM-SHA-512 users, written when the storage is formatted: a broker restarted on a formatted directory keeps
   * the users (and passwords) of its first start.
   */
  users: ScramUser[];
  /** Of those, the ones with every right (the broker's own certificate principal always is one). */
  superUsers?: string[];
  /** Applied once the broker answers, through its own certificate principal. */
  acls?: AclRow[];
  /**
   * Also OAUTHBEARER on the SASL_SSL listener, checked by Kafka's default server-side validator: the UNSECURED one,
   * which takes unsigned JWTs (`alg: none`) and makes the `sub` claim the principal, so anyone can be anyone.
   * For tests only (a token endpoint in the test issues such tokens); a real broker validates signatures against
   * the identity provider's JWKS (infra/deploy/README.md).
   */
  unsecuredOAuthBearer?: boolean;
  /**
   * connections.max.reauth.ms: the longest SASL session before the client must authenticate again (0, Kafka's
   * default: forever). An OAUTHBEARER session never outlives its token.
   */
  maxReauthMs?: number;
}

/** The principal of the broker's certificate: its inter-broker and controller identity. */
export const BROKER_PRINCIPAL = 'User:CN=edr-broker';

export interface BrokerTls {
  caFile: string;
  caPem: string;
  certPem: string;
  keyPem: string;
  keystore: string;
  truststore: string;
  /** Of both PKCS12 stores; it stays in the broker's directory (server.properties, mode 600). */
  storePassword: string;
}

async function tool(cmd: string, args: string[], env: Record<string, string> = {}): Promise<void> {
  try {
    await run(cmd, args, { env: { ...process.env, ...env } });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    const why =
      e.code === 'ENOENT'
        ? `${cmd} is not installed (infra/setup.sh installs it)`
        : `${cmd} ${args[0]} failed: ${e.stderr ?? e.message}`;
    throw new EdrError('EDR_KAFKA_BROKER_TLS', `making the broker's certificates: ${why}`);
  }
}

/** A CA, a broker certificate for 127.0.0.1 and localhost signed by it, and the key and trust stores. */
export async function makeBrokerTls(dir: string): Promise<BrokerTls> {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const f = (name: string) => path.join(dir, name);
  const storePassword = randomBytes(18).toString('base64url');
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await tool('openssl', [
    'req',
    '-x509',
    ...ec,
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.pem'),
    '-days',
    '30',
    '-subj',
    '/CN=edr-test-ca',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  await tool('openssl', [
    'req',
    '-new',
    ...ec,
    '-keyout',
    f('broker.key'),
    '-out',
    f('broker.csr'),
    '-subj',
    '/CN=edr-broker',
  ]);
  await writeFile(
    f('broker.ext'),
    [
      'basicConstraints=CA:FALSE',
      'keyUsage=critical,digitalSignature,keyAgreement',
      // The same certificate serves the broker's listeners and its own connections to them.
      'extendedKeyUsage=serverAuth,clientAuth',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ].join('\n'),
  );
  await tool('openssl', [
    'x509',
    '-req',
    '-in',
    f('broker.csr'),
    '-CA',
    f('ca.pem'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-days',
    '30',
    '-extfile',
    f('broker.ext'),
    '-out',
    f('broker.pem'),
  ]);
  // No other certificate can ever be signed: the mutual-TLS listeners admit the broker alone.
  await rm(f('ca.key'));
  const pass = { EDR_STORE_PASSWORD: storePassword };
  await tool(
    'openssl',
    [
      'pkcs12',
      '-export',
      '-in',
      f('broker.pem'),
      '-inkey',
      f('broker.key'),
      '-certfile',
      f('ca.pem'),
      '-name',
      'broker',
      '-out',
      f('keystore.p12'),
      '-passout',
      'env:EDR_STORE_PASSWORD',
    ],
    pass,
  );
  // keytool marks the CA as a trusted entry, which Java needs and openssl's PKCS12 does not write.
  await tool(
    'keytool',
    [
      '-importcert',
      '-noprompt',
      '-alias',
      'edr-test-ca',
      '-file',
      f('ca.pem'),
      '-keystore',
      f('truststore.p12'),
      '-storetype',
      'PKCS12',
      '-storepass:env',
      'EDR_STORE_PASSWORD',
    ],
    pass,
  );
  const [caPem, certPem, keyPem] = await Promise.all(
    ['ca.pem', 'broker.pem', 'broker.key'].map((n) => readFile(f(n), 'utf8')),
  );
  return {
    caFile: f('ca.pem'),
    caPem: caPem!,
    certPem: certPem!,
    keyPem: keyPem!,
    keystore: f('keystore.p12'),
    truststore: f('truststore.p12'),
    storePassword,
  };
}

// Names go into super.users (';'-separated) and StorageTool's `[name=…,…]`: nothing that could split either.
const USER_NAME = /^[A-Za-z0-9._-]{1,128}$/;

function checkSecurity(security: BrokerSecurity): void {
  const names = new Set<string>();
  for (const u of security.users) {
    if (!USER_NAME.test(u.name)) {
      throw new EdrError(
        'EDR_KAFKA_BROKER_SECURITY',
        `SCRAM user name '${u.name}': letters, digits and . _ - only`,
      );
    }
    if (u.password.length < 8) {
      throw new EdrError(
        'EDR_KAFKA_BROKER_SECURITY',
        `SCRAM user ${u.name}: a password of 8 characters at least`,
      );
    }
    names.add(u.name);
  }
  for (const s of security.superUsers ?? []) {
    if (!names.has(s)) {
      throw new EdrError('EDR_KAFKA_BROKER_SECURITY', `super user ${s} is not one of the SCRAM users`);
    }
  }
}

/** The listener, TLS, SASL and authorizer lines of server.properties. */
export function brokerSecurityProperties(
  port: number,
  brokerPort: number,
  controllerPort: number,
  t: BrokerTls,
  security: BrokerSecurity,
): string[] {
  checkSecurity(security);
  const supers = [BROKER_PRINCIPAL, ...(security.superUsers ?? []).map((s) => `User:${s}`)];
  const mechanisms = security.unsecuredOAuthBearer ? 'SCRAM-SHA-512,OAUTHBEARER' : 'SCRAM-SHA-512';
  return [
    `listeners=SASL_SSL://127.0.0.1:${port},BROKER://127.0.0.1:${brokerPort},CONTROLLER://127.0.0.1:${controllerPort}`,
    `advertised.listeners=SASL_SSL://127.0.0.1:${port},BROKER://127.0.0.1:${brokerPort}`,
    'inter.broker.listener.name=BROKER',
    'listener.security.protocol.map=SASL_SSL:SASL_SSL,BROKER:SSL,CONTROLLER:SSL',
    'ssl.keystore.type=PKCS12',
    `ssl.keystore.location=${t.keystore}`,
    `ssl.keystore.password=${t.storePassword}`,
    `ssl.key.password=${t.storePassword}`,
    'ssl.truststore.type=PKCS12',
    `ssl.truststore.location=${t.truststore}`,
    `ssl.truststore.password=${t.storePassword}`,
    'listener.name.broker.ssl.client.auth=required',
    'listener.name.controller.ssl.client.auth=required',
    'listener.name.sasl_ssl.ssl.client.auth=none',
    `sasl.enabled.mechanisms=${mechanisms}`,
    `listener.name.sasl_ssl.sasl.enabled.mechanisms=${mechanisms}`,
    'listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;',
    ...(security.unsecuredOAuthBearer
      ? [
          // No sasl.server.callback.handler.class: the unsecured validator (see BrokerSecurity). The login
          // module's own (unsecured) token is never used: the broker talks to itself on the BROKER listener.
          'listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="edr-broker";',
        ]
      : []),
    ...(security.maxReauthMs !== undefined ? [`connections.max.reauth.ms=${security.maxReauthMs}`] : []),
    'authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer',
    'allow.everyone.if.no.acl.found=false',
    `super.users=${supers.join(';')}`,
  ];
}

/**
 * StorageTool's `--add-scram` arguments. The salted password is computed here (PBKDF2-HMAC-SHA-512, as SCRAM
 * defines it), so the clear password never appears on a command line.
 */
export function scramArguments(users: ScramUser[]): string[] {
  const iterations = 8192;
  return users.map((u) => {
    const salt = randomBytes(24);
    const salted = pbkdf2Sync(u.password, salt, iterations, 64, 'sha512');
    return `--add-scram=SCRAM-SHA-512=[name=${u.name},iterations=${iterations},salt="${salt.toString('base64')}",saltedpassword="${salted.toString('base64')}"]`;
  });
}

/** Adds `rows` as the broker itself (its certificate on the BROKER listener), then waits until it enforces them. */
export async function applyAcls(brokerAddress: string, t: BrokerTls, rows: AclRow[]): Promise<void> {
  const kafkajs = (await import('kafkajs')).default;
  const { AclOperationTypes, AclPermissionTypes, AclResourceTypes, ResourcePatternTypes } = kafkajs;
  const kafka = new kafkajs.Kafka({
    clientId: 'edr-broker-acls',
    brokers: [brokerAddress],
    ssl: { ca: t.caPem, cert: t.certPem, key: t.keyPem },
    logLevel: kafkajs.logLevel.NOTHING,
  });
  const resource = {
    topic: AclResourceTypes.TOPIC,
    group: AclResourceTypes.GROUP,
    'transactional-id': AclResourceTypes.TRANSACTIONAL_ID,
    cluster: AclResourceTypes.CLUSTER,
  } as const;
  const op: Record<AclOperation, number> = {
    READ: AclOperationTypes.READ,
    WRITE: AclOperationTypes.WRITE,
    CREATE: AclOperationTypes.CREATE,
    DESCRIBE: AclOperationTypes.DESCRIBE,
    DESCRIBE_CONFIGS: AclOperationTypes.DESCRIBE_CONFIGS,
  };
  const entries = rows.flatMap((r) =>
    r.operations.map((o) => ({
      resourceType: resource[r.resource],
      resourceName: r.name,
      resourcePatternType:
        r.pattern === 'prefixed' ? ResourcePatternTypes.PREFIXED : ResourcePatternTypes.LITERAL,
      principal: r.principal,
      host: '*',
      operation: op[o],
      permissionType: AclPermissionTypes.ALLOW,
    })),
  );
  const admin = kafka.admin();
  try {
    await admin.connect();
    await admin.createAcls({ acl: entries as never });
    // The controller commits them; the broker's authorizer applies them a moment later.
    await retry(
      async () => {
        const got = await admin.describeAcls({
          resourceType: AclResourceTypes.ANY,
          resourcePatternType: ResourcePatternTypes.ANY,
          operation: AclOperationTypes.ANY,
          permissionType: AclPermissionTypes.ANY,
        } as never);
        const n = got.resources.reduce((a, r) => a + r.acls.length, 0);
        if (n < entries.length) {
          throw new EdrError('EDR_KAFKA_BROKER_ACLS', `${n} of ${entries.length} ACLs in force`, {
            retryable: true,
          });
        }
      },
      { maxAttempts: 50, backoff: { initialMs: 100, maxMs: 200, jitter: 'none' } },
    );
  } catch (err) {
    if (err instanceof EdrError) throw err;
    throw new EdrError('EDR_KAFKA_BROKER_ACLS', `applying the ACL table: ${(err as Error).message}`, {
      cause: err,
    });
  } finally {
    await admin.disconnect().catch(() => {});
  }
}
