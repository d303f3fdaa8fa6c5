/**
 * `npm run bench`: runs each benchmark script in dist/test/bench in its own process, one after another (they
 * compete for the same two cores otherwise). Each prints its figures with a baseline measured in the same run.
 * Usage: node dist/test/bench/run.js [NAME...]
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const benches = readdirSync(here)
  .filter((f) => f.endsWith('.js') && f !== 'run.js')
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort();
let failed = 0;
for (const b of benches) {
  process.stdout.write(`\n=== ${b.replace(/\.js$/, '')} ===\n`);
  const r = spawnSync(process.execPath, ['--expose-gc', path.join(here, b)], { stdio: 'inherit' });
  if (r.status !== 0) {
    failed++;
    process.stdout.write(`${b} failed (exit ${r.status ?? r.signal})\n`);
  }
}
process.exit(failed === 0 ? 0 : 1);
