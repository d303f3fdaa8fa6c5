/**
 * The single-broker pipeline through a broker crash: the collector (real eBPF), two detector workers and the file
 * sink run as processes while commands run on this host; the one broker is killed (SIGKILL) mid-stream and
 * restarted on the same ports and data. Every command's exec must be on the audit topic and every matching one must
 * have exactly one alert in the sink's files. Needs root (eBPF). Slow: `npm test` runs it in its own step.
 */
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, startBroker } from '../../infra/kafka/broker.js';
import { failoverTest, type PipelineFault } from '../harness/pipeline.js';

const DOWN_MS = 15_000;

failoverTest(
  'single broker',
  'one broker: SIGKILL and restart mid-stream loses and duplicates nothing end to end',
  async (dir, cleanup) => {
    const opts = { dir: path.join(dir, 'kafka'), port: await freePort(), controllerPort: await freePort() };
    let broker = await startBroker(opts);
    cleanup(() => broker.stop());
    const fault = async (ctx: PipelineFault) => {
      await broker.kill();
      const at = Date.now();
      await sleep(DOWN_MS);
      broker = await startBroker(opts);
      ctx.log(`broker killed, restarted after ${Date.now() - at} ms`);
    };
    return { brokers: broker.brokers, replication: 1, fault };
  },
);
