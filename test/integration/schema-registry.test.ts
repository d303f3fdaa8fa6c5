import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, it } from 'node:test';
import { EdrError } from '../../infra/errors.js';
import { repoRoot } from '../../infra/paths.js';
import { Codec, projectSchemas, type Schema } from '../../schemas/codec.js';
import { followWriterSchemas, publishWriterSchemas } from '../../schemas/registry.js';
import { sampleEvent } from '../fixtures/events.js';
import { stopOwnBroker, testTransport } from '../harness/broker.js';
import { unique } from '../harness/names.js';

after(() => stopOwnBroker());

it('a reader following the schemas topic decodes records of a newer writer', async () => {
  const transport = await testTransport();
  const topic = unique('schemas');
  await transport.createTopics([{ name: topic, partitions: 1, cleanupPolicy: 'compact' }]);
  const eventSchema = JSON.parse(
    readFileSync(path.join(repoRoot, 'schemas', 'execve-event.avsc'), 'utf8'),
  ) as {
    fields: unknown[];
  };
  const newer = new Codec([
    {
      ...eventSchema,
      fields: [...eventSchema.fields, { name: 'tty', type: ['null', 'string'], default: null }],
    } as Schema,
  ]);
  const reader = new Codec(projectSchemas());
  const follower = await followWriterSchemas(transport, reader, topic);
  try {
    const bytes = newer.encode('dev.edr.v1.ExecveEvent', { ...sampleEvent(), tty: 'pts/1' } as never);
    const fp = bytes.readBigUInt64LE(2);
    assert.throws(
      () => reader.decode(bytes),
      (e: unknown) => e instanceof EdrError && e.code === 'EDR_SCHEMA_UNKNOWN_FINGERPRINT',
    );
    assert.equal(await follower.resolve(fp, 200), false, 'not published yet');
    await publishWriterSchemas(transport, newer, topic);
    assert.equal(await follower.resolve(fp, 30_000), true);
    assert.deepEqual(structuredClone(reader.decodeAs('dev.edr.v1.ExecveEvent', bytes)), sampleEvent());
  } finally {
    await follower.stop();
    await transport.close();
  }
});
