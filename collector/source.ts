/**
 * Where events come from. A source is an async iterable of batches that ends when its AbortSignal aborts
 * (after handing over what it already captured); back-pressure is the consumer's `for await`.
 * Sources: `ebpf` (the kernel capture, ebpf-source.ts) and `replay` (a file, replay-source.ts). No other source
 * pretends to be a capture.
 */
import type { KernelEvent, KernelExecEvent } from '../native/index.js';
import type { ExecveEvent } from '../schemas/types.js';

/** An exec with what a replayed file already knew about it (enrichment the collector keeps as given). */
export interface ReplayedExecEvent extends KernelExecEvent {
  given?: Partial<
    Pick<
      ExecveEvent,
      'userName' | 'parentImage' | 'parentCommandLine' | 'ancestors' | 'containerId' | 'sha256'
    >
  > & { wallTimeNs?: bigint };
}

export type SourceEvent = KernelEvent | ReplayedExecEvent;

/** Running totals of what the source saw and lost before the collector got it. */
export interface SourceCounters {
  kernelSeen: number;
  /** Lost in the kernel: ring buffer full, or program runs the kernel skipped. */
  kernelDrops: number;
  kernelTruncated: number;
  kernelReadErrors: number;
  /** Lost between the drain thread and JavaScript (native queue full, or a record whose decoding threw). */
  queueDrops: number;
}

export interface Source extends AsyncIterable<SourceEvent[]> {
  readonly name: string;
  counters(): SourceCounters;
}

export const zeroCounters = (): SourceCounters => ({
  kernelSeen: 0,
  kernelDrops: 0,
  kernelTruncated: 0,
  kernelReadErrors: 0,
  queueDrops: 0,
});
