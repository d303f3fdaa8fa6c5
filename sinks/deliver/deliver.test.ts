import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { EdrError } from '../../infra/errors.js';
import type { InRecord } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import type { Alert } from '../../schemas/types.js';
import { waitFor } from '../../test/harness/names.js';
import { alertsOf, type Message, type Sink } from '../sink.js';
import { alert, memorySink } from './deliver.testing.js';

describe('the delivery loop (memory transport, scripted sink)', () => {
  const codec = projectCodec();

  async function run(
    script: (m: Message, call: number) => Promise<void>,
    instance: Record<string, unknown>,
    publish: Array<Alert | Buffer>,
  ) {
    // A Slack-typed instance (one message per fold) whose sending the test scripts.
    const t = await memorySink(await mkdtemp(path.join(tmpdir(), 'edr-deliver-')), {
      startFrom: 'earliest',
      ...instance,
    });
    const { transport } = t;
    await t.publish(publish);
    const sent: Message[] = [];
    let calls = 0;
    let inFlight = 0;
    let maxInFlight = 0;
    const sink: Sink = {
      async send(m) {
        calls++;
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        try {
          await new Promise((r) => setImmediate(r));
          await script(m, calls);
          sent.push(m);
        } finally {
          inFlight--;
        }
      },
      async close() {},
    };
    const running = await t.start(sink);
    await t.consumed();
    await running.stop();
    const read = async (topic: string): Promise<InRecord[]> => {
      const got: InRecord[] = [];
      const c = await transport.consume({
        groupId: `r-${topic}`,
        topics: [topic],
        handler: async (b) => void got.push(...b.records),
      });
      const end = (await transport.endOffsets(topic))[0]!.offset;
      await waitFor(topic, () => got.length >= end);
      await c.stop();
      return got;
    };
    const result = {
      sent: sent.map((m) => alertsOf(m).map((a) => a.alertId)),
      calls,
      maxInFlight,
      undeliverable: await read('undeliverable'),
      dead: await read('dead'),
    };
    await transport.close();
    return result;
  }

  const fast = { retry: { initialBackoffMs: 1, maxBackoffMs: 2 } };

  it('retries retryable failures and delivers once', async () => {
    const r = await run(
      async (_m, n) => {
        if (n <= 2) throw new EdrError('EDR_SINK_UNAVAILABLE', 'HTTP 503', { retryable: true });
      },
      fast,
      [alert(1), alert(2)],
    );
    assert.deepEqual(r.sent, [['a1', 'a2']]);
    assert.equal(r.calls, 3);
    assert.equal(r.undeliverable.length, 0);
  });

  it('parks on a permanent error, with the reason, keyed by alert id', async () => {
    const r = await run(
      async () => {
        throw new EdrError('EDR_SINK_REJECTED', 'HTTP 404 no_service');
      },
      fast,
      [alert(1)],
    );
    assert.equal(r.calls, 1);
    assert.equal(r.undeliverable.length, 1);
    const p = r.undeliverable[0]!;
    assert.equal(p.key?.toString(), 'a1');
    assert.equal(p.headers['edr-error-code']?.toString(), 'EDR_SINK_REJECTED');
    assert.equal(p.headers['edr-error']?.toString(), 'HTTP 404 no_service');
    assert.equal(p.headers['edr-sink']?.toString(), 's');
    assert.equal(p.headers['edr-attempts']?.toString(), '1');
    assert.equal(codec.decodeAs('dev.edr.v1.Alert', p.value!).alertId, 'a1');
  });

  it('parks when the retry budget is spent', async () => {
    const r = await run(
      async () => {
        throw new EdrError('EDR_SINK_UNREACHABLE', 'ECONNREFUSED', { retryable: true });
      },
      { ...fast, retry: { ...fast.retry, maxAttempts: 3 } },
      [alert(1)],
    );
    assert.equal(r.calls, 3);
    assert.equal(r.undeliverable[0]?.headers['edr-attempts']?.toString(), '3');
  });

  it('without maxAttempts (the default), retries a retryable failure for as long as it lasts', async () => {
    const r = await run(
      async (_m, n) => {
        if (n <= 40) throw new EdrError('EDR_SINK_UNAVAILABLE', 'HTTP 503', { retryable: true });
      },
      fast,
      [alert(1)],
    );
    assert.equal(r.calls, 41);
    assert.deepEqual(r.sent, [['a1']]);
    assert.equal(r.undeliverable.length, 0);
  });

  it('sends an alert id once even when it comes twice; dead-letters what does not decode', async () => {
    const r = await run(async () => {}, {}, [alert(1), alert(1), Buffer.from('not avro'), alert(2)]);
    assert.deepEqual(r.sent.flat(), ['a1', 'a2']);
    assert.equal(r.dead.length, 1);
    assert.equal(r.dead[0]!.headers['edr-error-code']?.toString(), 'EDR_SCHEMA_NOT_SINGLE_OBJECT');
  });

  it('keeps to the concurrency limit', async () => {
    const alerts = Array.from({ length: 6 }, (_, i) => alert(i, { ruleId: `r${i}` }));
    const one = await run(async () => {}, { concurrency: 1 }, alerts);
    assert.equal(one.maxInFlight, 1);
    const three = await run(async () => {}, { concurrency: 3 }, alerts);
    assert.equal(three.maxInFlight, 3);
    assert.deepEqual(three.sent.flat().sort(), ['a0', 'a1', 'a2', 'a3', 'a4', 'a5']);
  });

  it('redacts before a Slack or email sink sees the alert', async () => {
    const a = alert(1, {}, { argv: ['curl', '-u', 'x', 'https://u:pw@h/'] });
    const seen: string[] = [];
    await run(async (m) => void seen.push(alertsOf(m)[0]!.event.argv.join(' ')), {}, [a]);
    assert.deepEqual(seen, ['curl -u x https://u:***@h/']);
  });
});
