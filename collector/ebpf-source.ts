/** The `ebpf` source: the kernel exec/fork/exit capture (native/), closed when the signal aborts. */
import { type ExecCapture, type ExecCaptureOptions, openExecCapture } from '../native/index.js';
import type { SourceConfig } from './config.js';
import type { Source, SourceCounters, SourceEvent } from './source.js';

type EbpfConfig = Extract<SourceConfig, { type: 'ebpf' }>;

export class EbpfSource implements Source {
  readonly name = 'ebpf';
  readonly #capture: ExecCapture;

  /** Attaches now, so events from here on are captured even before iteration starts. Throws EDR_NATIVE_*. */
  constructor(config: EbpfConfig, signal: AbortSignal) {
    const { type: _type, ...options } = config;
    this.#capture = openExecCapture({ ...(options as ExecCaptureOptions), signal });
  }

  counters(): SourceCounters {
    const s = this.#capture.stats();
    return {
      kernelSeen: s.seen,
      kernelDrops: s.ringDrops + s.kernelMisses,
      kernelTruncated: s.argvTruncated + s.pathTruncated,
      kernelReadErrors: s.readErrors,
      // Both lost between the drain thread and JavaScript.
      queueDrops: s.queueDrops + s.decodeDrops,
    };
  }

  /** Ends once the signal aborted and what the kernel had written is drained. */
  [Symbol.asyncIterator](): AsyncIterator<SourceEvent[]> {
    return this.#capture[Symbol.asyncIterator]();
  }

  close(): Promise<void> {
    return this.#capture.close();
  }
}
