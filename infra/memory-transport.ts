/**
 * The in-process twin of the Kafka transport, for the all-in-one mode and unit tests. It keeps the Kafka
 * semantics the services rely on (per-partition order, group assignment with eager rebalances, commits after
 * success, atomic transactions, fencing of an older producer with the same transactional id), held to them by
 * the same contract suite as the real one. Nothing persists beyond the process.
 */
import { handleBatch, transformBatch } from './batch-runner.js';
import { EdrError } from './errors.js';
import { partitionFor } from './partitioner.js';
import { abortableDelay } from './retry.js';
import type {
  Consumption,
  HandlerOptions,
  InRecord,
  OutRecord,
  PartitionLag,
  PartitionOffset,
  Producer,
  TopicConfig,
  Transaction,
  TransactionalProducer,
  TransformOptions,
  Transport,
} from './transport.js';

interface Topic {
  config: TopicConfig;
  partitions: InRecord[][];
}

interface Member {
  id: number;
  topics: string[];
  assigned: Array<{ topic: string; partition: number }>;
}

interface Group {
  members: Member[];
  generation: number;
  committed: Map<string, number>;
  /** Partitions a member is working on; after a rebalance the new owner waits for the old one to finish. */
  busy: Set<string>;
}

const tp = (topic: string, partition: number) => `${topic}/${partition}`;

export class MemoryTransport implements Transport {
  private readonly topics = new Map<string, Topic>();
  private readonly groups = new Map<string, Group>();
  private readonly epochs = new Map<string, number>();
  private waiters: Array<() => void> = [];
  private rr = 0;
  private nextMember = 1;
  private closed = false;

  async createTopics(topics: TopicConfig[]): Promise<void> {
    for (const t of topics) {
      if (!this.topics.has(t.name)) {
        this.topics.set(t.name, { config: t, partitions: Array.from({ length: t.partitions }, () => []) });
      }
    }
  }

  async missingTopics(names: string[]): Promise<string[]> {
    return names.filter((n) => !this.topics.has(n));
  }

  async producer(): Promise<Producer> {
    return {
      publish: async (records) => {
        this.append(records);
      },
      close: async () => {},
    };
  }

  async transactionalProducer(transactionalId: string): Promise<TransactionalProducer> {
    const epoch = (this.epochs.get(transactionalId) ?? 0) + 1;
    this.epochs.set(transactionalId, epoch);
    let busy: Promise<unknown> = Promise.resolve();
    const fenced = () => this.epochs.get(transactionalId) !== epoch;
    return {
      transaction: <T>(work: (tx: Transaction) => Promise<T>): Promise<T> => {
        const run = async () => {
          if (fenced()) throw fencedError(transactionalId);
          const out: OutRecord[] = [];
          const offsets: Array<{ group: string; offsets: PartitionOffset[] }> = [];
          const result = await work({
            send: async (records) => {
              for (const r of records) this.partitionOf(r);
              out.push(...records);
            },
            commitOffsets: async (group, list) => {
              offsets.push({ group, offsets: list });
            },
          });
          // Commit point: everything becomes visible at once, or (fenced) nothing does.
          if (fenced()) throw fencedError(transactionalId);
          this.append(out);
          for (const o of offsets)
            for (const p of o.offsets) this.group(o.group).committed.set(tp(p.topic, p.partition), p.offset);
          return result;
        };
        const p = busy.then(run, run);
        busy = p.catch(() => {});
        return p;
      },
      close: async () => {},
    };
  }

  consume(opts: HandlerOptions): Promise<Consumption> {
    return this.member(opts, async (records, topic, partition, signal) => {
      const done = await handleBatch(opts, { topic, partition, records, signal }, async (r) =>
        this.append([r]),
      );
      if (done > 0)
        this.group(opts.groupId).committed.set(tp(topic, partition), records[done - 1]!.offset + 1);
    });
  }

  consumeTransform(opts: TransformOptions): Promise<Consumption> {
    const producers = new Map<string, Promise<TransactionalProducer>>();
    return this.member(opts, async (records, topic, partition, signal) => {
      const id = `${opts.transactionalIdPrefix ?? opts.groupId}-${topic}-${partition}`;
      let producer = producers.get(id);
      if (producer === undefined) {
        producer = this.transactionalProducer(id);
        producers.set(id, producer);
      }
      const txp = await producer;
      const { done, outputs } = await transformBatch(opts, { topic, partition, records, signal });
      if (done === 0) return;
      await txp.transaction(async (tx) => {
        await tx.send(outputs);
        await tx.commitOffsets(opts.groupId, [{ topic, partition, offset: records[done - 1]!.offset + 1 }]);
      });
    });
  }

  async offsetsForTime(topic: string, timestampMs: number): Promise<PartitionOffset[]> {
    return this.topic(topic).partitions.map((records, partition) => {
      const hit = records.find((r) => r.timestampMs >= timestampMs);
      return { topic, partition, offset: hit === undefined ? records.length : hit.offset };
    });
  }

  async endOffsets(topic: string): Promise<PartitionOffset[]> {
    return this.topic(topic).partitions.map((records, partition) => ({
      topic,
      partition,
      offset: records.length,
    }));
  }

