/**
 * The typed facade over the native exec capture (native/src/capture.cc + bpf/exec.bpf.c), and the only
 * importer of the `.node` file. Native errors become `EdrError` here, once.
 *
 *   const capture = openExecCapture();
 *   for await (const batch of capture) for (const event of batch) ...;   // ends after close()
 *
 * The kernel side counts every event it sees and every one it drops; the addon counts what it read from
 * the ring, what its bounded queue dropped and what it delivered. `reconcile(capture.stats())` checks
 * the two add up.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { EdrError } from '../infra/errors.js';

/** Process identity fields common to every kernel event. */
export interface KernelEventBase {
  /** Process id (the kernel's tgid). */
  pid: number;
  /** Thread id (for exec: the thread that called execve, now the leader). */
  tid: number;
  /** Real parent's tgid. */
  ppid: number;
  uid: number;
  euid: number;
  gid: number;
  /** Audit login uid; 4294967295 when unset. */
  loginUid: number;
  /** Audit session id; 4294967295 when unset. */
  sessionId: number;
  /** Task name (at most 15 bytes): for exec, the new image's. */
  comm: string;
  /** cgroup v2 id of the process. */
  cgroupId: bigint;
  /** Process start, ns since boot (the kernel's start_boottime). */
  startTimeNs: bigint;
  /** When the kernel saw the event, ns since boot. */
  timeNs: bigint;
}

/** A successful execve, captured in the kernel at sched_process_exec. */
export interface KernelExecEvent extends KernelEventBase {
  kind: 'exec';
  /** The path given to execve, made absolute against cwd when relative (symlinks not resolved). */
  filename: string;
  /** The file the kernel runs, symlinks resolved (as /proc/PID/exe): for a script, its interpreter. */
  exePath: string;
  /** argv of the new image; when truncated, the last element is cut where the buffer ended. */
  argv: string[];
  /** argv was longer than `ARGV_MAX_BYTES`. */
  argvTruncated: boolean;
  /** Full length of argv in bytes (NULs included), even when truncated. */
  argvBytes: number;
  /** Working directory, walked in the kernel up to the process's root. */
  cwd: string;
  /** cwd deeper or longer than the walk allows: `cwd` holds its last components, without a leading "/". */
  cwdTruncated: boolean;
  filenameTruncated: boolean;
  exePathTruncated: boolean;
  /** Some part (filename, cwd or argv) could not be read: it is empty or partial. */
  readError: boolean;
}

/** A new process (threads are not reported). */
export interface KernelForkEvent extends KernelEventBase {
  kind: 'fork';
}

/** The last thread of a process exited. */
export interface KernelExitEvent extends KernelEventBase {
  kind: 'exit';
  /** The kernel's exit code: status << 8, or the terminating signal number. */
  exitCode: number;
}

export type KernelEvent = KernelExecEvent | KernelForkEvent | KernelExitEvent;
export type KernelEventKind = KernelEvent['kind'];

export interface ExecCaptureOptions {
  /** Size of the BPF ring buffer; a power of two, at least the page size. Default 8 MiB. */
  ringBufferBytes?: number;
  /** Events the native queue holds for JavaScript before it drops (and counts). Default 65536. */
  queueMaxEvents?: number;
  /** Bytes the native queue holds before it drops (and counts). Default 64 MiB. */
  queueMaxBytes?: number;
  /** Most events in one batch yielded to JavaScript. Default 1024. */
  batchMaxEvents?: number;
  /** How long the drain thread blocks in one ring buffer poll; with `wakeupBytes`, the most a lone
   * event waits. Default 50 ms. */
  pollTimeoutMs?: number;
  /** Wake the drain thread only once this many bytes wait in the ring (cheaper under an exec storm,
   * later by up to `pollTimeoutMs` when quiet); 0 wakes it for every record. Default 64 KiB. */
  wakeupBytes?: number;
  /** Aborting closes the capture. */
  signal?: AbortSignal;
}

/** Every counter of the capture. After close, seen == received + ringDrops and
 * received == delivered + queueDrops + decodeDrops + queued (see `reconcile`). */
