/**
 * The collector: source → enrich → number (seq) → encode → publish (with the spool in front of the broker), plus
 * its own audit trail: STARTED (effective config, secrets removed), LOSS on every change of a drop counter,
 * STOPPED. Writer schemas go to the schemas topic, keyed by fingerprint, on every connection.
 */

import { EdrError } from '../infra/errors.js';
import { createLogger, type Logger } from '../infra/log.js';
import { type Producer, requireTopics, type Transport } from '../infra/transport.js';
import { projectCodec } from '../schemas/codec.js';
import { topics as topicTable } from '../schemas/topics.js';
import type {
  CollectorHeartbeat,
  CollectorRecord,
  CollectorRecordKind,
  ExecveEvent,
  LossCounters,
} from '../schemas/types.js';
import type { CollectorConfig } from './config.js';
import { EbpfSource } from './ebpf-source.js';
import { COLLECTOR_VERSION, Enricher, type EnricherCounters } from './enrich/enrich.js';
import { type HostIdentity, hostIdentity } from './enrich/host.js';
import { type Outgoing, Publisher, type PublisherCounters } from './publish.js';
import { ReplaySource } from './replay-source.js';
import type { Source, SourceCounters, SourceEvent } from './source.js';
import { Spool } from './spool.js';

export interface CollectorCounters {
  source: SourceCounters;
  publish: PublisherCounters;
  enrich: EnricherCounters;
  /** Events numbered and handed to the publisher this run. */
  events: number;
  /** Events of batches the source handed over that could not be enriched or encoded (in LOSS as queue drops). */
  decodeDropped: number;
  lastSeq: number;
}

export interface CollectorOptions {
  config: CollectorConfig;
  transport: Transport;
  log?: Logger;
  /** For tests: a source other than the configured one. */
  source?: (signal: AbortSignal) => Source;
}

export function createSource(config: CollectorConfig['source'], signal: AbortSignal): Source {
  return config.type === 'ebpf' ? new EbpfSource(config, signal) : new ReplaySource(config, signal);
}

export class Collector {
  readonly host: HostIdentity;
  readonly #config: CollectorConfig;
  readonly #log: Logger;
  readonly #stop = new AbortController();
  readonly #source: Source;
  readonly #enricher: Enricher;
  readonly #spool: Spool;
  readonly #publisher: Publisher;
  readonly #codec = projectCodec();
  readonly #key: Buffer;
  #seq = 0n;
  #events = 0;
  /** Events of batches taken from the source that could not be enriched or encoded: lost, counted here. */
  #decodeDropped = 0;
  /** Why, for the next LOSS record; the last distinct reason logged. */
  #dropReason: string | undefined;
  #loggedReason: string | undefined;
  #reported: LossCounters | undefined;
  #lossUndelivered = false;
  #lossTimer: NodeJS.Timeout | undefined;
  #heartbeatTimer: NodeJS.Timeout | undefined;
  #done: Promise<void> | undefined;
  #topicsReady = false;

