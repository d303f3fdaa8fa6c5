/**
 * Regular expressions for `|re` values, run on RE2 (compiled to WebAssembly): its automaton runs in time linear
 * in the input, so no rule can stall a detector with catastrophic backtracking. Constructs that need
 * backtracking (backreferences, lookaround) are rejected with a reason instead of being run unsafely.
 */
import { createRequire } from 'node:module';
import { EdrError } from '../../infra/errors.js';

interface Re2 {
  test(s: string): boolean;
  /** The compiled expression inside the WebAssembly module. */
  wrapper?: { delete(): void };
}
// re2-wasm is CommonJS and ships no ESM entry.
const { RE2 } = createRequire(import.meta.url)('re2-wasm') as { RE2: new (p: string, f: string) => Re2 };

/**
 * re2-wasm never frees a compiled expression, and its WebAssembly memory is fixed (16 MiB): after a few thousand
 * compiles every further one fails, so rule sets recompiled on changes would end up rejecting every regular
 * expression. Each is freed once its JS object is collected (its rule gone from every rule set in use).
 */
const release = new FinalizationRegistry<{ delete(): void }>((compiled) => compiled.delete());

const MEMO_MAX_INPUT = 512;
const MEMO_MAX_ENTRIES = 1024;

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
    if (re.wrapper !== undefined) release.register(re, re.wrapper);
  } catch (err) {
    const why = (err instanceof Error ? err.message : String(err)).replace(
      /^Invalid regular expression: \/.*\/\w*: /,
      '',
    );
    throw new EdrError('EDR_SIGMA_REGEX', `regular expression /${source}/ rejected: ${why}`, { cause: err });
  }
  // Each call into the WebAssembly engine costs microseconds, and command lines repeat across a fleet: keep
  // recent answers for short inputs (bounded; cleared when full).
  const memo = new Map<string, boolean>();
  const shortest = minMatchLength(source);
  return {
    source,
    test: (s) => {
      if (s.length < shortest) return false; // too short to hold any match: no need to ask the engine
      if (s.length > MEMO_MAX_INPUT) return re.test(s);
      let hit = memo.get(s);
      if (hit === undefined) {
        hit = re.test(s);
        if (memo.size >= MEMO_MAX_ENTRIES) memo.clear();
        memo.set(s, hit);
      }
      return hit;
    },
  };
}

/**
 * A lower bound on the length of any match, in characters (so also in UTF-16 units); 0 when unsure. Lets
 * patterns like `\\s[a-f0-9]{64}\\s` skip the engine for the many inputs too short to match.
 */
export function minMatchLength(source: string): number {
  return Math.min(...splitTop(source).map(sequenceMinLength));
}

function sequenceMinLength(s: string): number {
  let total = 0;
  let last = 0; // length of the last atom, for the quantifier that may follow it
  let i = 0;
  while (i < s.length) {
    const c = s[i]!;
    if (c === '*' || c === '?' || c === '+' || c === '{') {
      let min = c === '+' ? 1 : 0;
      if (c === '{') {
        const m = /^\{(\d+)(,\d*)?\}/.exec(s.slice(i));
        if (m === null) {
          // Not a repetition: a literal brace.
          total += 1;
          last = 1;
          i++;
          continue;
        }
        min = Number(m[1]);
        i += m[0].length;
      } else i++;
      if (s[i] === '?' || s[i] === '+') i++; // lazy or possessive marker
      total += last * min - last;
      last = 0;
      continue;
    }
    if (c === '(') {
      const end = closingParen(s, i);
      let inner = s.slice(i + 1, end);
      i = end + 1;
      const named = /^\?P?<[A-Za-z_]\w*>/.exec(inner);
      if (named !== null) inner = inner.slice(named[0].length);
      else if (inner.startsWith('?:')) inner = inner.slice(2);
      else if (inner.startsWith('?')) {
        // Inline flags, alone `(?i)` or scoped `(?i:...)`.
        const colon = /^\?[A-Za-z-]*:/.exec(inner);
        inner = colon === null ? '' : inner.slice(colon[0].length);
      }
      last = minMatchLength(inner);
    } else if (c === '[') {
      i = skipClass(s, i) + 1;
      last = 1;
    } else if (c === '\\') {
      const e = s[i + 1];
      i += 2;
      if (e === 'x' && s[i] === '{') i = s.indexOf('}', i) + 1;
      else if (e === 'x') i += 2;
      else if ((e === 'p' || e === 'P') && s[i] === '{') i = s.indexOf('}', i) + 1;
      else if (e === 'p' || e === 'P') i += 1;
      last = e === 'b' || e === 'B' || e === 'A' || e === 'z' ? 0 : 1;
    } else {
      last = c === '^' || c === '$' ? 0 : 1;
      i++;
    }
    total += last;
  }
  return total;
}

const MAX_ALTERNATIVES = 64;

/**
 * Literals of which every match of the pattern contains at least one (lowercased, unless `keepCase`: then as
 * written, which holds for a case-sensitive pattern only), for the candidate index and as a cheap check before
 * running the regex; undefined when none can be proven. Follows literal runs through small groups like `(W|R)`
 * and classes like `[Ww]`; anything else ends a run. Conservative on purpose.
 */