export interface ExecCaptureStats {
  /** Events the kernel programs tried to emit (exec + fork + exit). */
  seen: number;
  execSeen: number;
  forkSeen: number;
  exitSeen: number;
  /** Lost in the kernel because the ring buffer was full. */
  ringDrops: number;
  /** Program runs the kernel skipped (re-entry on a CPU while preempted): not in `seen`. */
  kernelMisses: number;
  argvTruncated: number;
  /** Exec records with a truncated filename, cwd or exe path. */
  pathTruncated: number;
  readErrors: number;
  /** Records the drain thread read from the ring. */
  received: number;
  /** Records dropped because the native queue was full (JavaScript too slow). */
  queueDrops: number;
  /** Records taken off the queue whose decoding threw: counted, never handed over. */
  decodeDrops: number;
  /** Records waiting in the native queue. */
  queued: number;
  /** Events handed to JavaScript. */
  delivered: number;
  batches: number;
  closed: boolean;
}

export interface ExecCapture extends AsyncIterable<KernelEvent[]> {
  /** Counters, summed over CPUs; final (and reconciled) once closed. */
  stats(): ExecCaptureStats;
  /** Detaches, drains what the kernel already wrote, then ends iteration after the queued batches. */
  close(): Promise<void>;
  readonly closed: boolean;
}

/** Bytes of argv captured per exec before `argvTruncated`. */
export const ARGV_MAX_BYTES = 8192;

const DEFAULTS = {
  ringBufferBytes: 8 * 1024 * 1024,
  queueMaxEvents: 65536,
  queueMaxBytes: 64 * 1024 * 1024,
  batchMaxEvents: 1024,
  pollTimeoutMs: 50,
  wakeupBytes: 64 * 1024,
} as const;

type NativeOptions = { -readonly [K in keyof typeof DEFAULTS]: number };

/** Validates options and fills defaults; throws EDR_NATIVE_OPTIONS listing every problem. */
export function resolveOptions(options: ExecCaptureOptions = {}): NativeOptions {
  const out: NativeOptions = { ...DEFAULTS };
  const problems: string[] = [];
  for (const key of Object.keys(DEFAULTS) as (keyof NativeOptions)[]) {
    const value = options[key];
    if (value === undefined) continue;
    const min = key === 'wakeupBytes' ? 0 : 1;
    if (!Number.isInteger(value) || value < min || value > 0xffffffff) {
      problems.push(`${key} must be an integer from ${min} to 2^32 - 1, got ${String(value)}`);
      continue;
    }
    out[key] = value;
  }
  const ring = out.ringBufferBytes;
  if (ring < 4096 || (ring & (ring - 1)) !== 0) {
    problems.push(`ringBufferBytes must be a power of two of at least 4096, got ${ring}`);
  }
  if (problems.length > 0) {
    throw new EdrError('EDR_NATIVE_OPTIONS', `invalid exec capture options: ${problems.join('; ')}`, {
      details: { problems },
    });
  }
  return out;
}

/** What did not add up, per stage; all zero once closed and drained. Positive while running means in flight. */
export function reconcile(stats: ExecCaptureStats): { kernel: number; queue: number } {
  return {
    kernel: stats.seen - stats.received - stats.ringDrops,
    queue: stats.received - stats.delivered - stats.queueDrops - stats.decodeDrops - stats.queued,
  };
}

const HINTS: Record<string, string> = {
  EDR_NATIVE_LOAD: 'the capture needs a 5.17+ kernel with BTF; the libbpf output above says what failed',
  EDR_NATIVE_ATTACH: 'check the kernel supports tp_btf programs (5.5+)',
};

/** Turns what the addon threw (an Error with an EDR_NATIVE_* code) into an EdrError; pure. */
export function toEdrError(err: unknown, fallbackCode = 'EDR_NATIVE_FAILED'): EdrError {
  if (err instanceof EdrError) return err;
  const code =
    typeof (err as { code?: unknown })?.code === 'string' &&
    (err as { code: string }).code.startsWith('EDR_NATIVE_')
      ? (err as { code: string }).code
      : fallbackCode;
  const message = err instanceof Error ? err.message : String(err);
  const hint = HINTS[code];
  return new EdrError(code, hint && !message.includes(hint) ? `${message} (${hint})` : message, {
    cause: err,
  });
}

interface NativeCapture {
  take(maxEvents: number): KernelEvent[] | null;
  stats(): ExecCaptureStats;
  close(): void;
}

