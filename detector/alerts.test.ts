import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sampleEvent } from '../test/fixtures/events.js';
import { alertId, uuidV5 } from './alerts.js';

test('uuidV5 gives the RFC 9562 name-based UUIDs', () => {
  // The DNS namespace example ("www.example.com") that RFC 9562 and most UUID libraries use as a test vector.
  assert.equal(
    uuidV5('www.example.com', '6ba7b810-9dad-11d1-80b4-00c04fd430c8'),
    '2ed6657d-e927-568b-95e1-2665a8aea6a2',
  );
});

test('alert ids stay what they were (consumers de-duplicate on them across versions)', () => {
  // Values produced by the uuid package's v5 before the detector made its own: a change here re-ids every alert.
  assert.equal(alertId('rule-1', sampleEvent()), '2cc4d3df-ad70-5f2e-8769-bac62ce2c224');
  assert.equal(alertId('rule-1', sampleEvent(), 'run-7'), 'f6457cb9-f710-578e-a4fa-009b6e08b99b');
  assert.notEqual(alertId('rule-1', sampleEvent({ seq: 2n })), alertId('rule-1', sampleEvent()));
});