export function requiredLiterals(source: string, keepCase = false): string[] | undefined {
  const branches = splitTop(source);
  if (branches.length > 1) {
    const out: string[] = [];
    for (const b of branches) {
      const lits = requiredLiterals(b, keepCase);
      if (lits === undefined) return undefined;
      out.push(...lits);
    }
    return [...new Set(out)];
  }
  const runs: string[][] = [];
  let cur: string[] = [''];
  let before: string[] = cur; // `cur` before the last atom, to drop it when a quantifier makes it optional
  let last: string[] = ['']; // alternatives of the last atom
  const flush = (): void => {
    if (cur.every((x) => x.length > 0)) runs.push(cur);
    cur = [''];
    before = cur;
    last = [''];
  };
  const append = (alts: string[]): void => {
    if (cur.length * alts.length > MAX_ALTERNATIVES) flush();
    before = cur;
    last = alts;
    cur = cur.flatMap((x) => alts.map((a) => x + a));
  };
  let i = 0;
  while (i < source.length) {
    const c = source[i]!;
    if (c === '(') {
      const end = closingParen(source, i);
      let inner = source.slice(i + 1, end);
      i = end + 1;
      if (/^\?[imsU-]+$/.test(inner)) continue; // (?i): flags only, no content
      if (inner.startsWith('?:')) inner = inner.slice(2);
      const alts = inner.startsWith('?') ? undefined : literalAlternatives(inner);
      if (alts === undefined) flush();
      else append(alts);
      continue;
    }
    if (c === '[') {
      const end = skipClass(source, i);
      const body = source.slice(i + 1, end);
      i = end + 1;
      if (/^[^\\^\]-]{1,4}$/.test(body)) append([...new Set(keepCase ? body : body.toLowerCase())]);
      else flush();
      continue;
    }
    if (c === '*' || c === '?') {
      // Zero or more: the last atom may be absent, so the run ends before it.
      i++;
      if (source[i] === '?' || source[i] === '+') i++;
      cur = before;
      flush();
      continue;
    }
    if (c === '+' || c === '{') {
      // One or more: the run ends with the first repetition; the last one starts the next run.
      const again = last;
      if (c === '{') {
        const m = /^\{(\d*)/.exec(source.slice(i));
        if (m === null || m[1] === '' || Number(m[1]) === 0) {
          cur = before;
          flush();
        } else {
          flush();
          cur = again;
        }
        const close = source.indexOf('}', i);
        i = close < 0 ? source.length : close;
      } else {
        flush();
        cur = again;
      }
      i++;
      if (source[i] === '?' || source[i] === '+') i++;
      continue;
    }
    if (c === '^' || c === '$') {
      i++;
      continue;
    }
    if (c === '.') {
      flush();
      i++;
      continue;
    }
    if (c === '\\') {
      const e = source[i + 1];
      i += 2;
      if (e === 'b' || e === 'B') continue; // zero-width
      if (e === undefined || /[0-9A-Za-z]/.test(e)) {
        if (e === 'x') i += 2;
        flush();
      } else append([e]);
      continue;
    }
    append([c]);
    i++;
  }
  flush();
  let best: string[] | undefined;
  const minLen = (r: string[]): number => Math.min(...r.map((x) => x.length));
  for (const r of runs) {
    if (
      best === undefined ||
      minLen(r) > minLen(best) ||
      (minLen(r) === minLen(best) && r.length < best.length)
    ) {
      best = r;
    }
  }
  return best === undefined ? undefined : [...new Set(keepCase ? best : best.map((x) => x.toLowerCase()))];
}

/**
 * Whether a pattern compiled with `flags` matches letters by case: no `i` flag, and no inline flag group
 * (`(?i)`, `(?i:`, `(?-i)`...) that names one. Conservative: any `(?` followed by letters and an `i` counts.
 */
export function caseSensitive(source: string, flags: string): boolean {
  return !flags.includes('i') && !/\(\?[a-zA-Z-]*i/.test(source);
}

/** Alternatives of a group body made only of plain characters, like `W|R` or `exe|dll`; else undefined. */
function literalAlternatives(body: string): string[] | undefined {
  const out: string[] = [];
  for (const alt of splitTop(body)) {
    let lit = '';
    for (let i = 0; i < alt.length; i++) {
      const c = alt[i]!;
      if (c === '\\') {
        const e = alt[i + 1];
        if (e === undefined || /[0-9A-Za-z]/.test(e)) return undefined;
        lit += e;
        i++;
      } else if ('()[]{}*+?.^$|'.includes(c)) return undefined;
      else lit += c;
    }
    out.push(lit);
  }
  return out;
}

/** Splits at top-level `|` (outside groups and classes). */
export function splitTop(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '\\') i++;
    else if (c === '[') i = skipClass(s, i);
    else if (c === '(') depth++;
    else if (c === ')') depth--;
    else if (c === '|' && depth === 0) {
      out.push(s.slice(start, i));
      start = i + 1;
    }
  }
  out.push(s.slice(start));
  return out;
}

/** Index of the `)` closing the group opened at `open`. */
export function closingParen(s: string, open: number): number {
  let depth = 0;
  for (let i = open; i < s.length; i++) {
    const c = s[i];
    if (c === '\\') i++;
    else if (c === '[') i = skipClass(s, i);
    else if (c === '(') depth++;
    else if (c === ')' && --depth === 0) return i;
  }
  return s.length;
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
