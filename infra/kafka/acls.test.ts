import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { topics } from '../../schemas/topics.js';
import { EdrError } from '../errors.js';
import { repoRoot } from '../paths.js';
import { aclNames, aclsScript, aclTable, fixedPrefixes, kafkaAclsCommands } from './acls.js';

const rows = aclTable();
const of = (user: string) => rows.filter((r) => r.principal === `User:${user}`);
/** `resource name: OPS` for each row of `user`, sorted. */
const grants = (user: string) =>
  of(user)
    .map((r) => `${r.resource}${r.pattern === 'prefixed' ? '*' : ''} ${r.name}: ${r.operations.join(',')}`)
    .sort();

describe('the ACL table', () => {
  it('lets a collector write its three topics and nothing else', () => {
    assert.deepEqual(
      grants('edr-collector'),
      [
        `topic ${topics.audit.name}: WRITE`,
        `topic ${topics.raw.name}: WRITE`,
        `topic ${topics.schemas.name}: WRITE`,
      ].sort(),
    );
  });

  it('lets a sink read alerts in its own groups, write only where it parks and read that back to resend', () => {
    assert.deepEqual(
      grants('edr-sink'),
      [
        'group* edr-sink-: READ',
        `topic ${topics.alerts.name}: READ`,
        `topic ${topics.deadLetter.name}: WRITE`,
        `topic ${topics.undeliverable.name}: READ,WRITE`,
      ].sort(),
    );
  });

  it('lets only the operator write the rules topic or create anything', () => {
    const writers = rows.filter((r) => r.name === topics.rules.name && r.operations.includes('WRITE'));
    assert.deepEqual(
      writers.map((r) => r.principal),
      ['User:edr-operator'],
    );
    const creators = rows.filter((r) => r.operations.includes('CREATE'));
    assert.deepEqual(
      creators.map((r) => `${r.principal} ${r.resource}`),
      ['User:edr-operator cluster'],
    );
  });

  it("binds the detectors' groups and transactional ids to their group id, never a sink's or replay's", () => {
    const g = grants('edr-detector');
    assert.ok(g.includes('group* edr-detector: READ'));
    assert.ok(g.includes('transactional-id* edr-detector-: WRITE'));
    assert.ok(!g.some((x) => x.includes(topics.alerts.name) && x.includes('READ')));
    // Another group id: its own prefixes, and the restore groups' fixed prefix granted apart.
    const custom = aclTable(aclNames({ detectorGroup: 'fleet-a' })).filter(
      (r) => r.principal === 'User:edr-detector' && r.resource !== 'topic',
    );
    assert.deepEqual(custom.map((r) => `${r.resource} ${r.name}`).sort(), [
      'group edr-detector-restore-',
      'group fleet-a',
      'transactional-id fleet-a-',
    ]);
  });

  it('names each group and transactional id the way the services do', () => {
    const source = (f: string) => readFileSync(path.join(repoRoot, f), 'utf8');
    assert.ok(source('sinks/deliver/deliver.ts').includes(`groupId: \`${fixedPrefixes.sinkGroup}\${name}\``));
    assert.ok(
      source('detector/replay.ts').includes(`const groupId = \`${fixedPrefixes.replay}\${o.runId}\``),
    );
    assert.ok(source('detector/correlations.ts').includes(`\`${fixedPrefixes.detectorRestoreGroup}\${`));
    assert.ok(source('detector/rules-topic.ts').includes(`'${fixedPrefixes.rulesCliGroup.slice(0, -1)}'`));
    assert.ok(source('detector/rules-topic.ts').includes(`groupId: \`\${groupPrefix}-\${`));
  });

  it('refuses names that Kafka or a shell would misread, all at once', () => {
    assert.throws(
      () => aclNames({ principals: { sink: "x' ; rm -rf /" }, topics: { raw: 'a b' } }),
      (err: unknown) =>
        err instanceof EdrError &&
        err.code === 'EDR_ACL_NAME' &&
        err.message.includes('principal sink') &&
        err.message.includes('topic raw'),
    );
  });
});

describe('the ACL table printed', () => {
  it('as kafka-acls.sh commands, prefixed patterns marked', () => {
    const lines = kafkaAclsCommands(rows, 'kafka-1:9093', '/etc/edr/admin.properties');
    assert.equal(lines.length, rows.length);
    assert.ok(
      lines.includes(
        "kafka-acls.sh --bootstrap-server 'kafka-1:9093' --command-config '/etc/edr/admin.properties' --add " +
          `--allow-principal 'User:edr-collector' --operation Write --topic '${topics.raw.name}'`,
      ),
    );
    assert.ok(
      lines.some((l) =>
        l.endsWith(
          "--allow-principal 'User:edr-detector' --operation Write --transactional-id 'edr-detector-' --resource-pattern-type prefixed",
        ),
      ),
    );
    assert.ok(lines.some((l) => l.endsWith("'User:edr-operator' --operation Create --cluster")));
  });

  it('as a script with one `acl` line per row', () => {
    const script = aclsScript(rows, '127.0.0.1:9092');
    assert.ok(script.startsWith('#!/bin/sh\n'));
    assert.equal(script.split('\n').filter((l) => l.startsWith('acl --add ')).length, rows.length);
  });
});
