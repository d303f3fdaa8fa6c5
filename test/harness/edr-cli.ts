/**
 * Helpers for tests that drive the `edr` command and feed a detector: the command as a child process, and
 * ExecveEvents whose command line carries a marker for a rule to match.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from '../../infra/paths.js';
import type { OutRecord, Transport } from '../../infra/transport.js';
import { projectCodec } from '../../schemas/codec.js';
import { sampleEvent } from '../fixtures/events.js';

/** `node dist/cli/edr.js ARGS`, its exit code and its stdout and stderr together; `env` adds variables. */
export function edr(args: string[], env: Record<string, string> = {}): { code: number; out: string } {
  const r = spawnSync(process.execPath, [path.join(repoRoot, 'dist', 'cli', 'edr.js'), ...args], {
    encoding: 'utf8',
    env: { ...process.env, EDR_LOG_LEVEL: 'error', ...env },
  });
  return { code: r.status ?? 1, out: `${r.stdout}${r.stderr}` };
}

let seq = 0;

/**
 * Publishes `n` events over `hosts` hosts, each running `echo MARKER SEQ` (SEQ unique in the process), keyed by
 * host; `headers` gives each record's headers from its sequence number.
 */
export async function produceMarked(
  t: Transport,
  topic: string,
  n: number,
  marker: string,
  opts: { hosts?: number; headers?: (seq: number) => Record<string, string> } = {},
): Promise<void> {
  const codec = projectCodec();
  const records: OutRecord[] = [];
  for (let i = 0; i < n; i++) {
    const host = `host-${i % (opts.hosts ?? 32)}`;
    const e = sampleEvent({
      hostId: host,
      hostname: host,
      seq: BigInt(++seq),
      timeNs: 1_795_000_000_000_000_000n + BigInt(seq) * 1_000_000n,
      argv: ['sh', '-c', `echo ${marker} ${seq}`],
    });
    records.push({
      topic,
      key: host,
      value: codec.encode('dev.edr.v1.ExecveEvent', e),
      ...(opts.headers ? { headers: opts.headers(seq) } : {}),
    });
  }
  const p = await t.producer();
  await p.publish(records);
  await p.close();
}
