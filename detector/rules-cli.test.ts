import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { it } from 'node:test';
import { repoRoot } from '../infra/paths.js';

const here = (file: string) => new URL(file, import.meta.url).href;

/**
 * Runs `body` (ESM, top-level await) in a fresh Node process and lists the kafkajs files it loaded. kafkajs is
 * CommonJS: importing it from ESM still goes through the CommonJS loader, whose cache records every file.
 */
function kafkajsLoadedBy(body: string): {
  status: number | null;
  stdout: string;
  stderr: string;
  kafkajs: string[];
} {
  const script = `${body}
const { createRequire } = await import('node:module');
const loaded = Object.keys(createRequire(${JSON.stringify(here('./rules-cli.js'))}).cache);
process.stderr.write('\\nloaded: ' + JSON.stringify(loaded.filter((f) => /[\\\\/]node_modules[\\\\/]kafkajs[\\\\/]/.test(f))) + '\\n');
`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  const line = /\nloaded: (.*)\n$/.exec(r.stderr);
  assert.ok(line, `the child did not report what it loaded: ${r.stderr}`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, kafkajs: JSON.parse(line[1]!) as string[] };
}

// The project's own rule set: every rule compiles (project-rules.test.ts).
const rules = join(repoRoot, 'detector', 'rules');

it('`edr rules check` does not load the Kafka client', () => {
  const r = kafkajsLoadedBy(`
const { command } = await import(${JSON.stringify(here('./rules-cli.js'))});
process.exitCode = await command.run(['check', '--quiet', ${JSON.stringify(rules)}]);
`);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /\d+ rules, \d+ filters, \d+ correlations compiled; 0 failed/);
  assert.deepEqual(r.kafkajs, []);
});

it('(the probe sees kafkajs once the transport is loaded)', () => {
  const r = kafkajsLoadedBy(`await import(${JSON.stringify(here('../infra/kafka/transport.js'))});`);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(r.kafkajs.length > 0, 'no kafkajs file in the CommonJS cache');
});
