/**
 * A rule that throws on one crafted value, for the tests of per-record evaluation errors. No rule of the engine
 * throws on an event today (the view's structure check sees to it), so a test makes one: `adjustRules` wraps the
 * condition of rule THROWING_RULE_ID so it throws on events whose command line contains POISON and answers as
 * before otherwise. In-process a test calls it on the store's rules; on an evaluation thread the pool loads this
 * module (EvalPool's testHook = HOOK_URL) and calls it on every set the thread compiles. Either way the real
 * evaluation runs the rule.
 */

import type { CompiledRule } from '../../detector/sigma/engine.js';
import { compileDocs } from '../../detector/sigma/engine.js';
import { parseRuleText } from '../../detector/sigma/parse.js';
import { containsRule } from './detector.js';

export const THROWING_RULE_ID = '5d3c0e0a-0000-4000-8000-00000000e201';
export const POISON = 'edr-poison-value';
export const HOOK_URL = new URL('./throwing-rule.js', import.meta.url);

const probe = compileDocs(parseRuleText(containsRule('probe', POISON), 'probe').docs).rules[0]!.test;
const adjusted = new WeakSet<CompiledRule>();

export function adjustRules(rules: readonly CompiledRule[]): void {
  for (const rule of rules) {
    if (rule.id !== THROWING_RULE_ID || adjusted.has(rule)) continue;
    adjusted.add(rule);
    const test = rule.test;
    rule.test = (ctx) => {
      if (probe(ctx)) throw new Error(`cannot evaluate the crafted value ${POISON}`);
      return test(ctx);
    };
  }
}
