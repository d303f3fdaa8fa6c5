/**
 * A real single-node Apache Kafka (KRaft, combined broker+controller) on loopback, for development and tests.
 * The jars come from Maven Central through infra/kafka/pom.xml (fetched once into infra/kafka/lib).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { EdrError } from '../errors.js';
import { repoRoot } from '../paths.js';
import { abortableDelay, retry } from '../retry.js';
import {
  applyAcls,
  type BrokerSecurity,
  type BrokerTls,
  brokerSecurityProperties,
  makeBrokerTls,
  scramArguments,
} from './secure-broker.js';

export type { BrokerSecurity, ScramUser } from './secure-broker.js';

const run = promisify(execFile);
const kafkaDir = path.join(repoRoot, 'infra', 'kafka');
const libDir = path.join(kafkaDir, 'lib');
const pomPath = path.join(kafkaDir, 'pom.xml');

export interface BrokerOptions {
  /** Folder for config, data and the broker's log. Created; wiped first when `fresh`. */
  dir: string;
  /** Client port; 0 picks a free loopback port. */
  port?: number;
  /** Controller port; 0 picks a free loopback port. */
  controllerPort?: number;
  heapMb?: number;
  fresh?: boolean;
  /** Keep the broker running after this process exits (the CLI's `edr broker start`). */
  detached?: boolean;
  /** A SASL_SSL client listener with SCRAM users and ACLs instead of the plaintext one (see secure-broker.ts). */
  security?: BrokerSecurity;
  /** One node of a replicated cluster (infra/kafka/cluster.ts) instead of a cluster of its own. */
  quorum?: QuorumMember;
}

/** A node's place in a multi-node KRaft cluster: all nodes share the voters and the cluster id. */
export interface QuorumMember {
  nodeId: number;
  /** `controller.quorum.voters`: `1@127.0.0.1:PORT,2@...`. */
  voters: string;
  clusterId: string;
  /** Replication of the internal topics (offsets, transaction state); their min ISR is one less, at least 1. */
  replication: number;
}

export interface Broker {
  /** bootstrap address, e.g. 127.0.0.1:9092 */
  readonly brokers: string[];
  readonly pid: number;
  readonly logFile: string;
  /** With `security`: the test CA's certificate (PEM) that clients trust. */
  readonly caFile?: string;
  stop(): Promise<void>;
  /** SIGKILL, as a crash: resolves once the process has exited. */
  kill(): Promise<void>;
}

/** Fetches the broker's jars once; re-fetches when pom.xml changes. */
export async function fetchKafka(log: (line: string) => void = () => {}): Promise<void> {
  const pom = await readFile(pomPath);
  const stamp = createHash('sha256').update(pom).digest('hex');
  const marker = path.join(libDir, '.fetched');
  if (existsSync(marker) && (await readFile(marker, 'utf8')) === stamp) return;
  log(`fetching Apache Kafka jars from Maven Central into ${libDir}`);
  await rm(libDir, { recursive: true, force: true });
  try {
    await run(
      'mvn',
      [
        '-q',
        '-B',
        '-f',
        pomPath,
        'dependency:copy-dependencies',
        '-DincludeScope=runtime',
        `-DoutputDirectory=${libDir}`,
      ],
      { maxBuffer: 16 * 1024 * 1024 },
    );
  } catch (err) {
    const out = err as { stdout?: string; stderr?: string };
    throw new EdrError(
      'EDR_KAFKA_FETCH',
      `could not fetch Kafka with Maven:\n${(out.stdout ?? '') + (out.stderr ?? '')}`.slice(-4000),
      { cause: err },
    );
  }
  await writeFile(marker, stamp);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() =>
        typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port')),
      );
    });
  });
}

function listenerProperties(port: number, controllerPort: number): string[] {
  return [
    `listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controllerPort}`,
    `advertised.listeners=PLAINTEXT://127.0.0.1:${port}`,
    'inter.broker.listener.name=PLAINTEXT',
    'listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT',
  ];
}

