/**
 * `edr sinks` config: the Kafka connection, named sink instances (`type:` picks the module in registry.ts; several
 * instances of one type are fine) with the shared delivery policy, and routes that send an alert to sinks.
 * Checked at start with every problem reported at once; secrets are `{ env }` / `{ file }` and never print.
 *
 * ```yaml
 * kafka: { brokers: [127.0.0.1:9092] }
 * stateDir: /var/lib/edr/sinks
 * sinks:
 *   soc-slack: { type: slack, webhookUrl: { env: SLACK_WEBHOOK } }
 *   archive:   { type: file, directory: /var/log/edr }
 * routes:
 *   - { to: [archive] }
 *   - { to: [soc-slack], minLevel: high, source: live }
 * ```
 */

import { z } from 'zod';
import { loadConfig, parseConfig } from '../infra/config.js';
import { kafkaConfigSchema } from '../infra/kafka/config.js';
import { LEVEL_ORDER } from '../schemas/levels.js';
import { topics } from '../schemas/topics.js';
import { DEFAULT_MAX_THROTTLE_WINDOWS } from './deliver/throttle.js';
import { DEFAULT_MAX_DEDUP_ENTRIES } from './delivered-store.js';
import { registry, type SinkModule, type SinkType, sinkTypes } from './registry.js';

const regex = z.string().refine((s) => {
  try {
    new RegExp(s);
    return true;
  } catch {
    return false;
  }
}, 'not a valid regular expression');

/** The delivery policy every sink instance shares (deliver.ts applies it); defaults per type in the registry. */
export const deliveryShape = {
  /** Messages in flight at once for this instance. */
  concurrency: z.number().int().min(1).max(64).default(1),
  /** Rate limit (token bucket); 0 = none. Default: the sink type's (Slack: 1/s). */
  messagesPerSecond: z.number().min(0).optional(),
  burst: z.number().int().min(1).default(5),
  /** Per attempt. */
  timeoutMs: z.number().int().positive().default(10_000),
  retry: z
    .strictObject({
      /**
       * Attempts per message before a retryable failure gives it up (parked on the undeliverable topic). Absent
       * (the default): no limit, the sink keeps its offsets and retries until the peer is back, since an outage of
       * Slack or the mail relay is no reason to stop delivering. Permanent failures park at once either way.
       */
      maxAttempts: z.number().int().min(1).optional(),
      initialBackoffMs: z.number().int().positive().default(1000),
      maxBackoffMs: z.number().int().positive().default(60_000),
      /** A Retry-After beyond this is cut to it (a broken peer must not park a sink for hours). */
      maxRetryAfterMs: z.number().int().positive().default(300_000),
    })
    .prefault({}),
  /**
   * Fold identical alerts (same rule and host, event times within windowMs) into one message, and after such a
   * message hold identical ones for windowMs and send them as one summary (throttling); false: neither.
   */
  fold: z
    .union([z.literal(false), z.strictObject({ windowMs: z.number().int().positive().default(300_000) })])
    .optional(),
  /** One message for all folds within windowMs (an email digest) instead of one per fold. */
  digest: z.strictObject({ windowMs: z.number().int().positive().default(300_000) }).optional(),
  /** How long delivered alert ids are remembered against redelivery. */
  dedup: z
    .strictObject({
      windowMs: z
        .number()
        .int()
        .positive()
        .default(7 * 24 * 3_600_000),
      /** Ids remembered at most; beyond it the oldest are forgotten early (logged with the count). */
      maxEntries: z.number().int().positive().default(DEFAULT_MAX_DEDUP_ENTRIES),
    })
    .prefault({}),
  /**
   * Throttle windows (one per rule and host) open at most; beyond it the oldest closes early, sending what it
   * holds (logged with the count).
   */
  maxThrottleWindows: z.number().int().positive().default(DEFAULT_MAX_THROTTLE_WINDOWS),
  /** Redact secrets in command lines; extra patterns (regex; a capture group masks only the group). */
  redact: z.union([z.boolean(), z.strictObject({ patterns: z.array(regex).default([]) })]).optional(),
  /** Where a new instance starts reading; default: the type's (earliest for files, latest for notifications). */
  startFrom: z.enum(['earliest', 'latest']).optional(),
  /** Upper bound of alerts handled (and folded) together. */
  maxBatchRecords: z.number().int().positive().default(5000),
};

