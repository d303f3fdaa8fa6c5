/**
 * `edr hunt --rules DIR --events FILE`: evaluate rules over JSON-lines events offline and print one JSON line
 * per match. Bad lines are reported with their number and skipped; the others are still evaluated.
 */
import { once } from 'node:events';
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { commandArgs } from '../infra/command-args.js';
import { EdrError } from '../infra/errors.js';
import { evaluableExecve, execveFromJson } from '../schemas/execve-json.js';
import { configLimits, readPlaceholders } from './rules-cli.js';
import {
  createEngine,
  evaluate,
  evaluateExecve,
  type LogSource,
  loadRules,
  type Match,
} from './sigma/engine.js';
import { jsonEvent } from './sigma/event-view.js';

const USAGE = `usage: edr hunt --rules DIR --events FILE [options]

  --rules DIR           rules to evaluate (a directory tree or one file)
  --events FILE         JSON lines, one event per line ('-' for standard input); nested objects are
                        addressed by dotted field names (process.name)
  --logsource SPEC      log source of events without a 'logsource' object, like
                        product=linux,category=process_creation
  --execve              events are our ExecveEvent records: evaluated as process_creation and auditd
  --placeholders FILE   values for 'expand' placeholders (YAML map)
  --config FILE         a detector config: its rules.limits apply (default: the built-in limits)
  --no-routing          evaluate every rule on every event, whatever its log source
`;

export function parseLogsource(spec: string): LogSource {
  const out: LogSource = {};
  for (const part of spec.split(',')) {
    const [k, v] = part.split('=').map((s) => s.trim());
    if ((k !== 'product' && k !== 'category' && k !== 'service') || !v) {
      throw new EdrError(
        'EDR_HUNT_USAGE',
        `--logsource: expected product=..,category=..,service=.., got '${part}'`,
      );
    }
    out[k] = v.toLowerCase();
  }
  return out;
}

const jsonReplacer = (_k: string, v: unknown): unknown => (typeof v === 'bigint' ? v.toString() : v);

function matchLine(m: Match, event: unknown): string {
  const r = m.rule;
  return JSON.stringify(
    {
      ruleId: r.id,
      title: r.title,
      level: r.level,
      author: r.author ?? null,
      logsource: m.logsource,
      matchedFields: m.fields,
      event,
    },
    jsonReplacer,
  );
}

export const command = {
  summary: 'evaluate Sigma rules over JSON-lines events offline',
  async run(argv: string[]): Promise<number> {
    const args = commandArgs(argv, {
      usage: USAGE,
      options: {
        rules: { type: 'string' },
        events: { type: 'string' },
        logsource: { type: 'string' },
        execve: { type: 'boolean' },
        placeholders: { type: 'string' },
        config: { type: 'string' },
        'no-routing': { type: 'boolean' },
      },
      required: ['rules', 'events'],
    });
    if (typeof args === 'number') return args;
    const { values } = args;
    const flagSource = values.logsource === undefined ? undefined : parseLogsource(values.logsource);
    const placeholders = values.placeholders === undefined ? {} : readPlaceholders(values.placeholders);
    const set = loadRules(values.rules, { placeholders, limits: configLimits(values.config) });
    for (const p of set.problems)
      process.stderr.write(`hunt: rule ${p.file}:${p.line}: ${p.message} [${p.code}]\n`);
    const engine = createEngine(set.rules, { routing: !values['no-routing'] });

    const input = values.events === '-' ? process.stdin : createReadStream(values.events);
    const opened = new Promise<void>((resolve, reject) => {
      if (input === process.stdin) resolve();
      input.once('error', reject);
      input.once('readable', () => resolve());
      input.once('end', () => resolve());
    });
    try {
      await opened;
    } catch (err) {
      throw new EdrError('EDR_HUNT_READ', `cannot read events ${values.events}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    let lineNo = 0;
    let events = 0;
    let bad = 0;
    let matches = 0;
    const fired = new Set<string>();
    const out: string[] = [];
    // A reader that goes away (`| head`) ends the hunt quietly; a slow one is waited for, not buffered for.
    let closed = false;
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err;
      closed = true;
    });
    const flush = async (): Promise<void> => {
      const text = out.length > 0 && !closed ? `${out.join('\n')}\n` : '';
      out.length = 0;
      if (text && !process.stdout.write(text)) {
        await once(process.stdout, 'drain').catch(() => {
          closed = true;
        });
      }
    };
    const lines = createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY });
    try {
      for await (const line of lines) {
        if (closed) break;
        lineNo++;
        if (line.trim() === '') continue;
        try {
          let obj: unknown;
          try {
            obj = JSON.parse(line);
          } catch (err) {
            throw new EdrError('EDR_HUNT_EVENT', `not JSON: ${(err as Error).message}`);
          }
          if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
            throw new EdrError('EDR_HUNT_EVENT', 'an event must be a JSON object');
          }
          const rec = obj as Record<string, unknown>;
          let found: Match[];
          if (values.execve) {
            found = evaluateExecve(engine, evaluableExecve(execveFromJson(rec)));
          } else {
            const own = rec['logsource'];
            const ls =
              own !== null && typeof own === 'object' && !Array.isArray(own)
                ? Object.fromEntries(Object.entries(own).map(([k, v]) => [k, String(v).toLowerCase()]))
                : flagSource;
            if (ls === undefined) {
              throw new EdrError(
                'EDR_HUNT_EVENT',
                "no log source: give the event a 'logsource' object or pass --logsource",
              );
            }
            found = evaluate(engine, jsonEvent(rec, ls));
          }
          events++;
          for (const m of found) {
            matches++;
            fired.add(m.rule.id);
            out.push(matchLine(m, obj));
          }
          if (out.length >= 256) await flush();
        } catch (err) {
          bad++;
          const msg = err instanceof Error ? err.message : String(err);
          process.stderr.write(`hunt: ${values.events}:${lineNo}: ${msg}\n`);
        }
      }
    } catch (err) {
      await flush();
      throw new EdrError('EDR_HUNT_READ', `cannot read events ${values.events}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    await flush();
    process.stderr.write(
      `hunt: ${events} events evaluated, ${bad} lines skipped; ${matches} matches from ${fired.size} rules; ` +
        `${set.rules.length} rules loaded, ${set.problems.length} failed\n`,
    );
    return bad > 0 || set.problems.length > 0 ? 1 : 0;
  },
};
