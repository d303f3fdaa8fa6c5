/**
 * Structured logs as JSON lines on stderr (stdout stays free for command output such as `edr hunt`).
 * Fields follow the project's names: err, component, topic, partition, offset, ruleId.
 */
import { EdrError } from './errors.js';

export type Level = 'debug' | 'info' | 'warn' | 'error';
const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

function envLevel(): Level {
  const v = process.env['EDR_LOG_LEVEL'];
  return v === 'debug' || v === 'info' || v === 'warn' || v === 'error' ? v : 'info';
}

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

function serializeErr(err: unknown): unknown {
  if (err instanceof EdrError) return { code: err.code, message: err.message, retryable: err.retryable };
  if (err instanceof Error) return { message: err.message, name: err.name };
  return err;
}

export function createLogger(base: Record<string, unknown> = {}, min: Level = envLevel()): Logger {
  const write = (level: Level, msg: string, fields?: Record<string, unknown>) => {
    if (order[level] < order[min]) return;
    const rec: Record<string, unknown> = { t: new Date().toISOString(), level, msg, ...base, ...fields };
    if ('err' in rec) rec['err'] = serializeErr(rec['err']);
    process.stderr.write(`${JSON.stringify(rec)}\n`);
  };
  return {
    debug: (m, f) => write('debug', m, f),
    info: (m, f) => write('info', m, f),
    warn: (m, f) => write('warn', m, f),
    error: (m, f) => write('error', m, f),
    child: (f) => createLogger({ ...base, ...f }, min),
  };
}
