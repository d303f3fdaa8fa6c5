/**
 * The one table from Sigma field names (as Sysmon for Linux and SigmaHQ's linux/process_creation rules use them)
 * to our ExecveEvent. The Sigma engine reads events only through this table for the process_creation log source.
 */
import { ExecveView } from './execve-view.js';
import type { ExecveEvent } from './types.js';

export type SigmaValue = string | number | boolean | null;

/** Sigma field name → how to read it from an event. Absent (undefined) means the field is not in the event. */
export const processCreationFields: Readonly<Record<string, (e: ExecveEvent) => SigmaValue | undefined>> = {
  Image: (e) => e.image,
  CommandLine: (e) => (e instanceof ExecveView ? e.commandLine() : commandLine(e.argv)),
  ParentImage: (e) => e.parentImage,
  ParentCommandLine: (e) => e.parentCommandLine,
  CurrentDirectory: (e) => e.cwd,
  User: (e) => e.userName,
  LogonId: (e) => String(e.loginUid),
  ProcessId: (e) => String(e.pid),
  ParentProcessId: (e) => String(e.ppid),
  Hashes: (e) => (e.sha256 === null ? undefined : `SHA256=${e.sha256}`),
  ProcessGuid: (e) => `${e.bootId}:${e.pid}:${e.processStartNs}`,
  Computer: (e) => e.hostname,
  Container: (e) => e.containerId,
};

/** argv as one command line, the way Sysmon for Linux and auditd-based tools render it. */
export function commandLine(argv: readonly string[]): string {
  return argv.join(' ');
}

/**
 * The same event as an auditd EXECVE record (`type: EXECVE`, positional `a0`, `a1`, …, `argc`), for SigmaHQ's
 * rules/linux/auditd/execve rules (log source product linux, service auditd).
 */
export function auditdExecveFields(e: ExecveEvent): Record<string, string> {
  const out: Record<string, string> = { type: 'EXECVE', argc: String(e.argv.length) };
  for (let i = 0; i < e.argv.length; i++) out[argKey(i)] = e.argv[i]!;
  return out;
}

// `a0`, `a1`, … built once: this runs for every event, and a fresh key string per argument is measurable.
const ARG_KEYS: string[] = [];
function argKey(i: number): string {
  while (ARG_KEYS.length <= i) ARG_KEYS.push(`a${ARG_KEYS.length}`);
  return ARG_KEYS[i]!;
}
