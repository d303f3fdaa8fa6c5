/** Routing: which alerts a sink instance takes, from the routes naming it. */
import { levelRank } from '../../schemas/levels.js';
import type { Alert } from '../../schemas/types.js';
import type { Route } from '../config.js';

function globToRegExp(glob: string): RegExp {
  const body = glob
    .split('*')
    .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${body}$`, 'i');
}

/** A route as a predicate on alerts (regular expressions compiled once). */
export function compileRoute(r: Route): (a: Alert) => boolean {
  const titles = r.titles?.map((t) => new RegExp(t, 'i'));
  const hosts = r.hosts?.map(globToRegExp);
  const tags = r.tags?.map((t) => t.toLowerCase());
  const min = r.minLevel === undefined ? undefined : levelRank(r.minLevel);
  return (a) => {
    if (min !== undefined && levelRank(a.ruleLevel) < min) return false;
    if (r.source === 'live' && a.replayRunId !== null) return false;
    if (r.source === 'replay' && a.replayRunId === null) return false;
    if (r.ruleIds && !r.ruleIds.includes(a.ruleId)) return false;
    if (tags) {
      const have = a.ruleTags.map((t) => t.toLowerCase());
      if (!tags.some((t) => have.some((h) => h === t || h.startsWith(`${t}.`)))) return false;
    }
    if (titles && !titles.some((re) => re.test(a.ruleTitle))) return false;
    if (hosts && !hosts.some((re) => re.test(a.event.hostname) || re.test(a.event.hostId))) return false;
    return true;
  };
}

/** Whether any route naming `sink` takes the alert. */
export function router(routes: readonly Route[], sink: string): (a: Alert) => boolean {
  const mine = routes.filter((r) => r.to.includes(sink)).map(compileRoute);
  return (a) => mine.some((m) => m(a));
}
