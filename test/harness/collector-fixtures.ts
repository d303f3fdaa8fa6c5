/** Shared by the collector's unit tests: a kernel exec event as a source yields it, and draining a spool. */
import type { Spool } from '../../collector/spool.js';
import type { KernelExecEvent } from '../../native/index.js';
import { projectCodec } from '../../schemas/codec.js';
import type { CollectorRecord, ExecveEvent } from '../../schemas/types.js';

/** An exec of /bin/true by `pid` (argv replaceable), as the eBPF source would hand it over. */
export function execEvent(pid: number, argv: string[] = ['true']): KernelExecEvent {
  return {
    kind: 'exec',
    pid,
    tid: pid,
    ppid: 1,
    uid: 0,
    euid: 0,
    gid: 0,
    loginUid: 4294967295,
    sessionId: 4294967295,
    comm: 'true',
    cgroupId: 0n,
    startTimeNs: 1n,
    timeNs: 2n,
    filename: '/bin/true',
    exePath: '/usr/bin/true',
    argv,
    argvTruncated: false,
    argvBytes: argv.reduce((n, a) => n + Buffer.byteLength(a) + 1, 0),
    cwd: '/',
    cwdTruncated: false,
    filenameTruncated: false,
    exePathTruncated: false,
    readError: false,
  };
}

/** Reads the spool to its end in chunks of `chunk`, committing each: what a draining publisher sees. */
export function drainSpool(spool: Spool, chunk = 7): Buffer[] {
  const got: Buffer[] = [];
  for (;;) {
    const r = spool.read(chunk);
    if (r.payloads.length === 0) return got;
    got.push(...r.payloads);
    spool.commit(r.end);
  }
}

const codec = projectCodec();

/** The audit topic's values split into events and the collector's own records, in order. */
export function decodeAudit(values: Buffer[]): { events: ExecveEvent[]; records: CollectorRecord[] } {
  const events: ExecveEvent[] = [];
  const records: CollectorRecord[] = [];
  for (const v of values) {
    const d = codec.decode(v);
    if (d.name === 'dev.edr.v1.CollectorRecord') records.push(d.value);
    else if (d.name === 'dev.edr.v1.ExecveEvent') events.push(d.value);
  }
  return { events, records };
}