interface NativeAddon {
  Capture: new (options: NativeOptions, onReady: () => void) => NativeCapture;
  eventVersion: number;
  argvMaxBytes: number;
}

const ADDON_FILE = 'edr_capture.node';
let addon: NativeAddon | undefined;

/** Where the addon is looked for: EDR_NATIVE_ADDON, then native/build/Release from source or from dist/native. */
function addonCandidates(): string[] {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const list = [
    path.resolve(here, 'build', 'Release', ADDON_FILE),
    path.resolve(here, '..', '..', 'native', 'build', 'Release', ADDON_FILE),
  ];
  const env = process.env.EDR_NATIVE_ADDON;
  return env ? [path.resolve(env), ...list] : list;
}

function loadAddon(): NativeAddon {
  if (addon) return addon;
  if (process.platform !== 'linux') {
    throw new EdrError(
      'EDR_NATIVE_UNSUPPORTED',
      `eBPF exec capture needs Linux, this is ${process.platform}`,
    );
  }
  const candidates = addonCandidates();
  const file = candidates.find((c) => existsSync(c));
  if (!file) {
    throw new EdrError(
      'EDR_NATIVE_NOT_BUILT',
      `native addon ${ADDON_FILE} not built (looked in ${candidates.join(', ')}): run native/setup.sh, then npm run build:native`,
    );
  }
  try {
    const loaded = createRequire(import.meta.url)(file) as NativeAddon;
    if (loaded.argvMaxBytes !== ARGV_MAX_BYTES) {
      throw new Error(
        `addon captures ${loaded.argvMaxBytes} bytes of argv, this facade expects ${ARGV_MAX_BYTES}`,
      );
    }
    addon = loaded;
    return loaded;
  } catch (err) {
    throw new EdrError(
      'EDR_NATIVE_NOT_BUILT',
      `native addon ${file} did not load (${err instanceof Error ? err.message : String(err)}): ` +
        'run native/setup.sh (libbpf, libelf), then npm run build:native',
      { cause: err },
    );
  }
}

class NativeExecCapture implements ExecCapture {
  readonly #native: NativeCapture;
  readonly #batchMax: number;
  #wake: (() => void) | undefined;
  #closed = false;
  #iterating = false;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = (): void => {
    void this.close();
  };

  constructor(options: ExecCaptureOptions) {
    const resolved = resolveOptions(options);
    const native = loadAddon();
    this.#batchMax = resolved.batchMaxEvents;
    try {
      // The addon calls onReady from its drain thread (through a thread-safe function) when a batch is queued.
      this.#native = new native.Capture(resolved, () => this.#wakeUp());
    } catch (err) {
      throw toEdrError(err, 'EDR_NATIVE_LOAD');
    }
    this.#signal = options.signal;
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  get closed(): boolean {
    return this.#closed;
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<KernelEvent[]> {
    if (this.#iterating)
      throw new EdrError('EDR_NATIVE_ITERATING', 'an exec capture has one consumer at a time');
    this.#iterating = true;
    try {
      for (;;) {
        let batch: KernelEvent[] | null;
        try {
          batch = this.#native.take(this.#batchMax);
        } catch (err) {
          throw toEdrError(err, 'EDR_NATIVE_DRAIN');
        }
        if (batch === null) return;
        if (batch.length > 0) {
          yield batch;
          continue;
        }
        // Set synchronously after take() found nothing: a wake-up queued meanwhile runs later, on this thread.
        await new Promise<void>((resolve) => {
          this.#wake = resolve;
        });
      }
    } finally {
      this.#iterating = false;
      // Leaving the loop early (break, throw) ends the capture: nobody would drain it.
      if (!this.#closed) await this.close();
    }
  }

  stats(): ExecCaptureStats {
    return this.#native.stats();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#signal?.removeEventListener('abort', this.#onAbort);
    try {
      this.#native.close();
    } finally {
      this.#wakeUp();
    }
  }
}

/** Loads and attaches the eBPF programs and starts draining; throws EdrError (EDR_NATIVE_PERMISSION,
 * EDR_NATIVE_NO_BTF, EDR_NATIVE_NOT_BUILT, EDR_NATIVE_LOAD, ...) saying what is missing. */
export function openExecCapture(options: ExecCaptureOptions = {}): ExecCapture {
  return new NativeExecCapture(options);
}