type DeliveryOptions = z.output<z.ZodObject<typeof deliveryShape>>;
export type SinkInstanceConfig = DeliveryOptions & { type: SinkType } & Record<string, unknown>;

function variant(type: SinkType) {
  const m: SinkModule = registry[type];
  const s = z.strictObject({ type: z.literal(type), ...m.configSchema.shape, ...deliveryShape });
  const check = m.check;
  if (check === undefined) return s;
  return s.superRefine((c, ctx) =>
    check(c as never, (path, message) => ctx.addIssue({ code: 'custom', path: [path], message })),
  );
}

const sinkSchema = z.discriminatedUnion(
  'type',
  sinkTypes.map(variant) as unknown as [ReturnType<typeof variant>, ...ReturnType<typeof variant>[]],
) as unknown as z.ZodType<SinkInstanceConfig>;

export const routeSchema = z.strictObject({
  /** Sink instance names. */
  to: z.array(z.string().min(1)).min(1),
  minLevel: z.enum(LEVEL_ORDER).optional(),
  /** Any of these Sigma tags; `attack.t1059` also matches `attack.t1059.004`. */
  tags: z.array(z.string().min(1)).optional(),
  ruleIds: z.array(z.string().min(1)).optional(),
  /** Regular expressions on the rule title (case-insensitive). */
  titles: z.array(regex).optional(),
  /** Host names or ids; `*` matches any run of characters. */
  hosts: z.array(z.string().min(1)).optional(),
  /** Live detections, replay runs (alerts with a run id), or both. */
  source: z.enum(['live', 'replay', 'any']).default('any'),
});
export type Route = z.output<typeof routeSchema>;

export const sinksConfigSchema = z
  .strictObject({
    kafka: kafkaConfigSchema,
    topics: z
      .strictObject({
        alerts: z.string().min(1).default(topics.alerts.name),
        undeliverable: z.string().min(1).default(topics.undeliverable.name),
        /** Alerts that cannot be decoded. */
        deadLetter: z.string().min(1).default(topics.deadLetter.name),
      })
      .prefault({}),
    /**
     * Create the topics the router writes (undeliverable, dead letters) when missing. Off by default: `edr topics
     * create` does it as the operator; a sink's principal may not create topics.
     */
    createTopics: z.boolean().default(false),
    /** Where each instance remembers what it delivered (dedup across restarts). */
    stateDir: z.string().min(1),
    sinks: z.record(
      z.string().regex(/^[a-z0-9][a-z0-9_.-]*$/, 'sink names are lower-case letters, digits, - _ .'),
      sinkSchema,
    ),
    routes: z.array(routeSchema).min(1),
  })
  .check(
    // Cross-references are checked even when other parts are wrong, so every problem shows at once.
    z.superRefine(
      (c, ctx) => {
        const raw = c as { sinks?: unknown; routes?: unknown };
        const names = new Set(
          typeof raw.sinks === 'object' && raw.sinks !== null ? Object.keys(raw.sinks) : [],
        );
        if (names.size === 0) ctx.addIssue({ code: 'custom', path: ['sinks'], message: 'no sinks defined' });
        const used = new Set<string>();
        if (Array.isArray(raw.routes)) {
          raw.routes.forEach((r: unknown, i) => {
            const to = (r as { to?: unknown } | null)?.to;
            if (!Array.isArray(to)) return;
            to.forEach((n: unknown, j) => {
              if (typeof n !== 'string') return;
              used.add(n);
              if (!names.has(n)) {
                ctx.addIssue({
                  code: 'custom',
                  path: ['routes', i, 'to', j],
                  message: `no sink named '${n}'`,
                });
              }
            });
          });
        }
        for (const n of names) {
          if (!used.has(n)) {
            ctx.addIssue({
              code: 'custom',
              path: ['sinks', n],
              message: 'sink is not the target of any route',
            });
          }
        }
      },
      { when: () => true },
    ),
  );

export type SinksConfig = z.output<typeof sinksConfigSchema>;

export function parseSinksConfig(value: unknown, source = 'config'): SinksConfig {
  return parseConfig(sinksConfigSchema, value, source);
}

export function loadSinksConfig(file: string): SinksConfig {
  return loadConfig(sinksConfigSchema, file);
}
