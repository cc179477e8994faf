import { Writable } from 'node:stream';
import { type Logger, pino } from 'pino';
import { BatchedLineDestination } from './batched-line-destination.js';
import type { LogLevel } from './config-file.js';

export type { Logger } from 'pino';
export { LOG_FLUSH_DELAY_MS } from './batched-line-destination.js';

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
  /** Where JSON lines go instead of stdout (tests read them back). */
  destination?: NodeJS.WritableStream;
}

/**
 * The logger both programs use: pino JSON lines on stdout (for journald and for tests), the lines of each
 * 50 ms written together and synchronously, the rest on exit; a compact human format on a terminal.
 */
export function createLogger(opts: LoggerOptions = {}): Logger {
  const json = opts.json ?? !process.stdout.isTTY;
  const options = {
    level: opts.level ?? 'info',
    base: null,
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  if (opts.destination) return pino(options, opts.destination);
  if (!json) return pino(options, new PrettyStream());
  return pino(options, new BatchedLineDestination(pino.destination({ fd: 1, sync: true })));
}

export type LogLine = Record<string, unknown> & { msg: string };

export interface CapturedLogs {
  logger: Logger;
  lines: LogLine[];
  /** Resolves with the first line with this `msg` and these field values; rejects after `timeoutMs`. */
  waitFor(msg: string, fields?: Record<string, unknown>, timeoutMs?: number): Promise<LogLine>;
}

/** A logger that keeps its lines in memory, for tests of code that logs (both ends' unit tests use it). */
export function captureLogs(level: LogLevel = 'debug'): CapturedLogs {
  const lines: LogLine[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const text of chunk.toString('utf8').split('\n'))
        if (text) lines.push(JSON.parse(text) as LogLine);
      callback();
    },
  });
  const find = (msg: string, fields: Record<string, unknown>) =>
    lines.find((line) => line.msg === msg && Object.entries(fields).every(([k, v]) => line[k] === v));
  const waitFor = async (msg: string, fields: Record<string, unknown> = {}, timeoutMs = 5000) => {
    const deadline = Date.now() + timeoutMs;
    for (let line = find(msg, fields); Date.now() < deadline; line = find(msg, fields)) {
      if (line) return line;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const seen = lines.map((line) => JSON.stringify(line)).join('\n');
    throw new Error(`no log line "${msg}" ${JSON.stringify(fields)} within ${timeoutMs} ms; seen:\n${seen}`);
  };
  return { logger: createLogger({ level, destination }), lines, waitFor };
}
