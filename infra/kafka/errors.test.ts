import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import kafkajs from 'kafkajs';
import { EdrError } from '../errors.js';
import { type Access, concurrentTransactions, kafkaCall, toEdrError } from './errors.js';

// kafkajs is CommonJS and spreads its error classes into its exports: Node finds them only on the default export.
const { KafkaJSNumberOfRetriesExceeded, KafkaJSProtocolError, KafkaJSSASLAuthenticationError } = kafkajs;

/** A broker error as kafkajs makes it from an error code. */
function protocolError(type: string, retriable: boolean): Error {
  return new KafkaJSProtocolError(Object.assign(new Error(`broker says ${type}`), { type, retriable }));
}

/** A retried call that kept failing, as kafkajs's retrier reports it. */
function retriesExceeded(cause: Error): Error {
  return new KafkaJSNumberOfRetriesExceeded(cause, { retryCount: 5, retryTime: 100 });
}

describe('toEdrError', () => {
  it('gives a fenced producer its own code, however deep the broker error is wrapped', () => {
    for (const type of ['PRODUCER_FENCED', 'INVALID_PRODUCER_EPOCH']) {
      const err = toEdrError(retriesExceeded(protocolError(type, false)), 'committing');
      assert.equal(err.code, 'EDR_TRANSPORT_FENCED');
      assert.equal(err.retryable, false);
      assert.match(err.message, new RegExp(`^committing: fenced by a newer producer \\(${type}\\)$`));
    }
    const viaOriginal = Object.assign(new Error('wrapped'), {
      originalError: protocolError('PRODUCER_FENCED', false),
    });
    assert.equal(toEdrError(viaOriginal, 'x').code, 'EDR_TRANSPORT_FENCED');
  });

  it("carries kafkajs's retriable flag over and keeps the cause", () => {
    const retriable = protocolError('NOT_LEADER_FOR_PARTITION', true);
    const e = toEdrError(retriable, 'publishing');
    assert.equal(e.code, 'EDR_KAFKA');
    assert.equal(e.retryable, true);
    assert.equal(e.cause, retriable);
    assert.equal(e.message, 'publishing: broker says NOT_LEADER_FOR_PARTITION');
    assert.equal(toEdrError(protocolError('INVALID_TOPIC_EXCEPTION', false), 'x').retryable, false);
    assert.equal(toEdrError(new Error('plain'), 'x').retryable, false);
  });

  it('names what a refused call asked and as whom, with a code per resource, never retryable', () => {
    const cases: Array<[string, Access, string, string]> = [
      [
        'TOPIC_AUTHORIZATION_FAILED',
        { principal: 'User:edr-collector', operation: 'WRITE', topics: ['edr.rules.v1'] },
        'EDR_KAFKA_TOPIC_AUTHORIZATION',
        'publishing: not authorized to WRITE topic edr.rules.v1 as User:edr-collector',
      ],
      [
        'GROUP_AUTHORIZATION_FAILED',
        { principal: 'User:edr-sink', operation: 'READ', topics: ['a'], groupId: 'g1' },
        'EDR_KAFKA_GROUP_AUTHORIZATION',
        'publishing: not authorized to READ group g1 as User:edr-sink',
      ],
      [
        'TRANSACTIONAL_ID_AUTHORIZATION_FAILED',
        { principal: 'User:edr-sink', operation: 'WRITE', transactionalId: 'edr-detector-x-0' },
        'EDR_KAFKA_TRANSACTIONAL_ID_AUTHORIZATION',
        'publishing: not authorized to WRITE transactional id edr-detector-x-0 as User:edr-sink',
      ],
      [
        'CLUSTER_AUTHORIZATION_FAILED',
        { principal: 'User:u', operation: 'WRITE', topics: ['t'], clusterOperation: 'IDEMPOTENT_WRITE' },
        'EDR_KAFKA_CLUSTER_AUTHORIZATION',
        'publishing: not authorized to IDEMPOTENT_WRITE cluster as User:u',
      ],
    ];
    for (const [type, access, code, message] of cases) {
      const e = toEdrError(retriesExceeded(protocolError(type, false)), 'publishing', access);
      assert.equal(e.code, code);
      assert.equal(e.retryable, false);
      assert.equal(e.message, message);
    }
    // One refusal in an aggregate (createTopics: one error per topic) is found too.
    const aggregate = Object.assign(new Error('create failed'), {
      errors: [protocolError('TOPIC_AUTHORIZATION_FAILED', false)],
    });
    const e = toEdrError(aggregate, 'creating topics');
    assert.equal(e.code, 'EDR_KAFKA_TOPIC_AUTHORIZATION');
    assert.equal(e.message, 'creating topics: not authorized (TOPIC_AUTHORIZATION_FAILED)');
  });

  it('makes a failed SASL authentication its own code, not retryable', () => {
    const sasl = new (KafkaJSSASLAuthenticationError as unknown as new (m: string) => Error)(
      'SASL SCRAM SHA512 authentication failed',
    );
    const e = toEdrError(sasl, 'x', {
      principal: 'User:edr-sink',
      operation: 'DESCRIBE',
    });
    assert.equal(e.code, 'EDR_KAFKA_AUTHENTICATION');
    assert.equal(e.retryable, false);
    assert.match(e.message, /^x: SASL authentication failed as User:edr-sink /);
  });

  it('leaves an EdrError as it is', () => {
    const own = new EdrError('EDR_TRANSPORT_TXN_STATE', 'stuck', { retryable: true });
    assert.equal(toEdrError(own, 'x'), own);
  });
});

it('kafkaCall rethrows a failure as an EdrError saying what failed', async () => {
  assert.equal(await kafkaCall('listing', async () => 7), 7);
  await assert.rejects(
    kafkaCall('listing topics', async () => {
      throw protocolError('REQUEST_TIMED_OUT', true);
    }),
    (err: unknown) =>
      err instanceof EdrError &&
      err.code === 'EDR_KAFKA' &&
      err.retryable &&
      err.message.startsWith('listing topics: '),
  );
});

it('concurrentTransactions finds CONCURRENT_TRANSACTIONS anywhere in the chain, and nothing else', () => {
  assert.equal(concurrentTransactions(protocolError('CONCURRENT_TRANSACTIONS', true)), true);
  assert.equal(concurrentTransactions(retriesExceeded(protocolError('CONCURRENT_TRANSACTIONS', true))), true);
  assert.equal(concurrentTransactions(retriesExceeded(protocolError('PRODUCER_FENCED', false))), false);
  assert.equal(concurrentTransactions(new Error('CONCURRENT_TRANSACTIONS')), false);
  assert.equal(concurrentTransactions('CONCURRENT_TRANSACTIONS'), false);
});
