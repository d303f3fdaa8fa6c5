/**
 * Collector under an exec storm: bpf/build/exec-storm fork+execs /bin/true as fast as this machine allows, once
 * without the collector (baseline) and once with the full collector (eBPF source, enrichment, Avro, publishing
 * to the raw and audit topics of a real broker started here), in interleaved rounds, best of each reported.
 * Prints execs generated, events received and published, kernel, queue and spool drops, and the collector's CPU
 * per 1,000 execs against the storm's own CPU. The broker's CPU is its own process and not counted.
 * Needs root and `npm run build:native`; without root it prints a skip line and exits 0.
 *
 *   EDR_BENCH_EXECS (default 20000), EDR_BENCH_WORKERS (default: cores), EDR_BENCH_ROUNDS (default 2)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Collector } from '../../collector/collector.js';
import { collectorConfigSchema } from '../../collector/config.js';
import { EbpfSource } from '../../collector/ebpf-source.js';
import type { Source, SourceEvent } from '../../collector/source.js';
import { parseConfig } from '../../infra/config.js';
import { startBroker } from '../../infra/kafka/broker.js';
import { KafkaTransport } from '../../infra/kafka/transport.js';
import { createLogger } from '../../infra/log.js';
import { cpuSeconds, fmt, rate, type StormResult, storm, stormSettings } from '../harness/exec-storm.js';

const { execs, workers, rounds } = stormSettings;

/** The eBPF source, counting the execs of the current round's marker as they pass. */
function countingSource(inner: EbpfSource, counted: { marker: string; matching: number }): Source {
  return {
    name: inner.name,
    counters: () => inner.counters(),
    async *[Symbol.asyncIterator](): AsyncIterator<SourceEvent[]> {
      for await (const batch of inner) {
        for (const e of batch) if (e.kind === 'exec' && e.argv[1] === counted.marker) counted.matching++;
        yield batch;
      }
    },
  };
}