  /** Opens the source (attaching the eBPF programs), the spool and the enrichment state. Throws EdrError. */
  constructor(private readonly options: CollectorOptions) {
    const config = options.config;
    this.#config = config;
    this.#log = options.log ?? createLogger({ component: 'collector' });
    this.host = hostIdentity(config.host);
    this.#key = Buffer.from(this.host.hostId);
    this.#enricher = new Enricher(this.host, config);
    this.#spool = new Spool({
      dir: config.spool.dir,
      maxBytes: config.spool.maxBytes,
      segmentBytes: config.spool.segmentBytes,
      fsync: config.spool.fsync,
      fsyncIntervalMs: config.spool.fsyncIntervalMs,
      // Once per kind of failure until it clears; what the spool cannot hold is counted and reported in LOSS.
      onError: (err) =>
        this.#log.warn('spool failing; events it cannot hold are counted as dropped', { err }),
    });
    this.#publisher = new Publisher(
      options.transport,
      this.#spool,
      {
        rawTopic: config.topics.raw,
        auditTopic: config.topics.audit,
        batchMaxEvents: config.publish.batchMaxEvents,
        timeoutMs: config.publish.timeoutMs,
        retryIntervalMs: config.publish.retryIntervalMs,
        maxPendingEvents: config.publish.maxPendingEvents,
        onConnect: (p) => this.#prepare(p),
        onDroppedRecord: (o) => {
          if (this.#isLoss(o)) this.#lossUndelivered = true;
        },
      },
      this.#log,
    );
    // The source opens last: an eBPF capture keeps the process alive, so nothing may throw after it opened.
    // Seeding before it opens would miss processes started in between; after, a process may be seen twice
    // (seed, then its fork or exec), which the table absorbs.
    try {
      this.#source = options.source?.(this.#stop.signal) ?? createSource(config.source, this.#stop.signal);
    } catch (err) {
      this.#spool.close();
      throw err;
    }
    if (this.#source.name === 'ebpf') this.#enricher.seed(config.enrich.procDir);
  }

  counters(): CollectorCounters {
    return {
      source: this.#source.counters(),
      publish: this.#publisher.counters(),
      enrich: this.#enricher.counters(),
      events: this.#events,
      decodeDropped: this.#decodeDropped,
      lastSeq: Number(this.#seq),
    };
  }

  /** Runs until `stop()` (or the source ends, for a replay); resolves once everything is flushed or spooled. */
  run(): Promise<void> {
    this.#done ??= this.#run();
    return this.#done;
  }

  /** Ends the source (it hands over what it captured), publishes the rest and STOPPED, closes. */
  async stop(): Promise<void> {
    this.#stop.abort();
    await this.run();
  }

  async #run(): Promise<void> {
    this.#publisher.start();
    await this.#lifecycle('STARTED', { config: JSON.stringify(this.#config) });
    this.#log.info('collector started', {
      hostId: this.host.hostId,
      source: this.#source.name,
      processesSeeded: this.#enricher.counters().processesSeeded,
    });
    this.#lossTimer = setInterval(() => void this.#checkLosses(), this.#config.publish.lossCheckIntervalMs);
    this.#lossTimer.unref();
    // A heartbeat says this host is alive: a detector alerts when a known host falls silent (killed, or cut off).
    this.#heartbeatTimer = setInterval(
      () => void this.#heartbeat(),
      this.#config.publish.heartbeatIntervalMs,
    );
    this.#heartbeatTimer.unref();
    let failure: unknown;
    try {
      for await (const batch of this.#source) {
        const out = await this.#process(batch);
        if (out.length > 0) await this.#publisher.submit(out);
        await this.#checkLosses();
        if (this.#stop.signal.aborted && this.#source.name === 'replay') break;
      }
    } catch (err) {
      failure = err;
      this.#log.error('source failed', { err });
    } finally {
      clearInterval(this.#lossTimer);
      clearInterval(this.#heartbeatTimer);
      await this.#checkLosses();
      await this.#lifecycle('STOPPED', {
        message: failure === undefined ? null : `source failed: ${(failure as Error).message}`,
      });
      await this.#publisher.stop(this.#config.publish.shutdownTimeoutMs);
      this.#spool.close();
      const c = this.counters();
      this.#log.info('collector stopped', {
        events: c.events,
        published: c.publish.eventsPublished,
        spooled: c.publish.eventsSpooled,
        spoolDropped: c.publish.spoolDropped,
        spoolBytes: c.publish.spoolBytes,
      });
    }
    if (failure !== undefined) {
      throw failure instanceof EdrError
        ? failure
        : new EdrError('EDR_COLLECTOR_SOURCE', `source failed: ${(failure as Error).message}`, {
            cause: failure,
          });
    }
  }

  /**
   * Enriches and encodes a batch the source handed over (it is off the native queue: nobody else will count it).
   * A batch that cannot be enriched, or an event that cannot be encoded, is dropped and counted with its reason
   * (reported as queue drops in the next LOSS record) instead of ending the collector.
   */
  async #process(batch: SourceEvent[]): Promise<Outgoing[]> {
    let events: ExecveEvent[];
    try {
      events = await this.#enricher.enrich(batch);
    } catch (err) {
      this.#undecodable(batch.length, 'enriching a batch', err);
      return [];
    }
    const out: Outgoing[] = [];
    for (const e of events) {
      try {
        out.push(this.#encodeEvent(e));
      } catch (err) {
        this.#undecodable(1, 'encoding an event', err);
      }
    }
    return out;
  }

  #undecodable(count: number, what: string, err: unknown): void {
    this.#decodeDropped += count;
    const reason = `${what} failed: ${(err as Error)?.message ?? String(err)}`;
    this.#dropReason = `${reason} (${this.#decodeDropped} events dropped so far)`;
    if (reason !== this.#loggedReason) this.#log.error('events dropped', { err, dropped: count, what });
    this.#loggedReason = reason;
  }

  /** `seq` moves only once the event is encoded, so a failure leaves no gap. */
  #encodeEvent(e: ExecveEvent): Outgoing {
    const seq = this.#seq + 1n;
    e.seq = seq;
    const value = this.#codec.encode('dev.edr.v1.ExecveEvent', e);
    this.#seq = seq;
    this.#events++;
    return { key: this.#key, value, toRaw: true, toAudit: true, event: true };
  }

  #losses(): LossCounters {
    const s = this.#source.counters();
    const p = this.#publisher.counters();
    return {
      kernelSeen: BigInt(s.kernelSeen),
      kernelRingFull: BigInt(s.kernelDrops),
      kernelTruncated: BigInt(s.kernelTruncated),
      kernelReadErrors: BigInt(s.kernelReadErrors),
      queueDropped: BigInt(s.queueDrops + this.#decodeDropped),
      spoolDropped: BigInt(p.spoolDropped),
    };
  }

  /** A LOSS record whenever a drop counter moved (or the last one was refused by a full spool). */
  async #checkLosses(): Promise<void> {
    const now = this.#losses();
    const last = this.#reported;
    const changed =
      last === undefined
        ? now.kernelRingFull + now.queueDropped + now.spoolDropped > 0n
        : now.kernelRingFull !== last.kernelRingFull ||
          now.queueDropped !== last.queueDropped ||
          now.spoolDropped !== last.spoolDropped;
    if (!changed && !this.#lossUndelivered) return;
    this.#reported = now;
    this.#lossUndelivered = false;
    this.#log.warn('events lost', {
      kernelDrops: Number(now.kernelRingFull),
      queueDrops: Number(now.queueDropped),
      spoolDropped: Number(now.spoolDropped),
    });
    const message = this.#dropReason;
    this.#dropReason = undefined;
    await this.#lifecycle('LOSS', { losses: now, ...(message === undefined ? {} : { message }) });
  }

  async #heartbeat(): Promise<void> {
    const l = this.#losses();
    const beat: CollectorHeartbeat = {
      ...this.host,
      timeNs: BigInt(Date.now()) * 1_000_000n,
      collectorVersion: COLLECTOR_VERSION,
      intervalMs: BigInt(this.#config.publish.heartbeatIntervalMs),
      lastSeq: this.#seq === 0n ? -1n : this.#seq,
      kernelSeen: l.kernelSeen,
      kernelRingFull: l.kernelRingFull,
      queueDropped: l.queueDropped,
      spoolDropped: l.spoolDropped,
    };
    try {
      await this.#submitAudit(this.#codec.encode('dev.edr.v1.CollectorHeartbeat', beat));
    } catch (err) {
      this.#log.warn('heartbeat not sent', { err });
    }
  }

  #isLoss(o: Outgoing): boolean {
    try {
      return this.#codec.decodeAs('dev.edr.v1.CollectorRecord', o.value).kind === 'LOSS';
    } catch {
      return false;
    }
  }

  async #lifecycle(
    kind: CollectorRecordKind,
    fields: Partial<Pick<CollectorRecord, 'config' | 'losses' | 'message'>>,
  ): Promise<void> {
    const record: CollectorRecord = {
      ...this.host,
      timeNs: BigInt(Date.now()) * 1_000_000n,
      collectorVersion: COLLECTOR_VERSION,
      kind,
      config: fields.config ?? null,
      losses: fields.losses ?? (kind === 'STOPPED' ? this.#losses() : null),
      lastSeq: this.#seq === 0n ? -1n : this.#seq,
      message: fields.message ?? null,
    };
    await this.#submitAudit(this.#codec.encode('dev.edr.v1.CollectorRecord', record));
  }

  /** A record of the collector's own, for the audit topic only. */
  #submitAudit(value: Buffer): Promise<void> {
    return this.#publisher.submit([{ key: this.#key, value, toRaw: false, toAudit: true, event: false }]);
  }

  /** On each connection: create the topics (once per run) and publish the writer schemas (compacted topic). */
  async #prepare(producer: Producer): Promise<void> {
    const t = this.#config.topics;
    if (!this.#topicsReady) {
      if (t.create) {
        await this.options.transport.createTopics([
          { ...spec(topicTable.raw), name: t.raw },
          { ...spec(topicTable.audit), name: t.audit },
          { ...spec(topicTable.schemas), name: t.schemas },
        ]);
      } else {
        await requireTopics(this.options.transport, [t.raw, t.audit, t.schemas], 'collector');
      }
      this.#topicsReady = true;
    }
    await producer.publish(
      [...this.#codec.writerSchemas()].map(([fp, schema]) => ({
        topic: t.schemas,
        key: fp.toString(16).padStart(16, '0'),
        value: Buffer.from(schema),
      })),
    );
  }
}

function spec(t: { partitions: number; cleanupPolicy: 'delete' | 'compact'; retentionMs: number }) {
  return { partitions: t.partitions, cleanupPolicy: t.cleanupPolicy, retentionMs: t.retentionMs };
}
