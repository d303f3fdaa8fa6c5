/**
 * The transport contract: one suite, run against the in-memory transport (infra/memory-transport.test.ts) and
 * against a real Kafka broker (test/integration/kafka-transport.test.ts). The memory twin is held to the real
 * behaviour the services rely on.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EdrError } from '../../infra/errors.js';
import { partitionFor } from '../../infra/partitioner.js';
import type { Consumption, InRecord, OutRecord, Transport } from '../../infra/transport.js';
import { unique, waitFor } from './names.js';

export interface ContractOptions {
  /** Scale for the large exactly-once case (records). */
  largeCount: number;
  /** Timeout for waiting on consumption, ms. */
  timeoutMs: number;
}

const text = (b: Buffer | null) => (b === null ? '' : b.toString());
const retryable = () => new EdrError('EDR_TEST_TRANSIENT', 'transient test failure', { retryable: true });
const permanent = (why: string) => new EdrError('EDR_TEST_PERMANENT', why);

function records(
  topic: string,
  n: number,
  key: (i: number) => string | null = (i) => `k${i % 10}`,
): OutRecord[] {
  return Array.from({ length: n }, (_, i) => ({ topic, key: key(i), value: Buffer.from(String(i)) }));
}

export function transportContract(name: string, make: () => Promise<Transport>, opts: ContractOptions): void {
  describe(`transport contract: ${name}`, () => {
    let transport: Transport;
    const open: Consumption[] = [];
    const track = (c: Consumption) => {
      open.push(c);
      return c;
    };

    before(async () => {
      transport = await make();
    });
    after(async () => {
      await Promise.all(open.map((c) => c.stop()));
      await transport.close();
    });

    async function topic(partitions: number): Promise<string> {
      const name = unique('contract');
      await transport.createTopics([{ name, partitions }]);
      return name;
    }

    /** One transaction of `aborted` records ('aborted') that aborts, then one of `committed` ('committed'). */
    async function abortThenCommit(t: string, aborted: number, committed: number): Promise<void> {
      const txp = await transport.transactionalProducer(unique('tx'));
      await assert.rejects(
        txp.transaction(async (tx) => {
          await tx.send(records(t, aborted).map((r) => ({ ...r, value: Buffer.from('aborted') })));
          throw new Error('abort after producing');
        }),
        /abort after producing/,
      );
      await txp.transaction(async (tx) => {
        await tx.send(records(t, committed).map((r) => ({ ...r, value: Buffer.from('committed') })));
      });
      await txp.close();
    }

    async function publish(recs: OutRecord[]): Promise<void> {
      const p = await transport.producer();
      await p.publish(recs);
      await p.close();
    }

    /** Everything in `topic` as a read-committed reader sees it, read with a throwaway group. */
    async function readAll(t: string, expected: number): Promise<InRecord[]> {
      const seen: InRecord[] = [];
      const c = track(
        await transport.consume({
          groupId: unique('reader'),
          topics: [t],
          handler: async (b) => {
            seen.push(...b.records);
          },
        }),
      );
      await waitFor(`${expected} records in ${t}`, () => seen.length >= expected, opts.timeoutMs);
      // Give a wrong extra record the time to show up.
      await new Promise((r) => setTimeout(r, 300));
      await c.stop();
      return seen;
    }

    it('creates topics idempotently', async () => {
      const t = await topic(2);
      await transport.createTopics([{ name: t, partitions: 2 }]);
      assert.equal((await transport.endOffsets(t)).length, 2);
      const absent = unique('absent');
      assert.deepEqual(await transport.missingTopics([t, absent]), [absent]);
    });

    it('keeps the order of records with one key', async () => {
      const t = await topic(3);
      await publish(records(t, 300));
      const got = await readAll(t, 300);
      const byKey = new Map<string, Array<{ v: number; p: number }>>();
      for (const r of got) {
        const list = byKey.get(text(r.key)) ?? [];
        list.push({ v: Number(text(r.value)), p: r.partition });
        byKey.set(text(r.key), list);
      }
      assert.equal(byKey.size, 10);
      for (const [key, list] of byKey) {
        assert.equal(new Set(list.map((x) => x.p)).size, 1, `${key} stays on one partition`);
        // Kafka's default (Java client) mapping, so other clients producing to these topics agree on where a host lives.
        assert.equal(
          list[0]!.p,
          partitionFor(key, 3, () => 0),
          `${key} on its murmur2 partition`,
        );
        const values = list.map((x) => x.v);
        assert.deepEqual(
          values,
          [...values].sort((a, b) => a - b),
          `${key} in order`,
        );
        assert.equal(values.length, 30);
      }
    });

    it('redelivers what a retryable failure left unacknowledged, and commits after success', async () => {
      const t = await topic(1);
      await publish(records(t, 10, () => 'one'));
      const group = unique('g');
      const handled: number[] = [];
      let failed = false;
      const c = track(
        await transport.consume({
          groupId: group,
          topics: [t],
          retryBackoffMs: 10,
          handler: async (b) => {
            for (const r of b.records) {
              if (r.offset === 5 && !failed) {
                failed = true;
                throw retryable();
              }
              handled.push(r.offset);
              b.ack(r);
            }
          },
        }),
      );
      await waitFor('10 handled', () => handled.length >= 10, opts.timeoutMs);
      await waitFor(
        'offsets committed',
        async () => (await transport.lag(group, t))[0]!.committed === 10,
        opts.timeoutMs,
      );
      await c.stop();
      assert.deepEqual(handled, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      assert.equal((await transport.lag(group, t))[0]!.lag, 0);
    });

    it('commits nothing before the handler succeeds, and stops on a fatal error', async () => {
      const t = await topic(1);
      await publish(records(t, 3, () => 'one'));
      const group = unique('g');
      let release: (err: Error) => void = () => {};
      let failure: Error | undefined;
      let entered = false;
      const c = track(
        await transport.consume({
          groupId: group,
          topics: [t],
          handler: async () => {
            entered = true;
            // Fails every call once released (the transport retries record by record to find the bad one).
            if (failure) throw failure;
            await new Promise<void>((_, reject) => {
              release = (err) => {
                failure = err;
                reject(err);
              };
            });
          },
        }),
      );
      await waitFor('handler entered', () => entered, opts.timeoutMs);
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(
        (await transport.lag(group, t))[0]!.committed <= 0,
        'nothing committed while the handler runs',
      );
      release(permanent('cannot process'));
      await assert.rejects(
        c.done,
        (err: unknown) => err instanceof EdrError && err.code === 'EDR_TRANSPORT_HANDLER_FAILED',
      );
      assert.ok((await transport.lag(group, t))[0]!.committed <= 0, 'nothing committed after the failure');
      // The same group gets the record again.
      const again: number[] = [];
      const c2 = track(
        await transport.consume({
          groupId: group,
          topics: [t],
          handler: async (b) => {
            again.push(...b.records.map((r) => r.offset));
          },
        }),
      );
      await waitFor('redelivery', () => again.length >= 3, opts.timeoutMs);
      await c2.stop();
      assert.deepEqual(again, [0, 1, 2]);
    });

    it('parks a record that fails for good on the dead-letter topic and goes on', async () => {
      const t = await topic(1);
      const dlq = await topic(1);
      await publish(
        [0, 1, 2, 3, 4].map((i) => ({
          topic: t,
          key: 'one',
          value: Buffer.from(i === 2 ? 'bad' : String(i)),
          headers: { origin: 'test' },
        })),
      );
      const handled: string[] = [];
      const c = track(
        await transport.consume({
          groupId: unique('g'),
          topics: [t],
          deadLetterTopic: dlq,
          handler: async (b) => {
            for (const r of b.records) {
              if (text(r.value) === 'bad') throw permanent('value is bad');
              handled.push(text(r.value));
              b.ack(r);
            }
          },
        }),
      );
      await waitFor('4 handled', () => handled.length >= 4, opts.timeoutMs);
      await c.stop();
      assert.deepEqual(handled, ['0', '1', '3', '4']);
      const [parked] = await readAll(dlq, 1);
      assert.ok(parked);
      assert.equal(text(parked.value), 'bad');
      assert.equal(text(parked.key), 'one');
      assert.equal(text(parked.headers['edr-error'] ?? null), 'value is bad');
      assert.equal(text(parked.headers['edr-error-code'] ?? null), 'EDR_TEST_PERMANENT');
      assert.equal(text(parked.headers['edr-source-topic'] ?? null), t);
      assert.equal(text(parked.headers['edr-source-offset'] ?? null), '2');
      assert.equal(text(parked.headers['origin'] ?? null), 'test');
    });

    it('makes a transaction all or nothing: an aborted one leaves no visible record', async () => {
      const t = await topic(2);
      await abortThenCommit(t, 5, 3);
      const seen = await readAll(t, 3);
      assert.deepEqual(
        seen.map((r) => text(r.value)),
        ['committed', 'committed', 'committed'],
      );
    });

    it('says where a batch was read from: no visible record lies between that and its first record', async () => {
      // An aborted transaction and a commit marker take offsets in Kafka (none in memory): the first visible record
      // comes after them, and a reader resuming from the start must learn that nothing visible was skipped.
      const t = await topic(1);
      await abortThenCommit(t, 2, 2);
      const batches: Array<{ from: number; first: number; values: string[] }> = [];
      track(
        await transport.consumeTransform({
          groupId: unique('g'),
          topics: [t],
          transform: async (b) => {
            batches.push({
              from: b.fetchedFrom,
              first: b.records[0]!.offset,
              values: b.records.map((r) => text(r.value)),
            });
            return [];
          },
        }),
      );
      await waitFor(
        'the committed records',
        () => batches.flatMap((b) => b.values).length >= 2,
        opts.timeoutMs,
      );
      assert.deepEqual(
        batches.flatMap((b) => b.values),
        ['committed', 'committed'],
      );
      assert.equal(batches[0]!.from, 0, 'read from the start of the partition');
      assert.ok(batches[0]!.first >= batches[0]!.from);
    });

    it('sends more than a broker takes in one request (3 MB to one partition), in a transaction and not', async () => {
      // A burst of alerts in one transaction: one partition's records of a request form one record batch, which a
      // broker refuses above message.max.bytes (1 MiB by default).
      const t = await topic(1);
      const big = (tag: string) =>
        Array.from({ length: 3000 }, (_, i) => ({
          topic: t,
          key: 'one',
          value: Buffer.alloc(1000, `${tag}${i % 10}`),
        }));
      const txp = await transport.transactionalProducer(unique('tx'));
      await txp.transaction(async (tx) => {
        await tx.send(big('t'));
      });
      await txp.close();
      await publish(big('p'));
      const seen = await readAll(t, 6000);
      assert.equal(seen.length, 6000);
      assert.deepEqual(
        seen.map((r) => text(r.value).slice(0, 2)),
        [...big('t'), ...big('p')].map((r) => r.value.toString().slice(0, 2)),
        'all of them, in order',
      );
    });

    it('fences an older producer with the same transactional id', async () => {
      const t = await topic(1);
      const id = unique('tx');
      const old = await transport.transactionalProducer(id);
      const newer = await transport.transactionalProducer(id);
      await assert.rejects(
        old.transaction(async (tx) => {
          await tx.send(records(t, 1).map((r) => ({ ...r, value: Buffer.from('zombie') })));
        }),
        (err: unknown) => err instanceof EdrError && err.code === 'EDR_TRANSPORT_FENCED',
      );
      await newer.transaction(async (tx) => {
        await tx.send(records(t, 1).map((r) => ({ ...r, value: Buffer.from('owner') })));
      });
      await old.close().catch(() => {});
      await newer.close();
      assert.deepEqual(
        (await readAll(t, 1)).map((r) => text(r.value)),
        ['owner'],
      );
    });

    it('consume-transform-produce yields each output once across a crash and restart', async () => {
      const input = await topic(2);
      const output = await topic(2);
      await publish(records(input, 200));
      const group = unique('g');
      let crashed = false;
      const start = () =>
        transport.consumeTransform({
          groupId: group,
          topics: [input],
          maxBatchRecords: 20,
          transform: async (b) => {
            if (!crashed && b.records.some((r) => r.partition === 0 && r.offset >= 50)) {
              crashed = true;
              throw permanent('crash in the middle of the stream');
            }
            return b.records.map((r) => ({ topic: output, key: r.key, value: r.value }));
          },
        });
      const first = track(await start());
      await assert.rejects(first.done);
      const second = track(await start());
      const out = await readAll(output, 200);
      await second.stop();
      const values = out.map((r) => Number(text(r.value))).sort((a, b) => a - b);
      assert.deepEqual(
        values,
        Array.from({ length: 200 }, (_, i) => i),
      );
      const lag = await transport.lag(group, input);
      assert.equal(
        lag.reduce((s, p) => s + p.lag, 0),
        0,
      );
    });

    it('starts a fresh group at the offsets for a timestamp', async () => {
      const t = await topic(1);
      const base = Date.now() - 60_000;
      await publish(
        Array.from({ length: 10 }, (_, i) => ({
          topic: t,
          key: 'one',
          value: Buffer.from(String(i)),
          timestampMs: base + i * 1000,
        })),
      );
      assert.deepEqual(
        (await transport.offsetsForTime(t, base + 5000)).map((p) => p.offset),
        [5],
      );
      assert.deepEqual(
        (await transport.offsetsForTime(t, base + 60_000)).map((p) => p.offset),
        [10],
      );
      const seen: number[] = [];
      const c = track(
        await transport.consume({
          groupId: unique('g'),
          topics: [t],
          start: { timestampMs: base + 5000 },
          handler: async (b) => {
            seen.push(...b.records.map((r) => Number(text(r.value))));
          },
        }),
      );
      await waitFor('5 records', () => seen.length >= 5, opts.timeoutMs);
      await new Promise((r) => setTimeout(r, 300));
      await c.stop();
      assert.deepEqual(seen, [5, 6, 7, 8, 9]);
    });

    it('rebalances when a second member joins: every record handled, none lost', async () => {
      const t = await topic(6);
      await publish(records(t, 600, (i) => `k${i % 60}`));
      const group = unique('g');
      const handled = new Map<string, number>();
      const handler = async (b: { records: readonly InRecord[] }) => {
        await new Promise((r) => setTimeout(r, 5));
        for (const r of b.records)
          handled.set(`${r.partition}/${r.offset}`, (handled.get(`${r.partition}/${r.offset}`) ?? 0) + 1);
      };
      const a = track(await transport.consume({ groupId: group, topics: [t], maxBatchRecords: 10, handler }));
      await waitFor('first member owns every partition', () => a.assignments().length === 6, opts.timeoutMs);
      await waitFor('some records handled', () => handled.size >= 60, opts.timeoutMs);
      const b = track(await transport.consume({ groupId: group, topics: [t], maxBatchRecords: 10, handler }));
      await waitFor(
        'partitions shared',
        () =>
          a.assignments().length > 0 &&
          b.assignments().length > 0 &&
          a.assignments().length + b.assignments().length === 6,
        opts.timeoutMs,
      );
      await waitFor('all 600 handled', () => handled.size === 600, opts.timeoutMs);
      await waitFor(
        'all committed',
        async () => (await transport.lag(group, t)).every((p) => p.lag === 0),
        opts.timeoutMs,
      );
      await Promise.all([a.stop(), b.stop()]);
      assert.equal(handled.size, 600);
    });

    it(`consumes ${opts.largeCount} records over 6 partitions exactly once while a member stops and restarts`, async () => {
      const t = await topic(6);
      const n = opts.largeCount;
      const p = await transport.producer();
      for (let i = 0; i < n; i += 5000) {
        await p.publish(
          records(t, Math.min(5000, n - i), (j) => `host-${(i + j) % 97}`).map((r, j) => ({
            ...r,
            value: Buffer.from(String(i + j)),
          })),
        );
      }
      await p.close();
      const group = unique('g');
      const count = new Uint8Array(n);
      let total = 0;
      // While the second member restarts, the first one is held, so the restart lands mid-stream.
      let hold: Promise<void> | undefined;
      let release = () => {};
      const handler = (held: boolean) => async (b: { records: readonly InRecord[] }) => {
        if (held && hold) await hold;
        await new Promise((r) => setTimeout(r, 5));
        for (const r of b.records) {
          count[Number(text(r.value))]! += 1;
          total++;
        }
      };
      const a = track(
        await transport.consume({
          groupId: group,
          topics: [t],
          maxBatchRecords: 500,
          handler: handler(true),
        }),
      );
      const b = track(
        await transport.consume({
          groupId: group,
          topics: [t],
          maxBatchRecords: 500,
          handler: handler(false),
        }),
      );
      await waitFor('a quarter consumed', () => total >= n / 4, opts.timeoutMs);
      hold = new Promise((r) => {
        release = r;
      });
      await b.stop();
      const mid = total;
      release();
      hold = undefined;
      const b2 = track(
        await transport.consume({
          groupId: group,
          topics: [t],
          maxBatchRecords: 500,
          handler: handler(false),
        }),
      );
      await waitFor('all consumed', () => total >= n, opts.timeoutMs * 4);
      await waitFor(
        'all committed',
        async () => (await transport.lag(group, t)).every((x) => x.lag === 0),
        opts.timeoutMs,
      );
      await new Promise((r) => setTimeout(r, 500));
      await Promise.all([a.stop(), b2.stop()]);
      assert.ok(mid < n, 'the restart happened mid-stream');
      const missing = count.indexOf(0);
      const twice = count.findIndex((c) => c > 1);
      assert.equal(missing, -1, `record ${missing} never consumed`);
      assert.equal(twice, -1, `record ${twice} consumed ${count[twice]} times`);
      assert.equal(total, n);
    });
  });
}
