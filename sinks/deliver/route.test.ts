import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Alert } from '../../schemas/types.js';
import type { Route } from '../config.js';
import { alert } from './deliver.testing.js';
import { compileRoute } from './route.js';

const route = (r: Partial<Route>): Route => ({ to: ['x'], source: 'any', ...r });

describe('routing', () => {
  const cases: Array<[string, Partial<Route>, Alert, boolean]> = [
    ['no conditions', {}, alert(1), true],
    ['level at minimum', { minLevel: 'high' }, alert(1), true],
    ['level below minimum', { minLevel: 'critical' }, alert(1), false],
    ['tag prefix at a dot', { tags: ['attack.t1059'] }, alert(1), true],
    ['tag prefix not at a dot', { tags: ['attack.t105'] }, alert(1), false],
    ['tag case-insensitive', { tags: ['ATTACK.EXECUTION'] }, alert(1), true],
    ['rule id', { ruleIds: ['other'] }, alert(1), false],
    ['title regex, any case', { titles: ['piped TO shell'] }, alert(1), true],
    ['host glob on name', { hosts: ['web-*'] }, alert(1), true],
    ['host glob on id', { hosts: ['c0ffee*'] }, alert(1), true],
    ['host glob no match', { hosts: ['db-*'] }, alert(1), false],
    ['live only, live alert', { source: 'live' }, alert(1), true],
    ['live only, replay alert', { source: 'live' }, alert(1, { replayRunId: 'run-1' }), false],
    ['replay only, live alert', { source: 'replay' }, alert(1), false],
    [
      'all conditions together',
      { minLevel: 'medium', tags: ['attack.execution'], hosts: ['web-1'] },
      alert(1),
      true,
    ],
  ];
  for (const [name, r, a, want] of cases) {
    it(name, () => assert.equal(compileRoute(route(r))(a), want));
  }
});
