import assert from 'node:assert/strict';
import { it } from 'node:test';
import { commandArgs } from './command-args.js';

/** Runs fn with stdout and stderr captured. */
function captured<T>(fn: () => T): { result: T; stdout: string; stderr: string } {
  const out = { stdout: '', stderr: '' };
  const write = { stdout: process.stdout.write, stderr: process.stderr.write };
  process.stdout.write = ((s: string) => {
    out.stdout += s;
    return true;
  }) as typeof process.stdout.write;
  process.stderr.write = ((s: string) => {
    out.stderr += s;
    return true;
  }) as typeof process.stderr.write;
  try {
    return { result: fn(), ...out };
  } finally {
    process.stdout.write = write.stdout;
    process.stderr.write = write.stderr;
  }
}

const spec = {
  usage: 'usage: edr thing --config FILE\n',
  options: { config: { type: 'string' }, quiet: { type: 'boolean', short: 'q' } },
  required: ['config'],
  missing: 'edr thing: --config FILE is required\n\n',
} as const;

it('answers --help and -h with the usage on stdout, exit 0', () => {
  for (const flag of ['--help', '-h']) {
    const r = captured(() => commandArgs([flag], spec));
    assert.deepEqual(r, { result: 0, stdout: spec.usage, stderr: '' });
  }
});

it('refuses a missing or empty required option with the message and the usage on stderr, exit 2', () => {
  for (const argv of [[], ['-q'], ['--config', '']]) {
    const r = captured(() => commandArgs(argv, spec));
    assert.deepEqual(r, { result: 2, stdout: '', stderr: `${spec.missing}${spec.usage}` });
  }
});

it('returns the values, and checks the number of positionals when asked', () => {
  const r = commandArgs(['--config', 'c.yaml', '-q'], spec);
  assert.ok(typeof r !== 'number');
  assert.deepEqual({ ...r.values }, { config: 'c.yaml', quiet: true });
  assert.deepEqual(r.positionals, []);
  const one = { usage: 'u\n', options: {}, positionals: 1 };
  const dir = commandArgs(['dir'], one);
  assert.deepEqual(typeof dir === 'number' ? dir : dir.positionals, ['dir']);
  assert.deepEqual(
    captured(() => commandArgs(['a', 'b'], one)),
    { result: 2, stdout: '', stderr: 'u\n' },
  );
  assert.throws(() => commandArgs(['--nope'], one), { code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION' });
});
