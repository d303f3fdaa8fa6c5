/**
 * Config files: YAML, checked against one zod schema per process that gives both the TypeScript type and the
 * validation. Every problem is reported at once; unknown keys are rejected (schemas use z.strictObject);
 * secrets come from the environment or files and never print.
 */
import { readFileSync } from 'node:fs';
import { parseDocument, type ScalarTag } from 'yaml';
import { z } from 'zod';
import { EdrError } from './errors.js';

/** A secret value: prints as *** in logs, JSON and errors; `reveal()` gives the value to the code that needs it. */
export class Secret {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
  }
  reveal(): string {
    return this.#value;
  }
  toString(): string {
    return '***';
  }
  toJSON(): string {
    return '***';
  }
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return 'Secret(***)';
  }
}

/**
 * A secret in config: `{ env: NAME }` or `{ file: PATH }`. A literal string is refused, so secrets do not end up
 * in config files checked into repositories.
 */
export function secret() {
  return z
    .union([z.strictObject({ env: z.string().min(1) }), z.strictObject({ file: z.string().min(1) })])
    .transform((ref, ctx): Secret => {
      if ('env' in ref) {
        const v = process.env[ref.env];
        if (v === undefined || v === '') {
          ctx.addIssue({ code: 'custom', message: `environment variable ${ref.env} is not set` });
          return z.NEVER;
        }
        return new Secret(v);
      }
      try {
        return new Secret(readFileSync(ref.file, 'utf8').trim());
      } catch (err) {
        ctx.addIssue({
          code: 'custom',
          message: `cannot read secret file ${ref.file}: ${(err as Error).message}`,
        });
        return z.NEVER;
      }
    });
}

/** Checks a parsed config value; throws EDR_CONFIG_INVALID listing every problem with its path. */
export function parseConfig<S extends z.ZodType>(schema: S, value: unknown, source = 'config'): z.output<S> {
  const result = schema.safeParse(value ?? {});
  if (result.success) return result.data;
  const problems = result.error.issues.map((i) => {
    const where =
      i.path.length === 0
        ? '(top level)'
        : i.path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p))).join('.');
    return `  ${where.replace(/\.\[/g, '[')}: ${i.message}`;
  });
  throw new EdrError(
    'EDR_CONFIG_INVALID',
    `${source}: ${problems.length} problem(s):\n${problems.join('\n')}`,
    {
      details: { source, problems: problems.length },
    },
  );
}

/**
 * Decimal integers with digit-group underscores (`timeoutMs: 30_000`): YAML 1.2's core schema reads them as
 * strings, YAML 1.1 and most loaders as numbers, and so do we (a timeout must not become a string).
 */
const groupedInt: ScalarTag = {
  tag: 'tag:yaml.org,2002:int',
  default: true,
  test: /^[-+]?[0-9]+(?:_[0-9]+)+$/,
  resolve: (text) => Number(text.replace(/_/g, '')),
};

/**
 * One YAML document as a config file holds it: YAML 1.2 (`yes`, `on` are strings), with 1.1 merge keys
 * (`<<: *base`, the merging map's own keys winning); duplicate keys, unknown tags and a second document are refused, the
 * first problem thrown.
 */
export function parseYaml(text: string): unknown {
  const doc = parseDocument(text, { merge: true, customTags: [groupedInt] });
  const problem = doc.errors[0] ?? doc.warnings[0];
  if (problem !== undefined) throw problem;
  return doc.toJS();
}

/** Reads and checks a YAML config file. */
export function loadConfig<S extends z.ZodType>(schema: S, file: string): z.output<S> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new EdrError('EDR_CONFIG_UNREADABLE', `cannot read config ${file}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  let value: unknown;
  try {
    value = parseYaml(text);
  } catch (err) {
    throw new EdrError('EDR_CONFIG_INVALID', `${file}: not valid YAML: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return parseConfig(schema, value, file);
}
