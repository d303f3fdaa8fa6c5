/**
 * The condition grammar of Sigma rules, by recursive descent. Precedence, loosest first: or, and, not,
 * `N of`/`all of`, parentheses. Identifiers and `of` patterns are resolved against the selections here, so a
 * compiled condition never looks a name up at match time.
 */
import { EdrError } from '../../infra/errors.js';

export type Condition =
  | { t: 'sel'; name: string }
  | { t: 'not'; e: Condition }
  | { t: 'and'; a: Condition[] }
  | { t: 'or'; a: Condition[] }
  /** At least `min` of the selections (min = count for `all of`). */
  | { t: 'of'; min: number; names: string[] };

interface Token {
  text: string;
  pos: number;
}

function tokenize(src: string): Token[] {
  const out: Token[] = [];
  const re = /\s*(?:([()])|([^\s()]+))/y;
  while (re.lastIndex < src.length) {
    const m = re.exec(src);
    if (m === null) break;
    const text = m[1] ?? m[2];
    if (text === undefined) break;
    out.push({ text, pos: m.index + m[0].length - text.length });
  }
  return out;
}

const KEYWORDS = new Set(['and', 'or', 'not', 'of', 'them', 'all']);

/** Parses and resolves a condition against the selection names. Throws EDR_SIGMA_CONDITION with a reason. */
export function parseCondition(src: string, selections: readonly string[]): Condition {
  const bad = (m: string, pos?: number): never => {
    const where = pos === undefined ? '' : ` at column ${pos + 1}`;
    throw new EdrError('EDR_SIGMA_CONDITION', `condition '${src}'${where}: ${m}`);
  };
  if (src.includes('|')) {
    bad("pipes ('| count() ...', '| near ...') are Sigma 1 syntax; write a correlation rule instead");
  }
  const toks = tokenize(src);
  let i = 0;
  const peek = (): string | undefined => toks[i]?.text.toLowerCase();
  const expectEnd = (): void => {
    const t = toks[i];
    if (t !== undefined) bad(`unexpected '${t.text}'`, t.pos);
  };

  const resolve = (pattern: string, pos: number): string[] => {
    if (pattern.toLowerCase() === 'them') return selections.filter((s) => !s.startsWith('_'));
    const re = new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
    const names = selections.filter((s) => re.test(s));
    if (names.length === 0) bad(`'${pattern}' matches no selection`, pos);
    return names;
  };

  const primary = (): Condition => {
    const t = toks[i];
    if (t === undefined) return bad('unexpected end of condition');
    const low = t.text.toLowerCase();
    if (t.text === '(') {
      i++;
      const e = or();
      if (toks[i]?.text !== ')') bad("missing ')'", toks[i]?.pos ?? src.length);
      i++;
      return e;
    }
    if ((low === 'all' || /^\d+$/.test(low)) && toks[i + 1]?.text.toLowerCase() === 'of') {
      const target = toks[i + 2];
      if (target === undefined || target.text === '(' || target.text === ')') {
        return bad(`'${t.text} of' needs a selection pattern or 'them'`, t.pos);
      }
      i += 3;
      const names = resolve(target.text, target.pos);
      const min = low === 'all' ? names.length : Number(low);
      if (min < 1) bad(`'${t.text} of' needs a count of at least 1`, t.pos);
      return { t: 'of', min, names };
    }
    if (t.text === ')' || KEYWORDS.has(low)) return bad(`unexpected '${t.text}'`, t.pos);
    if (low === 'near') bad("'near' is Sigma 1 syntax and is not supported", t.pos);
    if (!selections.includes(t.text)) bad(`unknown selection '${t.text}'`, t.pos);
    i++;
    return { t: 'sel', name: t.text };
  };
  const not = (): Condition => {
    if (peek() === 'not') {
      i++;
      return { t: 'not', e: not() };
    }
    return primary();
  };
  const and = (): Condition => {
    const a = [not()];
    while (peek() === 'and') {
      i++;
      a.push(not());
    }
    return a.length === 1 ? a[0]! : { t: 'and', a };
  };
  const or = (): Condition => {
    const a = [and()];
    while (peek() === 'or') {
      i++;
      a.push(and());
    }
    return a.length === 1 ? a[0]! : { t: 'or', a };
  };
  if (toks.length === 0) bad('empty condition');
  const e = or();
  expectEnd();
  return e;
}
