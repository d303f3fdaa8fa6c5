/**
 * Sigma's rule levels, least critical first. The engine validates rules against them, an Alert carries one as
 * `ruleLevel`, the detector's `rules.minLevel` and the sinks' routes compare by them: one order for all.
 */
export const LEVEL_ORDER = ['informational', 'low', 'medium', 'high', 'critical'] as const;
export type Level = (typeof LEVEL_ORDER)[number];

/** Whether `s` is one of the levels (as written: Sigma levels are lowercase). */
export function isLevel(s: string): s is Level {
  return (LEVEL_ORDER as readonly string[]).includes(s);
}

/** A level's place in that order (any case); an unknown level ranks as informational. */
export function levelRank(level: string): number {
  return Math.max((LEVEL_ORDER as readonly string[]).indexOf(level.toLowerCase()), 0);
}

/** Whether `level` is below `min`. */
export function belowLevel(level: string, min: Level): boolean {
  return levelRank(level) < levelRank(min);
}
