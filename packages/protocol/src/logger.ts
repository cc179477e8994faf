import { Writable } from 'node:stream';
import { type Logger, pino } from 'pino';
import type { LogLevel } from './config-file.js';

export type { Logger } from 'pino';

const LEVEL_WIDTH = 5;
const FIXED_KEYS = new Set(['level', 'time', 'msg', 'name']);

/** Turns one pino JSON line into "12:00:01 INFO  msg key=value ..." for a terminal. */
export function prettyLine(json: string): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  const time = typeof record.time === 'string' ? record.time.slice(11, 19) : '';
  const level = String(record.level ?? '')
    .toUpperCase()
    .padEnd(LEVEL_WIDTH);
  const fields = Object.entries(record)
    .filter(([key]) => !FIXED_KEYS.has(key))
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  return `${time} ${level} ${String(record.msg ?? '')}${fields.length > 0 ? ` ${fields.join(' ')}` : ''}\n`;
}

class PrettyStream extends Writable {
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    for (const line of chunk.toString('utf8').split('\n'))
      if (line !== '') process.stdout.write(prettyLine(line));
    callback();
  }
}

export interface LoggerOptions {
  level?: LogLevel;
  /** Force JSON (true) or pretty (false); default: JSON unless stdout is a TTY. */
  json?: boolean;
}

/**
 * The logger both programs use: pino JSON lines on stdout (for journald and for tests), written
 * synchronously so nothing is lost on exit; a compact human format when stdout is a terminal.
 */
export function createLogger(opts: LoggerOptions = {}): Logger {
  const json = opts.json ?? !process.stdout.isTTY;
  const options = {
    level: opts.level ?? 'info',
    base: null,
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return json ? pino(options, pino.destination({ fd: 1, sync: true })) : pino(options, new PrettyStream());
}
