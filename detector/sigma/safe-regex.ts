/**
 * Regular expressions for `|re` values, run on RE2 (compiled to WebAssembly): its automaton runs in time linear
 * in the input, so no rule can stall a detector with catastrophic backtracking. Constructs that need
 * backtracking (backreferences, lookaround) are rejected with a reason instead of being run unsafely.
 */
import { createRequire } from 'node:module';
import { EdrError } from '../../infra/errors.js';

interface Re2 {
  test(s: string): boolean;
}
// re2-wasm is CommonJS and ships no ESM entry.
const { RE2 } = createRequire(import.meta.url)('re2-wasm') as { RE2: new (p: string, f: string) => Re2 };

export interface SafeRegex {
  source: string;
  test(s: string): boolean;
}

const UNSUPPORTED: readonly [RegExp, string][] = [
  [/\(\?<?[=!]/, 'lookaround assertions need backtracking'],
  [/\\[1-9]/, 'backreferences need backtracking'],
  [/\(\?>/, 'atomic groups are not supported'],
  [/[*+?}]\+/, 'possessive quantifiers are not supported'],
];

/** Compiles a Sigma `re` value; flags is a subset of 'ims'. Throws EDR_SIGMA_REGEX with a reason. */
export function compileRegex(source: string, flags: string): SafeRegex {
  for (const [probe, why] of UNSUPPORTED) {
    if (probe.test(source)) {
      throw new EdrError(
        'EDR_SIGMA_REGEX',
        `regular expression /${source}/ rejected: ${why} (linear-time engine)`,
      );
    }
  }
  let re: Re2;
  try {
    re = new RE2(source, `${flags}u`);
  } catch (err) {
    const why = (err instanceof Error ? err.message : String(err)).replace(
      /^Invalid regular expression: \/.*\/\w*: /,
      '',
    );
    throw new EdrError('EDR_SIGMA_REGEX', `regular expression /${source}/ rejected: ${why}`, { cause: err });
  }
  return { source, test: (s) => re.test(s) };
}

/**
 * The longest literal that every match of the pattern must contain (lowercased), for the candidate index;
 * undefined when none can be proven (top-level alternation, everything optional, ...). Conservative on purpose.
 */
export function requiredLiteral(source: string): string | undefined {
  const runs: string[] = [];
  let run = '';
  let prevLiteral = false; // whether the last atom was a literal char appended to `run`
  const flush = (): void => {
    if (run.length > 0) runs.push(run);
    run = '';
  };
  let i = 0;
  const n = source.length;
  while (i < n) {
    const c = source[i]!;
    if (c === '|') return undefined;
    if (c === '(') {
      // Skip the whole group: its content may be optional or alternated.
      let depth = 0;
      for (; i < n; i++) {
        const d = source[i];
        if (d === '\\') i++;
        else if (d === '[') i = skipClass(source, i);
        else if (d === '(') depth++;
        else if (d === ')' && --depth === 0) break;
      }
      i++;
      flush();
      prevLiteral = false;
      continue;
    }
    if (c === '[') {
      i = skipClass(source, i) + 1;
      flush();
      prevLiteral = false;
      continue;
    }
    if (c === '*' || c === '?' || c === '{') {
      // The previous atom may be absent ({0,...}, *, ?): drop it from the run.
      let zeroMin = c !== '{';
      if (c === '{') {
        const m = /^\{(\d*)/.exec(source.slice(i));
        zeroMin = m === null || m[1] === '' || Number(m[1]) === 0;
        const close = source.indexOf('}', i);
        i = close < 0 ? n : close;
      }
      if (prevLiteral && zeroMin) run = run.slice(0, -1);
      flush();
      prevLiteral = false;
      i++;
      if (source[i] === '?') i++;
      continue;
    }
    if (c === '+') {
      flush();
      prevLiteral = false;
      i++;
      if (source[i] === '?') i++;
      continue;
    }
    if (c === '.' || c === '^' || c === '$') {
      flush();
      prevLiteral = false;
      i++;
      continue;
    }
    if (c === '\\') {
      const e = source[i + 1];
      if (e === undefined || /[0-9A-Za-z]/.test(e)) {
        flush();
        prevLiteral = false;
        i += e === 'x' ? 4 : 2;
        continue;
      }
      run += e;
      prevLiteral = true;
      i += 2;
      continue;
    }
    run += c;
    prevLiteral = true;
    i++;
  }
  flush();
  let best: string | undefined;
  for (const r of runs) if (best === undefined || r.length > best.length) best = r;
  return best?.toLowerCase();
}

function skipClass(s: string, start: number): number {
  let i = start + 1;
  if (s[i] === '^') i++;
  if (s[i] === ']') i++;
  for (; i < s.length; i++) {
    if (s[i] === '\\') i++;
    else if (s[i] === ']') return i;
  }
  return s.length;
}
