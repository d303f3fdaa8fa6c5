/**
 * `edr collector` configuration: one zod schema gives the type and the validation. Unknown keys are rejected,
 * every problem is reported at once (infra/config.ts). Units are in the names.
 */
import { z } from 'zod';
import { kafkaConfigSchema } from '../infra/kafka/config.js';
import { topics } from '../schemas/topics.js';

const ebpfSource = z.strictObject({
  type: z.literal('ebpf'),
  /** Passed to the native capture (native/README.md); unset keeps its defaults. */
  ringBufferBytes: z.number().int().positive().optional(),
  queueMaxEvents: z.number().int().positive().optional(),
  queueMaxBytes: z.number().int().positive().optional(),
  batchMaxEvents: z.number().int().positive().optional(),
  pollTimeoutMs: z.number().int().positive().optional(),
  wakeupBytes: z.number().int().min(0).optional(),
});

const replaySource = z.strictObject({
  type: z.literal('replay'),
  /** ExecveEvent records: JSON lines, or Avro single-object records (length-prefixed or an Avro file of them). */
  path: z.string().min(1),
  format: z.enum(['auto', 'jsonl', 'avro']).default('auto'),
  batchMaxEvents: z.number().int().positive().default(512),
});

export const collectorConfigSchema = z.strictObject({
  kafka: kafkaConfigSchema,
  source: z.discriminatedUnion('type', [ebpfSource, replaySource]).default({ type: 'ebpf' }),
  topics: z
    .strictObject({
      raw: z.string().min(1).default(topics.raw.name),
      audit: z.string().min(1).default(topics.audit.name),
      schemas: z.string().min(1).default(topics.schemas.name),
      /**
       * Create the topics (from the topics table's partitions and retention) when the broker is first reached. Off
       * by default: `edr topics create` does it as the operator; a collector's principal may only write.
       */
      create: z.boolean().default(false),
    })
    .prefault({}),
  spool: z
    .strictObject({
      dir: z.string().min(1).default('/var/lib/edr/collector/spool'),
      /** Bytes on disk before new records are dropped (and counted). */
      maxBytes: z
        .number()
        .int()
        .min(65536)
        .default(1024 * 1024 * 1024),
      segmentBytes: z
        .number()
        .int()
        .min(4096)
        .default(16 * 1024 * 1024),
      /** always: fsync every append (slow, survives power loss); interval: every fsyncIntervalMs; never: the OS decides. */
      fsync: z.enum(['always', 'interval', 'never']).default('interval'),
      fsyncIntervalMs: z.number().int().positive().default(1000),
    })
    .prefault({}),
  publish: z
    .strictObject({
      /** Events per producer request (each event is two records: raw and audit). */
      batchMaxEvents: z.number().int().positive().default(1000),
      /** A publish not acknowledged within this is treated as an outage: its records go to the spool. */
      timeoutMs: z.number().int().positive().default(10000),
      /** Pause between attempts to reach the broker while it is down (jittered down to half of it). */
      retryIntervalMs: z.number().int().positive().default(1000),
      /** Events held in memory while a publish is in flight; beyond, the source waits. */
      maxPendingEvents: z.number().int().positive().default(50000),
      /** How often loss counters are checked between batches. */
      lossCheckIntervalMs: z.number().int().positive().default(1000),
      /** How often a CollectorHeartbeat (alive, with the loss counters) goes to the audit topic. */
      heartbeatIntervalMs: z.number().int().positive().default(30_000),
      /** On SIGTERM: how long to wait for the broker before leaving the rest in the spool. */
      shutdownTimeoutMs: z.number().int().positive().default(15000),
    })
    .prefault({}),
  enrich: z
    .strictObject({
      passwdFile: z.string().default('/etc/passwd'),
      /** How often /etc/passwd is checked for changes (stat), at most. */
      passwdCheckIntervalMs: z.number().int().positive().default(1000),
      /** Processes remembered for parent image, command line and ancestry; least recently used evicted beyond. */
      processTableMaxEntries: z.number().int().min(16).default(32768),
      /** Longest command line kept per process table entry. */
      commandLineMaxBytes: z.number().int().min(64).default(4096),
      /** Images of the grandparent and above, nearest first. */
      ancestorsMax: z.number().int().min(0).default(8),
      procDir: z.string().default('/proc'),
      /** Where cgroup v2 is mounted; found in /proc/self/mounts when unset. */
      cgroupRoot: z.string().optional(),
    })
    .prefault({}),
  hashing: z
    .strictObject({
      enabled: z.boolean().default(false),
      /** Larger executables are not hashed (sha256 null). */
      maxFileBytes: z
        .number()
        .int()
        .positive()
        .default(256 * 1024 * 1024),
      cacheEntries: z.number().int().positive().default(8192),
    })
    .prefault({}),
  host: z
    .strictObject({
      /** Overrides /etc/machine-id (tests, hosts cloned without regenerating it). */
      id: z.string().min(1).optional(),
      hostname: z.string().min(1).optional(),
    })
    .prefault({}),
});

export type CollectorConfig = z.output<typeof collectorConfigSchema>;
export type CollectorConfigInput = z.input<typeof collectorConfigSchema>;
export type SourceConfig = CollectorConfig['source'];
