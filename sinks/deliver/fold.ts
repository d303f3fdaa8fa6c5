/** Folding identical alerts and grouping folds into messages (pure). */
import type { Alert } from '../../schemas/types.js';
import type { Fold, Message } from '../sink.js';

/** How folds become messages: all of a batch in one, by digest window, or one each. */
export type MessageGrouping = 'batch' | { digestWindowMs: number } | 'each';

export function foldKey(a: Alert): string {
  return `${a.ruleId} ${a.event.hostId}`;
}

/**
 * Folds alerts of the same rule and host whose event times lie within `windowMs` of the fold's first into one
 * Fold; `false` gives each alert its own. Folds come in the order of their first alert.
 */
export function foldAlerts(alerts: readonly Alert[], windowMs: number | false): Fold[] {
  const out: Fold[] = [];
  const open = new Map<string, Fold>();
  const windowNs = windowMs === false ? 0n : BigInt(windowMs) * 1_000_000n;
  for (const a of alerts) {
    const t = a.event.timeNs;
    const key = foldKey(a);
    const f = windowMs === false ? undefined : open.get(key);
    const anchor = f === undefined ? 0n : f.alerts[0]!.event.timeNs;
    if (f !== undefined && t - anchor <= windowNs && anchor - t <= windowNs) {
      f.alerts.push(a);
      if (t < f.firstSeenNs) f.firstSeenNs = t;
      if (t > f.lastSeenNs) f.lastSeenNs = t;
      continue;
    }
    const nf: Fold = { key, alerts: [a], firstSeenNs: t, lastSeenNs: t };
    out.push(nf);
    open.set(key, nf);
  }
  return out;
}

/** Groups folds into messages: all in one, by digest window (first-seen times), or one each. */
export function groupMessages(folds: readonly Fold[], mode: MessageGrouping): Message[] {
  if (folds.length === 0) return [];
  if (mode === 'batch') return [{ folds: [...folds] }];
  if (mode === 'each') return folds.map((f) => ({ folds: [f] }));
  const windowNs = BigInt(mode.digestWindowMs) * 1_000_000n;
  const sorted = [...folds].sort((a, b) =>
    a.firstSeenNs < b.firstSeenNs ? -1 : a.firstSeenNs > b.firstSeenNs ? 1 : 0,
  );
  const out: Message[] = [];
  let cur: Message | undefined;
  let start = 0n;
  for (const f of sorted) {
    if (cur === undefined || f.firstSeenNs - start > windowNs) {
      cur = { folds: [] };
      start = f.firstSeenNs;
      out.push(cur);
    }
    cur.folds.push(f);
  }
  return out;
}
