/**
 * `edr rules <subcommand>`: rule-set tooling. `check DIR` compiles every rule under DIR and prints a verdict per
 * rule and a summary; the exit code is 1 if any rule failed, so it can gate a rules repository's CI.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { load as loadYaml } from 'js-yaml';
import type { Command } from '../infra/cli.js';
import { EdrError } from '../infra/errors.js';
import { loadRules } from './sigma/engine.js';
import type { Placeholders } from './sigma/modifiers.js';

const USAGE = `usage: edr rules check DIR [--quiet] [--placeholders FILE]

  check DIR             compile every .yml/.yaml rule under DIR; print a verdict per rule and a summary
    --quiet, -q         print only failures, warnings and the summary
    --placeholders FILE YAML map of placeholder name to values, for rules using the 'expand' modifier
`;

/** Reads a YAML map `name: [values]` for `|expand` placeholders. */
export function readPlaceholders(path: string): Placeholders {
  let data: unknown;
  try {
    data = loadYaml(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new EdrError(
      'EDR_SIGMA_PLACEHOLDERS',
      `cannot read placeholders ${path}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new EdrError(
      'EDR_SIGMA_PLACEHOLDERS',
      `${path}: expected a map of placeholder names to lists of values`,
    );
  }
  const out: Record<string, string[]> = {};
  for (const [k, v] of Object.entries(data)) out[k] = (Array.isArray(v) ? v : [v]).map(String);
  return out;
}

async function check(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      quiet: { type: 'boolean', short: 'q' },
      placeholders: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const [dir] = positionals;
  if (dir === undefined || positionals.length > 1) {
    process.stderr.write(USAGE);
    return 2;
  }
  const placeholders = values.placeholders === undefined ? {} : readPlaceholders(values.placeholders);
  const set = loadRules(dir, { placeholders });
  const out: string[] = [];
  if (!values.quiet) {
    const ok = [...set.rules, ...set.filters, ...set.correlations].map((r) => ({
      at: `${r.doc.file}:${r.doc.line}`,
      text: `ok    ${r.doc.file}:${r.doc.line}  ${r.doc.id ?? '-'}  ${r.doc.title}`,
    }));
    ok.sort((a, b) => (a.at < b.at ? -1 : 1));
    for (const o of ok) out.push(o.text);
  }
  for (const w of set.warnings) out.push(`warn  ${w.file}:${w.line}  ${w.id ?? '-'}  ${w.message}`);
  for (const p of set.problems) {
    out.push(`FAIL  ${p.file}:${p.line}  ${p.id ?? '-'}  ${p.title ?? ''}: ${p.message} [${p.code}]`);
  }
  out.push(
    `${set.rules.length} rules, ${set.filters.length} filters, ${set.correlations.length} correlations compiled; ` +
      `${set.problems.length} failed; ${set.warnings.length} warnings`,
  );
  process.stdout.write(`${out.join('\n')}\n`);
  return set.problems.length > 0 ? 1 : 0;
}

export const command: Command = {
  summary: 'rule-set tooling: check',
  async run(argv) {
    const [sub, ...rest] = argv;
    switch (sub) {
      case 'check':
        return check(rest);
      case undefined:
      case '--help':
      case '-h':
        process.stdout.write(USAGE);
        return sub === undefined ? 2 : 0;
      default:
        process.stderr.write(`edr rules: unknown subcommand '${sub}'\n\n${USAGE}`);
        return 2;
    }
  },
};
