/**
 * The one table of sink types: `type:` in config → the module that implements it. Adding an output is this
 * table plus its own file (config shape, defaults, a pure payload builder, `create`).
 */
import type { z } from 'zod';
import * as email from './email.js';
import * as file from './file.js';
import type { Sink, SinkContext, SinkDefaults } from './sink.js';
import * as slack from './slack.js';

export interface SinkModule {
  /** The type's own config fields (config.ts adds `type` and the shared delivery fields). */
  configSchema: z.ZodObject<Record<string, z.ZodType>>;
  defaults: SinkDefaults;
  /** Cross-field checks at config time. */
  check?(config: never, issue: (path: string, message: string) => void): void;
  create(config: never, ctx: SinkContext): Sink | Promise<Sink>;
}

export const registry = {
  email,
  file,
  slack,
} as const satisfies Record<string, SinkModule>;

export type SinkType = keyof typeof registry;
export const sinkTypes = Object.keys(registry) as SinkType[];
