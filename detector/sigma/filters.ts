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
 * Attaches each filter to the rules it names. Returns, per filter, the references that named no loaded rule
 * (so `rules check` can report them) — a filter for rules that are not loaded is not an error.
 */
export function applyFilters(
  rules: readonly CompiledRule[],
  filters: readonly CompiledFilter[],
): Map<CompiledFilter, string[]> {
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
        if (logsourceCovers(f.doc.logsource, r.logsource) && !r.filters.includes(f)) r.filters.push(f);
      }
    }
    if (missing.length > 0) unresolved.set(f, missing);
  }
  return unresolved;
}
