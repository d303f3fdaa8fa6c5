/**
 * A replicated Apache Kafka cluster on loopback for the failover tests: three (or `nodes`) combined
 * controller+broker KRaft nodes sharing one static quorum, each with its own folder, ports, log and heap, internal
 * topics replicated to every node with min ISR one less. A node can be killed (SIGKILL) and restarted on the same
 * ports and data, as a crashed machine that comes back.
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { EdrError } from '../errors.js';
import { createLogger } from '../log.js';
import { type Broker, fetchKafka, freePort, startBroker } from './broker.js';
import { kafkaConfigSchema } from './config.js';
import { KafkaTransport } from './transport.js';

export interface ClusterOptions {
  /** Folder of the nodes' folders (node-1, node-2, ...); wiped first. */
  dir: string;
  nodes?: number;
  /** Heap of each node; three of 448 MiB fit a 2-core, 24 GiB test machine beside the pipeline. */
  heapMb?: number;
}

export interface ClusterNode {
  readonly id: number;
  readonly address: string;
  /** The running process's id; undefined while the node is down. */
  readonly pid: number | undefined;
  readonly running: boolean;
  /** SIGKILL, as a crash; resolves once the process is gone. */
  kill(): Promise<void>;
  /** SIGTERM, a clean shutdown. */
  stop(): Promise<void>;
  /** Starts the node again on its ports and data; resolves once it answers. */
  restart(): Promise<void>;
}

export interface Cluster {
  /** Bootstrap addresses of every node. */
  readonly brokers: string[];
  readonly nodes: readonly ClusterNode[];
  node(id: number): ClusterNode;
  /** The node id leading `topic`'s `partition` now, from fresh metadata (-1 while it has none). */
  leaderOf(topic: string, partition: number): Promise<number>;
  /** Stops every node (SIGTERM) and closes the cluster's admin client. */
  stop(): Promise<void>;
}

export async function startCluster(opts: ClusterOptions): Promise<Cluster> {
  const count = opts.nodes ?? 3;
  if (!Number.isInteger(count) || count < 1 || count > 9) {
    throw new EdrError('EDR_KAFKA_CLUSTER', `a test cluster has 1 to 9 nodes (got ${count})`);
  }
  await fetchKafka();
  const dir = path.resolve(opts.dir);
  await rm(dir, { recursive: true, force: true });
  const ports: Array<{ port: number; controllerPort: number }> = [];
  for (let i = 0; i < count; i++) ports.push({ port: await freePort(), controllerPort: await freePort() });
  const voters = ports.map((p, i) => `${i + 1}@127.0.0.1:${p.controllerPort}`).join(',');
  const clusterId = randomBytes(16).toString('base64url');
  const heapMb = opts.heapMb ?? 448;
  const brokers = ports.map((p) => `127.0.0.1:${p.port}`);

  const spawnNode = (i: number) =>
    startBroker({
      dir: path.join(dir, `node-${i + 1}`),
      port: ports[i]!.port,
      controllerPort: ports[i]!.controllerPort,
      heapMb,
      quorum: { nodeId: i + 1, voters, clusterId, replication: Math.min(3, count) },
    });

  const running = new Map<number, Broker>();
  // Together: a node answers only once the quorum it belongs to has a leader, which takes a majority.
  const started = await Promise.allSettled(ports.map((_, i) => spawnNode(i)));
  started.forEach((s, i) => {
    if (s.status === 'fulfilled') running.set(i + 1, s.value);
  });
  const failed = started.find((s) => s.status === 'rejected');
  if (failed) {
    await Promise.all([...running.values()].map((b) => b.kill()));
    throw failed.reason;
  }

  const nodes: ClusterNode[] = ports.map((_, i) => {
    const id = i + 1;
    return {
      id,
      address: brokers[i]!,
      get pid() {
        return running.get(id)?.pid;
      },
      get running() {
        return running.has(id);
      },
      async kill() {
        const b = running.get(id);
        running.delete(id);
        await b?.kill();
      },
      async stop() {
        const b = running.get(id);
        running.delete(id);
        await b?.stop();
      },
      async restart() {
        if (running.has(id)) throw new EdrError('EDR_KAFKA_CLUSTER', `node ${id} is running`);
        running.set(id, await spawnNode(i));
      },
    };
  });

  let admin: KafkaTransport | undefined;
  return {
    brokers,
    nodes,
    node(id) {
      const n = nodes[id - 1];
      if (n === undefined) throw new EdrError('EDR_KAFKA_CLUSTER', `no node ${id}`);
      return n;
    },
    async leaderOf(topic, partition) {
      admin ??= new KafkaTransport(
        kafkaConfigSchema.parse({ brokers, clientId: 'edr-test-cluster' }),
        createLogger({ component: 'cluster' }, 'error'),
      );
      const leader = (await admin.partitionLeaders(topic)).get(partition);
      if (leader === undefined)
        throw new EdrError('EDR_KAFKA_CLUSTER', `${topic} has no partition ${partition}`);
      return leader;
    },
    async stop() {
      await admin?.close();
      await Promise.all(nodes.map((n) => n.stop()));
    },
  };
}
