/**
 * The `replay` source: ExecveEvent records from a file, for tests and demos. It says what it is (its name is
 * `replay`, and it counts no kernel drops); the records are re-published as this collector's, with new seq
 * numbers and this host's identity.
 *
 * Formats: JSON lines (one ExecveEvent per line; 64-bit fields as numbers or strings; enrichment fields that
 * are absent are computed here, those present are kept), or Avro: single-object records (as on the topics),
 * each preceded by its length as a 4-byte big-endian integer. `auto` picks Avro when the file starts with a
 * length followed by the single-object marker C3 01.
 */
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { EdrError } from '../infra/errors.js';
import { projectCodec } from '../schemas/codec.js';
import { type ExecveJson, execveFromJson } from '../schemas/execve-json.js';
import type { SourceConfig } from './config.js';
import { type ReplayedExecEvent, type Source, type SourceCounters, zeroCounters } from './source.js';

type ReplayConfig = Extract<SourceConfig, { type: 'replay' }>;

const GIVEN = ['userName', 'parentImage', 'parentCommandLine', 'ancestors', 'containerId', 'sha256'] as const;

/** What the collector's pipeline takes: the exec as the kernel would have reported it, plus what was known. */
export function toReplayedExec(e: ExecveJson): ReplayedExecEvent {
  const num = (v: bigint | undefined, d = 0): number => (v === undefined ? d : Number(v));
  const given: NonNullable<ReplayedExecEvent['given']> = {};
  for (const k of GIVEN) if (e[k] !== undefined) (given as Record<string, unknown>)[k] = e[k];
  if (e.timeNs !== undefined) given.wallTimeNs = e.timeNs;
  const argvBytes = e.argv.reduce((n, a) => n + Buffer.byteLength(a) + 1, 0);
  return {
    kind: 'exec',
    pid: e.pid ?? 0,
    tid: e.tid ?? e.pid ?? 0,
    ppid: e.ppid ?? 0,
    uid: num(e.uid),
    euid: num(e.euid ?? e.uid),
    gid: num(e.gid),
    loginUid: num(e.loginUid, 4294967295),
    sessionId: num(e.sessionId, 4294967295),
    comm: e.comm ?? (e.image.split('/').pop() ?? '').slice(0, 15),
    cgroupId: e.cgroupId ?? 0n,
    startTimeNs: e.processStartNs ?? 0n,
    timeNs: 0n,
    filename: e.image,
    exePath: e.image,
    argv: e.argv,
    argvTruncated: e.argvTruncated ?? false,
    argvBytes: e.argvBytes ?? argvBytes,
    cwd: e.cwd ?? '',
    cwdTruncated: false,
    filenameTruncated: false,
    exePathTruncated: false,
    readError: false,
    given,
  };
}

/** The length-prefixed Avro framing this source reads; for writing replay files. */
export function frameAvro(records: Buffer[]): Buffer {
  return Buffer.concat(
    records.flatMap((r) => {
      const len = Buffer.alloc(4);
      len.writeUInt32BE(r.length, 0);
      return [len, r];
    }),
  );
}

export class ReplaySource implements Source {
  readonly name = 'replay';
  #read = 0;

  constructor(
    private readonly config: ReplayConfig,
    private readonly signal: AbortSignal,
  ) {}

  counters(): SourceCounters {
    return { ...zeroCounters(), kernelSeen: this.#read };
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ReplayedExecEvent[]> {
    const format = this.config.format === 'auto' ? await detect(this.config.path) : this.config.format;
    const events = format === 'avro' ? this.#avro() : this.#jsonl();
    let batch: ReplayedExecEvent[] = [];
    for await (const e of events) {
      if (this.signal.aborted) break;
      batch.push(e);
      this.#read++;
      if (batch.length >= this.config.batchMaxEvents) {
        yield batch;
        batch = [];
      }
    }
    if (batch.length > 0 && !this.signal.aborted) yield batch;
  }

  async *#jsonl(): AsyncGenerator<ReplayedExecEvent> {
    const lines = createInterface({ input: this.#stream(), crlfDelay: Number.POSITIVE_INFINITY });
    let n = 0;
    for await (const line of lines) {
      n++;
      if (line.trim() === '') continue;
      try {
        yield toReplayedExec(execveFromJson(JSON.parse(line)));
      } catch (err) {
        throw new EdrError(
          'EDR_COLLECTOR_REPLAY_PARSE',
          `${this.config.path}:${n}: ${(err as Error).message}`,
          {
            cause: err,
            details: { file: this.config.path, line: n },
          },
        );
      }
    }
  }

  async *#avro(): AsyncGenerator<ReplayedExecEvent> {
    const codec = projectCodec();
    let buf: Buffer = Buffer.alloc(0);
    let record = 0;
    for await (const chunk of this.#stream()) {
      buf = buf.length === 0 ? (chunk as Buffer) : Buffer.concat([buf, chunk as Buffer]);
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const len = buf.readUInt32BE(0);
        record++;
        try {
          yield toReplayedExec(codec.decodeAs('dev.edr.v1.ExecveEvent', buf.subarray(4, 4 + len)));
        } catch (err) {
          throw new EdrError(
            'EDR_COLLECTOR_REPLAY_PARSE',
            `${this.config.path}: record ${record}: ${(err as Error).message}`,
            { cause: err, details: { file: this.config.path, record } },
          );
        }
        buf = buf.subarray(4 + len);
      }
    }
    if (buf.length > 0) {
      throw new EdrError(
        'EDR_COLLECTOR_REPLAY_PARSE',
        `${this.config.path}: ${buf.length} trailing bytes after record ${record} (truncated file?)`,
      );
    }
  }

  #stream(): NodeJS.ReadableStream {
    const s = createReadStream(this.config.path);
    s.on('error', () => {}); // surfaces through iteration
    return s;
  }
}

async function detect(file: string): Promise<'jsonl' | 'avro'> {
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    fh = await open(file, 'r');
  } catch (err) {
    throw new EdrError(
      'EDR_COLLECTOR_REPLAY_OPEN',
      `cannot read replay file ${file}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  try {
    const head = Buffer.alloc(6);
    const { bytesRead } = await fh.read(head, 0, 6, 0);
    return bytesRead === 6 && head[4] === 0xc3 && head[5] === 0x01 ? 'avro' : 'jsonl';
  } finally {
    await fh.close();
  }
}
