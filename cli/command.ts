/**
 * An `edr` subcommand. It imports nothing, so any module can be checked against it without depending on the
 * dispatcher; the processes' command modules export plain objects of this shape and only cli/ names the type.
 */
export interface Command {
  summary: string;
  /** Returns the process exit code. */
  run(argv: string[]): Promise<number>;
}
