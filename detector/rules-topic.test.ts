import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { test } from 'node:test';
import { EdrError } from '../infra/errors.js';
import { createLogger } from '../infra/log.js';
import { MemoryTransport } from '../infra/memory-transport.js';
import type { OutRecord, Producer } from '../infra/transport.js';
import { projectCodec } from '../schemas/codec.js';
import { containsRule } from '../test/harness/detector.js';
import { readAll } from '../test/harness/flaky-transport.js';
import { waitFor } from '../test/harness/names.js';
import { keyIdOf, signRecord, trustedKeys } from './rule-signing.js';
import { RuleStore } from './rule-store.js';
import { followTrustedRules } from './rules-topic.js';

const RULES = 'rules';
const AUDIT = 'audit';

/** The in-memory transport whose audit topic is away for the first `failing` publishes to it. */
class AuditOutage extends MemoryTransport {
  failing = 0;
  failed = 0;

  override async producer(): Promise<Producer> {
    const inner = await super.producer();
    return {
      publish: async (records) => {
        if (this.failing > 0 && records.some((r) => r.topic === AUDIT)) {
          this.failing--;
          this.failed++;
          throw new EdrError('EDR_KAFKA', 'publishing: connection refused', { retryable: true });
        }
        await inner.publish(records);
      },
      close: () => inner.close(),
    };
  }
}

test('a refusal is reported once the audit topic is back, and the accepted rule applies meanwhile', async () => {
  const t = new AuditOutage();
  await t.createTopics([
    { name: RULES, partitions: 1 },
    { name: AUDIT, partitions: 2 },
  ]);
  const pair = generateKeyPairSync('ed25519');
  const signer = { id: keyIdOf(pair.publicKey), key: pair.privateKey };
  const store = new RuleStore({ log: createLogger({}, 'error') });
  const refused: string[] = [];
  const f = await followTrustedRules({
    transport: t,
    topic: RULES,
    groupPrefix: 'rules',
    trusted: trustedKeys([{ id: signer.id, key: pair.publicKey }]),
    store,
    detectorId: 'd1',
    auditTopic: AUDIT,
    metrics: { ruleRefused: (reason) => refused.push(reason) },
    log: createLogger({}, 'error'),
  });
  try {
    await f.ready;
    t.failing = 3;
    const good = Buffer.from(containsRule('r-good', 'x'));
    const records: OutRecord[] = [
      {
        topic: RULES,
        key: 'r-good',
        value: good,
        headers: signRecord(signer, {
          topic: RULES,
          key: Buffer.from('r-good'),
          version: 1n,
          op: 'put',
          value: good,
        }),
      },
      { topic: RULES, key: 'r-evil', value: Buffer.from(containsRule('r-evil', 'y')) },
      { topic: RULES, key: 'r-good', value: null },
    ];
    const p = await t.producer();
    await p.publish(records);
    // The signed rule runs while the audit topic is still away; the others never do.
    await waitFor('the signed rule applied', () => store.current.rules.length === 1);
    assert.deepEqual(
      store.current.rules.map((r) => r.id),
      ['r-good'],
    );
    const reports = await readAll(t, AUDIT, 3);
    assert.equal(t.failed, 3, 'three publishes failed before the fourth went through');
    const codec = projectCodec();
    const kind = (r: { headers: Record<string, Buffer> }) => r.headers['edr-record']?.toString();
    // The accepted push is reported too (the health stage alerts on it).
    const accepted = reports.filter((r) => kind(r) === 'rules-accepted');
    assert.equal(accepted.length, 1);
    const config = codec.decodeAs('dev.edr.v1.CollectorRecord', accepted[0]!.value!).config!;
    assert.deepEqual(JSON.parse(config), {
      event: 'rules-accepted',
      count: 1,
      rules: [{ ruleId: 'r-good', version: '1', keyId: signer.id, offset: 0, deleted: false }],
    });
    assert.deepEqual(
      reports
        .filter((r) => kind(r) === 'rule-refused')
        .map((r) => codec.decodeAs('dev.edr.v1.RuleRefused', r.value!))
        .map((r) => [r.ruleId, r.reason, r.offset]),
      [
        ['r-evil', 'unsigned', 1n],
        ['r-good', 'bare-tombstone', 2n],
      ],
      'each refusal reported once',
    );
    assert.deepEqual(refused, ['unsigned', 'bare-tombstone']);
    assert.deepEqual(
      store.current.rules.map((r) => r.id),
      ['r-good'],
      'the bare tombstone deleted nothing',
    );
  } finally {
    await f.consumption.stop();
  }
});
