/**
 * Failover on a replicated cluster: three KRaft nodes, the table's topics with replication 3 (raw, audit and alerts
 * with min ISR 2), and the whole pipeline running as processes: the collector (real eBPF), two detector workers and
 * the file sink. While commands run on this host, the leader of the raw topic's partition is killed (SIGKILL) and
 * restarted, then the leader of the alerts topic's partition. Every command's exec must be on the audit topic and
 * every matching one must have exactly one alert in the sink's files. Needs root (eBPF): skipped when not root,
 * failed when EDR_E2E_REQUIRED=1. Slow: `npm test` runs it in its own step.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Cluster, startCluster } from '../../infra/kafka/cluster.js';
import { kafkaConfigSchema } from '../../infra/kafka/config.js';
import { KafkaTransport } from '../../infra/kafka/transport.js';
import { createLogger } from '../../infra/log.js';
import { topics } from '../../schemas/topics.js';
import { waitFor } from '../harness/names.js';
import { failoverTest, type PipelineFault } from '../harness/pipeline.js';

failoverTest(
  'cluster',
  'three nodes: SIGKILL of the raw, then the alerts partition leader, loses and duplicates nothing end to end',
  async (dir, cleanup) => {
    const c = await startCluster({ dir: path.join(dir, 'kafka'), nodes: 3 });
    cleanup(() => c.stop());
    const admin = new KafkaTransport(
      kafkaConfigSchema.parse({ brokers: c.brokers, clientId: 'edr-failover-admin' }),
      createLogger({ component: 'failover' }, 'error'),
    );
    cleanup(() => admin.close());
    const fault = async (ctx: PipelineFault) => {
      // As `edr topics create --replication 3` made them.
      const have = await admin.describeTopics([topics.raw.name, topics.audit.name, topics.alerts.name]);
      for (const t of have.values()) {
        assert.equal(t.replicationFactor, 3, t.name);
        assert.equal(t.minInsyncReplicas, 2, t.name);
      }
      for (const topic of [topics.raw.name, topics.alerts.name]) await killLeader(c, admin, topic, ctx);
    };
    return { brokers: c.brokers, replication: 3, fault };
  },
);

/** Kills the leader of the one partition this host's records go to, lets the pipeline run on, restarts it. */
async function killLeader(
  c: Cluster,
  admin: KafkaTransport,
  topic: string,
  ctx: PipelineFault,
): Promise<void> {
  // One host writes, keyed by its id: the one partition with records is its partition.
  const used = (await admin.endOffsets(topic)).filter((p) => p.offset > 0);
  assert.equal(used.length, 1, `${topic}: one partition carries this host's records`);
  const partition = used[0]!.partition;
  const leader = await c.leaderOf(topic, partition);
  assert.ok(leader > 0, `${topic}[${partition}] has a leader`);
  await c.node(leader).kill();
  const at = Date.now();
  await waitFor(
    `a new leader for ${topic}[${partition}]`,
    async () => ![leader, -1].includes(await c.leaderOf(topic, partition).catch(() => -1)),
    60_000,
  );
  const moved = Date.now() - at;
  await ctx.alertsFlowing(`alerts with node ${leader} down`);
  await sleep(3000);
  await c.node(leader).restart();
  ctx.log(
    `${topic}[${partition}]: leader node ${leader} killed, new leader after ${moved} ms, restarted after ${Date.now() - at} ms`,
  );
}
