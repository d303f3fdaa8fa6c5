/**
 * The argument handling every `edr` subcommand shares: parse the options (node:util parseArgs, strict), answer
 * --help/-h with the usage on stdout (exit 0), and refuse missing required options and positionals with the
 * usage on stderr (exit 2). It lives on the ground floor so the processes' command modules can use it without
 * depending on the command layer above them.
 */
import { type ParseArgsConfig, parseArgs } from 'node:util';

type Options = NonNullable<ParseArgsConfig['options']>;

const helpOption = { help: { type: 'boolean', short: 'h' } } as const;

type Values<O extends Options> = ReturnType<
  typeof parseArgs<{ args: string[]; options: O & typeof helpOption; allowPositionals: true }>
>['values'];

export interface CommandArgsSpec<O extends Options, R extends keyof O & string> {
  /** Printed for --help (stdout) and for missing arguments (stderr). */
  usage: string;
  /** The command's options; --help/-h is added. */
  options: O;
  /** Options that must be given (an empty value counts as not given). */
  required?: readonly R[];
  /** Written to stderr before the usage when a required option is missing. */
  missing?: string;
  /** Positionals are allowed; the command checks them itself. */
  allowPositionals?: boolean;
  /** Exactly this many positionals are required (implies allowPositionals). */
  positionals?: number;
}

export interface CommandArgs<O extends Options, R extends keyof O & string> {
  values: Omit<Values<O>, 'help' | R> & { [K in R]-?: string };
  positionals: string[];
}

/** The parsed arguments, or the exit code when the command has nothing more to do (help, or a usage error). */
export function commandArgs<const O extends Options, const R extends keyof O & string = never>(
  argv: string[],
  spec: CommandArgsSpec<O, R>,
): CommandArgs<O, R> | number {
  // Typed loosely here: the caller's view of the values is the precise one, CommandArgs<O, R>.
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ...spec.options, ...helpOption } as Options,
    allowPositionals: spec.allowPositionals === true || spec.positionals !== undefined,
  });
  if (values['help']) {
    process.stdout.write(spec.usage);
    return 0;
  }
  if ((spec.required ?? []).some((name) => values[name] === undefined || values[name] === '')) {
    process.stderr.write(`${spec.missing ?? ''}${spec.usage}`);
    return 2;
  }
  if (spec.positionals !== undefined && positionals.length !== spec.positionals) {
    process.stderr.write(spec.usage);
    return 2;
  }
  return { values: values as unknown as CommandArgs<O, R>['values'], positionals };
}
