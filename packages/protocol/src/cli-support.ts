import { closestName } from './closest-name.js';
import { ConfigError, EXIT_CONFIG } from './config-file.js';
import type { Logger } from './logger.js';
import { PROTOCOL_VERSION } from './version.js';

/** A bad command line; printed with the program's usage hint, exit status 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/**
 * Runs a CLI's main function: ConfigError and UsageError print their message and exit 2, anything else
 * exits 1 with its message; a returned number is the exit status (undefined: keep running).
 */
export function runCli(program: string, main: () => Promise<number | undefined>): void {
  main().then(
    (status) => {
      if (status !== undefined) process.exitCode = status;
    },
    (err: unknown) => {
      if (err instanceof ConfigError) {
        process.stderr.write(`${err.message}\n`);
        process.exit(EXIT_CONFIG);
      }
      if (err instanceof UsageError) {
        process.stderr.write(`${program}: ${err.message}\n(see ${program} --help)\n`);
        process.exit(EXIT_CONFIG);
      }
      process.stderr.write(`${program}: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}

/** What a second signal needs to say what it cuts short. */
export interface SignalExitOptions {
  logger: Logger;
  /** The work a drain waits for, as log fields (`open_connections`...). */
  openWork: () => Record<string, number>;
}

/**
 * SIGTERM or SIGINT drains (`drain` resolves when done) and exits 0; a second signal exits at once (status 1),
 * after a line saying what it did not wait for: the drain's own lines (`connection closed`, `... stopped`)
 * will never come, and without it the log would just stop.
 */
export function exitOnSignals(drain: () => Promise<void>, { logger, openWork }: SignalExitOptions): void {
  let draining = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (draining) {
      logger.warn({ signal, ...openWork() }, 'second signal: exiting without waiting for open connections');
      logger.flush();
      process.exit(1);
    }
    draining = true;
    drain().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`shutdown failed: ${err instanceof Error ? err.message : String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

/** Splits "a,b, c" into ["a","b","c"], dropping empty parts. */
export function splitList(text: string): string[] {
  return text
    .split(',')
    .map((part) => part.trim())
    .filter((part) => part !== '');
}

/**
 * parseArgs's complaint, said shortly and with the option the user likely meant (the options are read from
 * the usage text, which lists every one).
 */
function argumentError(err: NodeJS.ErrnoException, usage: string): UsageError {
  const quoted = /'([^']+)'/.exec(err.message)?.[1];
  if (quoted === undefined) return new UsageError(err.message);
  // "-c, --config <value>" names the option by both its names: the long one says it best.
  const option = /--[a-z0-9-]+/.exec(quoted)?.[0] ?? quoted;
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    const known = new Set(usage.match(/--[a-z][a-z0-9-]*/g));
    const guess = closestName(quoted, known);
    return new UsageError(
      `unknown option ${quoted}${guess === undefined ? '' : ` (did you mean ${guess}?)`}`,
    );
  }
  if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    if (/argument missing/.test(err.message)) return new UsageError(`${option} needs a value`);
    if (/does not take an argument/.test(err.message)) return new UsageError(`${option} takes no value`);
    if (/ambiguous/.test(err.message))
      return new UsageError(`${option} needs a value (write ${option}=VALUE for one that starts with "-")`);
  }
  return new UsageError(err.message);
}

/**
 * parseArgs keeps the last value of an option given twice: `token issue --ports 2222 --ports 8080` issued a
 * token for 8080 alone, without a word. Only the options that collect (--tcp, --udp) may repeat, and
 * switches (-h and --help), which have no value to lose.
 */
function refuseRepeatedOptions(parsed: {
  values: Record<string, unknown>;
  tokens?: { kind: string; name?: string; value?: string }[];
}): void {
  const seen = new Set<string>();
  for (const token of parsed.tokens ?? []) {
    if (token.kind !== 'option' || token.name === undefined || token.value === undefined) continue;
    if (Array.isArray(parsed.values[token.name])) continue;
    if (seen.has(token.name))
      throw new UsageError(`--${token.name} is given twice, and only the second would count: give it once`);
    seen.add(token.name);
  }
}

export interface CliStart<T> {
  program: string;
  version: string;
  usage: string;
  /** Accepted commands ("run", "check", "token issue"); no positional words means "run". */
  commands: readonly string[];
  /** parseArgs with the program's options. */
  parse: () => T;
}

/**
 * The part every CLI shares: parse the arguments (a parse failure is a UsageError), answer --help and
 * --version, and name the command. Returns undefined when --help or --version was answered.
 */
export function startCli<
  T extends {
    values: { help?: boolean; version?: boolean };
    positionals: string[];
    tokens?: { kind: string; name?: string; value?: string }[];
  },
>(spec: CliStart<T>): { parsed: T; command: string } | undefined {
  let parsed: T;
  try {
    parsed = spec.parse();
  } catch (err) {
    throw argumentError(err as NodeJS.ErrnoException, spec.usage);
  }
  refuseRepeatedOptions(parsed);
  if (parsed.values.help) {
    process.stdout.write(spec.usage);
    return undefined;
  }
  if (parsed.values.version) {
    process.stdout.write(`${spec.program} ${spec.version} (protocol ${PROTOCOL_VERSION})\n`);
    return undefined;
  }
  const command = parsed.positionals.join(' ') || 'run';
  if (!spec.commands.includes(command)) {
    // "token" alone is the first word of "token issue": name what follows rather than call it unknown.
    const longer = spec.commands.filter((c) => c.startsWith(`${command} `));
    if (longer.length > 0)
      throw new UsageError(`"${command}" needs a subcommand: ${longer.map((c) => `"${c}"`).join(', ')}`);
    throw new UsageError(`unknown command "${parsed.positionals.map(wordToEcho).join(' ')}"`);
  }
  return { parsed, command };
}

const COMMAND_WORD = /^[a-z][a-z0-9-]{0,31}$/;

/**
 * A stray word is echoed only if it could be a mistyped command: `porthole-server tokn show eyJ...` must
 * not print the token on a terminal, in a shell history of errors or in a CI log.
 */
function wordToEcho(word: string): string {
  return COMMAND_WORD.test(word) ? word : `<a word of ${word.length} characters>`;
}