  async lag(groupId: string, topic: string): Promise<PartitionLag[]> {
    const g = this.group(groupId);
    return this.topic(topic).partitions.map((records, partition) => {
      const committed = g.committed.get(tp(topic, partition)) ?? -1;
      const end = records.length;
      return { topic, partition, offset: committed, committed, end, lag: end - Math.max(committed, 0) };
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.wake();
  }

  // ---- internals ----

  private topic(name: string): Topic {
    const t = this.topics.get(name);
    if (t === undefined) throw new EdrError('EDR_TRANSPORT_UNKNOWN_TOPIC', `topic ${name} does not exist`);
    return t;
  }

  private group(id: string): Group {
    let g = this.groups.get(id);
    if (g === undefined) {
      g = { members: [], generation: 0, committed: new Map(), busy: new Set() };
      this.groups.set(id, g);
    }
    return g;
  }

  private partitionOf(r: OutRecord): number {
    const t = this.topic(r.topic);
    const p = r.partition ?? partitionFor(r.key, t.partitions.length, () => this.rr++);
    if (p < 0 || p >= t.partitions.length) {
      throw new EdrError('EDR_TRANSPORT_BAD_PARTITION', `topic ${r.topic} has no partition ${p}`);
    }
    return p;
  }

  private append(records: OutRecord[]): void {
    const placed = records.map((r) => [r, this.partitionOf(r)] as const);
    for (const [r, p] of placed) {
      const log = this.topic(r.topic).partitions[p]!;
      const headers: Record<string, Buffer> = {};
      for (const [k, v] of Object.entries(r.headers ?? {}))
        headers[k] = typeof v === 'string' ? Buffer.from(v) : v;
      log.push({
        topic: r.topic,
        partition: p,
        offset: log.length,
        key: r.key === null ? null : typeof r.key === 'string' ? Buffer.from(r.key) : r.key,
        value: r.value,
        headers,
        timestampMs: r.timestampMs ?? Date.now(),
      });
    }
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private changed(signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      this.waiters.push(resolve);
      void abortableDelay(1000, signal).then(resolve);
    });
  }

  /** Round-robin of the group's partitions over its members, ordered by join time. */
  private rebalance(g: Group): void {
    g.generation++;
    const all = new Map<string, Array<{ topic: string; partition: number }>>();
    for (const m of g.members) m.assigned = [];
    for (const m of g.members) for (const t of m.topics) all.set(t, []);
    let i = 0;
    for (const topic of [...all.keys()].sort()) {
      const subscribers = g.members.filter((m) => m.topics.includes(topic));
      this.topic(topic).partitions.forEach((_, partition) => {
        subscribers[i++ % subscribers.length]!.assigned.push({ topic, partition });
      });
    }
    this.wake();
  }

  private async member(
    opts: HandlerOptions | TransformOptions,
    process: (records: InRecord[], topic: string, partition: number, signal: AbortSignal) => Promise<void>,
  ): Promise<Consumption> {
    for (const t of opts.topics) this.topic(t);
    const g = this.group(opts.groupId);
    const me: Member = { id: this.nextMember++, topics: opts.topics, assigned: [] };
    // A fresh group starts where `start` says; later members follow the commits.
    for (const t of opts.topics) {
      const starts =
        opts.start === 'latest'
          ? await this.endOffsets(t)
          : typeof opts.start === 'object'
            ? await this.offsetsForTime(t, opts.start.timestampMs)
            : undefined;
      for (const s of starts ?? [])
        if (!g.committed.has(tp(t, s.partition))) g.committed.set(tp(t, s.partition), s.offset);
    }
    g.members.push(me);
    this.rebalance(g);
    const stopping = new AbortController();
    const max = opts.maxBatchRecords ?? 500;

    const loop = async () => {
      while (!stopping.signal.aborted && !this.closed) {
        let worked = false;
        const generation = g.generation;
        for (const { topic, partition } of me.assigned) {
          // A rebalance changed the assignment: start over with the new one.
          if (stopping.signal.aborted || generation !== g.generation) break;
          const key = tp(topic, partition);
          if (g.busy.has(key)) continue;
          const from = g.committed.get(key) ?? 0;
          const records = this.topic(topic).partitions[partition]!.slice(from, from + max);
          if (records.length === 0) continue;
          worked = true;
          g.busy.add(key);
          try {
            // stop() lets the batch in hand finish and commit (a retry loop in it ends), as in Kafka.
            await process(records, topic, partition, stopping.signal);
          } finally {
            g.busy.delete(key);
            this.wake();
          }
        }
        if (!worked) await this.changed(stopping.signal);
      }
    };
    const done = loop().finally(() => {
      g.members = g.members.filter((m) => m !== me);
      this.rebalance(g);
    });
    done.catch(() => {});
    return {
      assignments: () => [...me.assigned],
      stop: async () => {
        stopping.abort();
        await done.catch(() => {});
      },
      done,
    };
  }
}

function fencedError(id: string): EdrError {
  return new EdrError(
    'EDR_TRANSPORT_FENCED',
    `producer with transactional id ${id} was fenced by a newer one`,
  );
}