function serverProperties(
  dir: string,
  controllerPort: number,
  listeners: string[],
  quorum?: QuorumMember,
): string {
  // Sized for one node on 2 cores: replication 1 everywhere, few partitions for internal topics
  // (the default 50 offsets partitions slow every start), no rebalance delay for fast tests.
  const replication = quorum?.replication ?? 1;
  const minIsr = Math.max(1, replication - 1);
  return `${[
    'process.roles=broker,controller',
    `node.id=${quorum?.nodeId ?? 1}`,
    `controller.quorum.voters=${quorum?.voters ?? `1@127.0.0.1:${controllerPort}`}`,
    'controller.listener.names=CONTROLLER',
    ...listeners,
    `log.dirs=${path.join(dir, 'data')}`,
    // Three nodes share the 2 cores of a test machine: fewer threads each.
    `num.network.threads=${quorum ? 1 : 2}`,
    `num.io.threads=${quorum ? 2 : 4}`,
    ...(quorum
      ? [
          'background.threads=4',
          'num.replica.fetchers=1',
          // A killed node is fenced (its partitions get a new leader) after this, not the default 9 s.
          'broker.session.timeout.ms=6000',
          'broker.heartbeat.interval.ms=1000',
          `default.replication.factor=${replication}`,
        ]
      : []),
    'num.partitions=1',
    'auto.create.topics.enable=false',
    `offsets.topic.replication.factor=${replication}`,
    'offsets.topic.num.partitions=4',
    `transaction.state.log.replication.factor=${replication}`,
    `transaction.state.log.min.isr=${minIsr}`,
    'transaction.state.log.num.partitions=4',
    `share.coordinator.state.topic.replication.factor=${replication}`,
    `share.coordinator.state.topic.min.isr=${minIsr}`,
    'group.initial.rebalance.delay.ms=0',
    'log.flush.interval.messages=9223372036854775807',
    'transaction.abort.timed.out.transaction.cleanup.interval.ms=5000',
  ].join('\n')}\n`;
}

const log4j2 = `
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = \${sys:kafka.logs.dir}/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
`;

async function tail(file: string, lines = 40): Promise<string> {
  try {
    const text = await readFile(file, 'utf8');
    return text.split('\n').slice(-lines).join('\n');
  } catch {
    return '(no broker log)';
  }
}

/** Resolves once a TCP connection to the port succeeds and the broker answers a metadata request. */
async function waitReady(
  port: number,
  child: ChildProcess,
  logFile: string,
  timeoutMs: number,
  ca?: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited: number | null = null;
  child.once('exit', (code) => {
    exited = code ?? -1;
  });
  // Not answering yet is the one failure worth polling again; an exit or the deadline ends the wait.
  const notYet = new EdrError('EDR_KAFKA_BROKER_START', 'the broker does not answer yet', {
    retryable: true,
  });
  await retry(
    async () => {
      if (Date.now() >= deadline) {
        throw new EdrError(
          'EDR_KAFKA_BROKER_START',
          `the broker did not answer on 127.0.0.1:${port} within ${timeoutMs} ms:\n${await tail(logFile)}`,
        );
      }
      if (exited !== null) {
        throw new EdrError(
          'EDR_KAFKA_BROKER_START',
          `the broker exited with ${exited}:\n${await tail(logFile)}`,
        );
      }
      if (!(await answersApiVersions(port, '127.0.0.1', ca))) throw notYet;
    },
    { backoff: { initialMs: 250, maxMs: 250, jitter: 'none' } },
  );
}

/**
 * Sends a raw ApiVersions v0 request: it answers only once the broker's request handlers are up,
 * and needs no client library (the CLI's `status` uses it too). With `ca` (PEM) it speaks TLS, checking the
 * broker's certificate: a SASL listener answers ApiVersions before authentication, so no plaintext port is needed.
 */
export function answersApiVersions(port: number, host = '127.0.0.1', ca?: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = ca === undefined ? net.connect({ port, host }) : tls.connect({ port, host, ca });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(2000, () => done(false));
    sock.on('error', () => done(false));
    // A listener that closes without an answer (TLS refusing the client, or not TLS at all): no timeout follows.
    sock.on('close', () => done(false));
    sock.on(ca === undefined ? 'connect' : 'secureConnect', () => {
      const clientId = Buffer.from('edr-probe');
      const body = Buffer.alloc(2 + 2 + 4 + 2 + clientId.length);
      body.writeInt16BE(18, 0); // api key ApiVersions
      body.writeInt16BE(0, 2); // version 0
      body.writeInt32BE(1, 4); // correlation id
      body.writeInt16BE(clientId.length, 8);
      clientId.copy(body, 10);
      const size = Buffer.alloc(4);
      size.writeInt32BE(body.length, 0);
      sock.write(Buffer.concat([size, body]));
    });
    let got = Buffer.alloc(0);
    sock.on('data', (chunk) => {
      got = Buffer.concat([got, chunk]);
      // size(4) + correlation id(4) + error code(2): 0 means the broker serves requests.
      if (got.length >= 10) done(got.readInt32BE(4) === 1 && got.readInt16BE(8) === 0);
    });
  });
}

function javaArgs(dir: string, heapMb: number): string[] {
  return [
    `-Xmx${heapMb}m`,
    // The whole heap from the start and G1's default pause goal: Kafka's production flag MaxGCPauseMillis=20,
    // on this small heap, had the collector use more CPU than the broker's own work under the detector bench.
    `-Xms${heapMb}m`,
    '-XX:+UseG1GC',
    '-Djava.awt.headless=true',
    `-Dkafka.logs.dir=${dir}`,
    `-Dlog4j2.configurationFile=${path.join(dir, 'log4j2.properties')}`,
    '-cp',
    `${libDir}/*`,
  ];
}

