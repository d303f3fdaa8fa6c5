/**
 * Sigma filters (meta filters): a filter names rules by id or name and adds its condition to theirs, as
 * pySigma does: a rule then matches when its own condition AND every applicable filter's condition hold.
 * A filter applies to a named rule only when the rule's log source is within the filter's.
 */
import { type CompiledDetection, type CompiledRule, compileDetection } from './compile.js';
import type { CompileOptions } from './modifiers.js';
import type { FilterDoc, LogSource } from './parse.js';

export interface CompiledFilter extends CompiledDetection {
  doc: FilterDoc;
}

export function compileFilter(doc: FilterDoc, opts: CompileOptions = {}): CompiledFilter {
  return { ...compileDetection(doc.detection, ['filter'], doc.at, opts), doc };
}

/** Whether every log source attribute the filter names is the rule's too. */
export function logsourceCovers(filter: LogSource, rule: LogSource): boolean {
  return (
    (filter.product === undefined || filter.product === rule.product) &&
    (filter.category === undefined || filter.category === rule.category) &&
    (filter.service === undefined || filter.service === rule.service)
  );
}

/**
 * Which filters apply to which rules (each filter to the rules it names, within its log source), without touching
 * the rules: compiled rules are shared between rule-set snapshots, so a rule with filters is a new object
 * (`withFilters`). Also returns, per filter, the references that named no loaded rule (so `rules check` can report
 * them) — a filter for rules that are not loaded is not an error.
 */
export function applyFilters(
  rules: readonly CompiledRule[],
  filters: readonly CompiledFilter[],
): { attached: Map<CompiledRule, CompiledFilter[]>; unresolved: Map<CompiledFilter, string[]> } {
  const byRef = new Map<string, CompiledRule[]>();
  const add = (key: string | undefined, r: CompiledRule): void => {
    if (key === undefined) return;
    const list = byRef.get(key) ?? [];
    list.push(r);
    byRef.set(key, list);
  };
  for (const r of rules) {
    add(r.doc.id, r);
    add(r.doc.name, r);
  }
  const attached = new Map<CompiledRule, CompiledFilter[]>();
  const unresolved = new Map<CompiledFilter, string[]>();
  for (const f of filters) {
    const missing: string[] = [];
    for (const ref of f.doc.rules) {
      const targets = byRef.get(ref);
      if (targets === undefined) {
        missing.push(ref);
        continue;
      }
      for (const r of targets) {
        if (!logsourceCovers(f.doc.logsource, r.logsource)) continue;
        const list = attached.get(r) ?? [];
        if (!list.includes(f)) list.push(f);
        attached.set(r, list);
      }
    }
    if (missing.length > 0) unresolved.set(f, missing);
  }
  return { attached, unresolved };
}

/** `rule` with `filters` applied: a new object, the compiled condition shared. */
export function withFilters(rule: CompiledRule, filters: CompiledFilter[]): CompiledRule {
  return { ...rule, filters: [...rule.filters, ...filters] };
}
