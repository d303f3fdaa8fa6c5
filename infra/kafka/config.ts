/**
 * The Kafka connection settings. Kept apart from the client: a process that only reads its config (the services'
 * config files import this schema) does not load kafkajs.
 */
import { z } from 'zod';
import { secret } from '../config.js';

/** Connection settings, as they appear under `kafka:` in every service's config. */
export const kafkaConfigSchema = z
  .strictObject({
    brokers: z.array(z.string().regex(/^[^\s:]+:\d+$/, 'expected host:port')).min(1, 'at least one broker'),
    clientId: z.string().min(1).default('edr'),
    tls: z
      .union([
        z.boolean(),
        z.strictObject({
          caFile: z.string().optional(),
          certFile: z.string().optional(),
          keyFile: z.string().optional(),
          rejectUnauthorized: z.boolean().default(true),
        }),
      ])
      .default(false),
    sasl: z
      .strictObject({
        mechanism: z.enum(['scram-sha-256', 'scram-sha-512', 'plain']),
        username: z.string().min(1),
        password: secret(),
        /** PLAIN sends the password as it is: without TLS only when this says so (a lab, a sidecar proxy). */
        allowPlainWithoutTls: z.boolean().default(false),
      })
      .optional(),
    /** Replication factor for topics this transport creates (1 for a single development broker). */
    replicationFactor: z.number().int().min(1).default(1),
    connectionTimeoutMs: z.number().int().positive().default(5000),
    requestTimeoutMs: z.number().int().positive().default(30000),
    /** How long a silent group member keeps its partitions. */
    sessionTimeoutMs: z.number().int().positive().default(10000),
    /**
     * Most record bytes sent in one produce request. A partition's records in a request form one record batch,
     * which the broker refuses above its message.max.bytes (1 MiB by default): larger sends (a burst of alerts in
     * one transaction) go as several requests.
     */
    maxRequestBytes: z.number().int().min(1024).default(900_000),
  })
  .superRefine((c, ctx) => {
    // Anyone on the path between a host and the broker would read the password, then write the rules topic.
    if (c.sasl?.mechanism === 'plain' && c.tls === false && !c.sasl.allowPlainWithoutTls) {
      ctx.addIssue({
        code: 'custom',
        path: ['sasl', 'mechanism'],
        message:
          'SASL PLAIN without TLS sends the password in clear text: set tls, use scram-sha-512, ' +
          'or set sasl.allowPlainWithoutTls: true',
      });
    }
  });
export type KafkaConfigInput = z.input<typeof kafkaConfigSchema>;
export type KafkaTransportConfig = z.output<typeof kafkaConfigSchema>;