interface Round {
  storm: StormResult;
  collectorCpu: number;
  received: number;
  published: number;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.log('collector-storm: skipped, needs root for the eBPF capture');
    return;
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'edr-bench-collector-'));
  const broker = await startBroker({ dir: path.join(dir, 'kafka') });
  const log = createLogger({ component: 'collector' }, 'error');
  const config = parseConfig(collectorConfigSchema, {
    kafka: { brokers: broker.brokers, clientId: 'edr-bench-collector' },
    topics: { raw: 'bench.raw', audit: 'bench.audit', schemas: 'bench.schemas' },
    spool: { dir: path.join(dir, 'spool') },
  });
  const transport = new KafkaTransport(config.kafka, log);
  const counted = { marker: '', matching: 0 };
  let collector: Collector | undefined;
  try {
    collector = new Collector({
      config,
      transport,
      log,
      source: (signal) => countingSource(new EbpfSource({ type: 'ebpf' }, signal), counted),
    });
    const running = collector.run();
    while (!collector.counters().publish.connected) await sleep(50);
    const marker = `edr-bench-collector-${process.pid}`;
    await storm(Math.min(500, execs), `${marker}-warmup`);
    await sleep(500);

    const baselines: StormResult[] = [];
    const withCollector: Round[] = [];
    for (let round = 0; round < rounds; round++) {
      baselines.push(await storm(execs, `${marker}-baseline-${round}`));
      // Quiet before measuring: the baseline's own events are published first.
      while (collector.counters().publish.pendingEvents > 0) await sleep(20);
      counted.marker = `${marker}-collector-${round}`;
      counted.matching = 0;
      const publishedBefore = collector.counters().publish.eventsPublished;
      const cpuStart = process.cpuUsage();
      const result = await storm(execs, counted.marker);
      // Until every exec of the round is received and everything handed over is published (or 3 s idle).
      let last = -1;
      let idleSince = Date.now();
      for (;;) {
        const c = collector.counters();
        const done =
          counted.matching >= execs && c.publish.pendingEvents === 0 && c.publish.mode === 'online';
        if (done || Date.now() - idleSince > 3000) break;
        if (c.publish.eventsPublished !== last) {
          last = c.publish.eventsPublished;
          idleSince = Date.now();
        }
        await sleep(20);
      }
      const cpu = process.cpuUsage(cpuStart);
      withCollector.push({
        storm: result,
        collectorCpu: (cpu.user + cpu.system) / 1e6,
        received: counted.matching,
        published: collector.counters().publish.eventsPublished - publishedBefore,
      });
    }
    await collector.stop();
    await running;
    const c = collector.counters();

    const best = withCollector.reduce((a, b) => (b.collectorCpu < a.collectorCpu ? b : a));
    const baseCpu = Math.min(...baselines.map(cpuSeconds));
    const withCpu = Math.min(...withCollector.map((r) => cpuSeconds(r.storm)));
    const baseRate = Math.max(...baselines.map(rate));
    const withRate = Math.max(...withCollector.map((r) => rate(r.storm)));
    const received = withCollector.reduce((n, r) => n + r.received, 0);
    const perThousand = best.collectorCpu / (execs / 1000);
    const basePerThousand = baseCpu / (execs / 1000);
    const result = {
      execsGenerated: execs * rounds,
      rounds,
      workers,
      execsPerSecondBaseline: Math.round(baseRate),
      execsPerSecondWithCollector: Math.round(withRate),
      eventsReceived: received,
      eventsPublished: c.publish.eventsPublished,
      kernelDrops: c.source.kernelDrops,
      queueDrops: c.source.queueDrops,
      spoolDropped: c.publish.spoolDropped,
      spooled: c.publish.eventsSpooled,
      collectorCpuSecondsPer1000Execs: perThousand,
      stormCpuSecondsPer1000ExecsBaseline: basePerThousand,
      collectorCpuOverStormCpu: best.collectorCpu / baseCpu,
      stormCpuWithOverWithoutCollector: withCpu / baseCpu,
      execRateWithOverWithoutCollector: withRate / baseRate,
    };
    console.log(
      `collector storm: ${rounds} rounds of ${execs} execs of /bin/true from ${workers} workers, publishing to a local broker`,
    );
    for (let i = 0; i < rounds; i++) {
      const b = baselines[i]!;
      const r = withCollector[i]!;
      console.log(
        `  round ${i + 1}: baseline ${Math.round(rate(b))} execs/s, storm CPU ${fmt(cpuSeconds(b), 2)} s | ` +
          `with collector ${Math.round(rate(r.storm))} execs/s, storm CPU ${fmt(cpuSeconds(r.storm), 2)} s, ` +
          `collector CPU ${fmt(r.collectorCpu, 2)} s, ${r.received}/${execs} received, ${r.published} published`,
      );
    }
    console.log(`  execs generated:   ${execs * rounds} (with the collector)`);
    console.log(`  events received:   ${received} of those`);
    console.log(
      `  events published:  ${c.publish.eventsPublished} (every exec on this host during the run, warm-up and baseline rounds included; each to raw and audit)`,
    );
    console.log(`  kernel drops:      ${c.source.kernelDrops}`);
    console.log(`  queue drops:       ${c.source.queueDrops}`);
    console.log(`  spool drops:       ${c.publish.spoolDropped} (${c.publish.eventsSpooled} spooled)`);
    console.log(
      `  collector CPU:     ${fmt(perThousand)} s per 1000 execs (best round; ${fmt(perThousand * 100, 1)}% of one core at 1000 execs/s, target <= 10%)`,
    );
    console.log(
      `  baseline CPU:      ${fmt(basePerThousand)} s per 1000 execs for the storm itself without the collector`,
    );
    console.log(
      `  ratios:            collector CPU / storm CPU ${fmt(result.collectorCpuOverStormCpu)}, ` +
        `storm CPU with / without ${fmt(result.stormCpuWithOverWithoutCollector)}, ` +
        `exec rate with / without ${fmt(result.execRateWithOverWithoutCollector)}`,
    );
    console.log(`  result: ${JSON.stringify(result)}`);
    if (
      received !== execs * rounds ||
      c.source.kernelDrops + c.source.queueDrops + c.publish.spoolDropped > 0
    )
      process.exitCode = 1;
  } finally {
    await collector?.stop().catch(() => {});
    await transport.close();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