export async function startBroker(opts: BrokerOptions): Promise<Broker> {
  await fetchKafka();
  const dir = path.resolve(opts.dir);
  if (opts.fresh) await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const port = opts.port || (await freePort());
  const controllerPort = opts.controllerPort || (await freePort());
  const heapMb = opts.heapMb ?? 512;
  const props = path.join(dir, 'server.properties');
  const logFile = path.join(dir, 'broker.log');
  const security = opts.security;
  let brokerTls: BrokerTls | undefined;
  let listeners = listenerProperties(port, controllerPort);
  const brokerPort = security ? await freePort() : 0;
  if (security) {
    brokerTls = await makeBrokerTls(path.join(dir, 'tls'));
    listeners = brokerSecurityProperties(port, brokerPort, controllerPort, brokerTls, security);
  }
  // The file holds the key store password when secured: readable by this user only.
  await writeFile(props, serverProperties(dir, controllerPort, listeners, opts.quorum), { mode: 0o600 });
  await writeFile(path.join(dir, 'log4j2.properties'), log4j2);

  if (!existsSync(path.join(dir, 'data', 'meta.properties'))) {
    const clusterId = opts.quorum?.clusterId ?? randomBytes(16).toString('base64url');
    try {
      await run('java', [
        ...javaArgs(dir, 256),
        'kafka.tools.StorageTool',
        'format',
        // One argument: a base64url id may start with '-', which the tool would read as an option.
        `--cluster-id=${clusterId}`,
        '-c',
        props,
        ...(security ? scramArguments(security.users) : []),
      ]);
    } catch (err) {
      const out = err as { stdout?: string; stderr?: string };
      const text = (out.stdout ?? '') + (out.stderr ?? '');
      // The command line carried the SCRAM credentials: neither it (the cause) nor an echo of them is kept.
      throw new EdrError(
        'EDR_KAFKA_BROKER_FORMAT',
        `formatting KRaft storage failed:\n${security ? text.replace(/saltedpassword="[^"]*"/g, 'saltedpassword=***') : text}`,
        security ? {} : { cause: err },
      );
    }
  }

  const out = createWriteStream(path.join(dir, 'broker.out'), { flags: 'a' });
  await new Promise((r) => out.once('open', r));
  const child = spawn('java', [...javaArgs(dir, heapMb), 'kafka.Kafka', props], {
    stdio: ['ignore', out, out],
    detached: opts.detached ?? false,
  });
  if (child.pid === undefined) throw new EdrError('EDR_KAFKA_BROKER_START', 'could not spawn java');
  const pid = child.pid;
  await writeFile(path.join(dir, 'broker.pid'), `${pid}\n${port}\n`);
  try {
    await waitReady(port, child, logFile, 90_000, brokerTls?.caPem);
    if (brokerTls && security?.acls?.length)
      await applyAcls(`127.0.0.1:${brokerPort}`, brokerTls, security.acls);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  if (opts.detached) child.unref();

  let stopped: Promise<void> | undefined;
  return {
    brokers: [`127.0.0.1:${port}`],
    pid,
    logFile,
    ...(brokerTls ? { caFile: brokerTls.caFile } : {}),
    stop() {
      stopped ??= stopPid(pid, child).then(() => rm(path.join(dir, 'broker.pid'), { force: true }));
      return stopped;
    },
    kill() {
      if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
      const exit = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGKILL');
      return exit;
    },
  };
}

/** SIGTERM for a clean shutdown; SIGKILL if it has not exited after 20 s. */
async function stopPid(pid: number, child?: ChildProcess): Promise<void> {
  const alive = () => {
    if (child) return child.exitCode === null && child.signalCode === null;
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (!alive()) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 20_000;
  while (alive() && Date.now() < deadline) await abortableDelay(100);
  if (alive()) process.kill(pid, 'SIGKILL');
}

/** The broker recorded in `dir` by a detached start, if it is still running. */
export async function runningBroker(dir: string): Promise<{ pid: number; port: number } | undefined> {
  try {
    const [pidText, portText] = (await readFile(path.join(path.resolve(dir), 'broker.pid'), 'utf8')).split(
      '\n',
    );
    const pid = Number(pidText);
    const port = Number(portText);
    process.kill(pid, 0);
    return { pid, port };
  } catch {
    return undefined;
  }
}

export async function stopRunningBroker(dir: string): Promise<boolean> {
  const found = await runningBroker(dir);
  if (!found) return false;
  await stopPid(found.pid);
  await rm(path.join(path.resolve(dir), 'broker.pid'), { force: true });
  return true;
}

export { tail as brokerLogTail };
