import { readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { type ZodError, z } from 'zod';
import { closestName } from './closest-name.js';
import { parseDuration } from './duration.js';
import { parseHostPort } from './host-port.js';
import { PortRanges } from './port-ranges.js';

/**
 * A configuration problem. `message` holds one line per problem, each "<file>: <key>: <reason>";
 * the CLIs print it to stderr and exit with status 2.
 */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(readonly problems: readonly string[]) {
    super(problems.join('\n'));
  }

  static at(file: string, key: string, reason: string): ConfigError {
    return new ConfigError([`${file}: ${key}: ${reason}`]);
  }
}

/** Exit status for a bad config or bad command line. */
export const EXIT_CONFIG = 2;

/**
 * An element of an array by its index, and by its name when it is a table with one (`[3] ("web")`): a user
 * finds [[proxies]] by name, not by counting them.
 */
export function elementLabel(index: number, element: unknown): string {
  const name =
    typeof element === 'object' && element !== null ? (element as { name?: unknown }).name : undefined;
  return typeof name === 'string' ? `[${index}] (${JSON.stringify(name)})` : `[${index}]`;
}

/** "proxies[3] ("web").remote_port": the issue's path, read along `input` for the names of tables. */
function keyPath(path: ReadonlyArray<PropertyKey>, input: unknown): string {
  let out = '';
  let value = input;
  for (const part of path) {
    value =
      typeof value === 'object' && value !== null ? (value as Record<PropertyKey, unknown>)[part] : undefined;
    if (typeof part === 'number') out += elementLabel(part, value);
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out === '' ? '(top level)' : out;
}

/** "64 entries", "1 character": a bound on a list's or a string's length, in words. */
function lengthBound(origin: string, bound: number | bigint): string | undefined {
  const unit = origin === 'array' ? 'entr' : origin === 'string' ? 'character' : undefined;
  if (unit === undefined) return undefined;
  const plural = origin === 'array' ? (bound === 1 ? 'y' : 'ies') : bound === 1 ? '' : 's';
  return `${bound} ${unit}${plural}`;
}

function reasonOf(issue: ZodError['issues'][number]): string {
  if (issue.code === 'invalid_type' && /received undefined$/.test(issue.message)) return 'required';
  if (issue.code === 'too_big' && issue.origin === 'number') return `must be at most ${issue.maximum}`;
  if (issue.code === 'too_small' && issue.origin === 'number') return `must be at least ${issue.minimum}`;
  // zod's own words ("Too big: expected array to have <=64 items") for lists and strings, said as the rest.
  if (issue.code === 'too_big') {
    const bound = lengthBound(issue.origin, issue.maximum);
    if (bound !== undefined) return `must have at most ${bound}`;
  }
  if (issue.code === 'too_small') {
    if (issue.origin === 'string' && issue.minimum === 1) return 'must not be empty';
    const bound = lengthBound(issue.origin, issue.minimum);
    if (bound !== undefined) return `must have at least ${bound}`;
  }
  return issue.message.replace(/^Invalid input: /, '');
}

/** Wrappers that leave the shape of what they wrap as it is (for finding a table's known keys). */
const SHAPE_PRESERVING = new Set(['optional', 'default', 'prefault', 'nullable', 'readonly', 'catch']);

function unwrapped(schema: z.core.$ZodType | undefined): z.core.$ZodType | undefined {
  let current = schema;
  for (let depth = 0; depth < 16 && current; depth++) {
    const def = current._zod.def as z.core.$ZodTypeDef & {
      innerType?: z.core.$ZodType;
      in?: z.core.$ZodType;
    };
    if (SHAPE_PRESERVING.has(def.type)) current = def.innerType;
    else if (def.type === 'pipe') current = def.in;
    else return current;
  }
  return current;
}

/**
 * What a value of `schema` may be: a union's options (`local_tls = true` or a table), each unwrapped; the
 * schema alone otherwise.
 */
function alternatives(schema: z.core.$ZodType | undefined): z.core.$ZodType[] {
  const current = unwrapped(schema);
  if (!current) return [];
  if (current._zod.def.type !== 'union') return [current];
  return (current._zod.def as z.core.$ZodUnionDef).options.flatMap((option) => alternatives(option));
}

/**
 * The keys the table at `path` of `schema` accepts (those of every table a union there allows), or undefined
 * where there is no table.
 */
function knownKeysAt(schema: z.core.$ZodType, path: ReadonlyArray<PropertyKey>): string[] | undefined {
  let current = alternatives(schema);
  for (const part of path) {
    current = current.flatMap((option) => {
      const def = option._zod.def;
      if (typeof part === 'number' && def.type === 'array')
        return alternatives((def as z.core.$ZodArrayDef).element);
      if (typeof part === 'string' && def.type === 'object')
        return alternatives((def as z.core.$ZodObjectDef).shape[part]);
      return [];
    });
  }
  const tables = current.filter((option) => option._zod.def.type === 'object');
  if (tables.length === 0) return undefined;
  return [...new Set(tables.flatMap((table) => Object.keys((table._zod.def as z.core.$ZodObjectDef).shape)))];
}

/**
 * A table that is a key of a table in an array (`local_tls = { ... }`, `health_check = { ... }` in a
 * [[proxies]]): written inline, between braces, not below a header line of its own.
 */
function isInlineTable(path: ReadonlyArray<PropertyKey>): boolean {
  return path.length >= 2 && typeof path[path.length - 2] === 'number';
}

/** "[http]", "[[proxies]]", and for an inline table "[[proxies]]'s health_check = { ... }". */
function tableName(path: ReadonlyArray<PropertyKey>): string {
  if (!isInlineTable(path)) return tableHeader(path);
  return `${tableHeader(path.slice(0, -1))}'s ${String(path[path.length - 1])} = { ... }`;
}

/** The header line of the table at `path`: "[http]", "[[proxies]]", "[[https.certs]]". */
function tableHeader(path: ReadonlyArray<PropertyKey>): string {
  const names = path.filter((part) => typeof part === 'string').join('.');
  return typeof path[path.length - 1] === 'number' ? `[[${names}]]` : `[${names}]`;
}

/**
 * Why `key`, unknown in the table at `path`, is a key of a table around it. TOML reads every key below a
 * table's header line as that table's, so a top-level key added at the end of a file (`subdomain_host`
 * after `[http]`, `log_level` after the last `[[proxies]]`) lands in the last table; without this its
 * line said only "unknown key" of a key the user had spelt right. An inline table has no header line: a
 * key of the table around it was written inside its braces.
 */
function misplacedKeyHint(
  schema: z.core.$ZodType,
  path: ReadonlyArray<PropertyKey>,
  key: string,
): string | undefined {
  if (isInlineTable(path)) {
    const outer = path.slice(0, -1);
    if (!knownKeysAt(schema, outer)?.includes(key)) return undefined;
    return `a key of ${tableHeader(outer)} itself, not of ${String(path[path.length - 1])}: write it outside the braces`;
  }
  for (let depth = path.length - 1; depth >= 0; depth--) {
    const outer = path.slice(0, depth);
    if (!knownKeysAt(schema, outer)?.includes(key)) continue;
    const header = tableHeader(path);
    const owner = depth === 0 ? 'a top-level key' : `a key of ${tableHeader(outer)}`;
    const where = depth === 0 ? 'above the first table' : `up, under ${tableHeader(outer)}`;
    return `${owner}, but TOML puts every key below the ${header} line into ${header}: move it ${where}`;
  }
  return undefined;
}

/**
 * Why `key`, unknown in a table of an array ([[proxies]]), is most likely a key of one of its inline tables
 * written beside them: `ca_file = "pve.pem"` for `local_tls = { ca_file = "pve.pem" }`. Asked before any
 * other hint: a top-level key of the same name (the client's own ca_file) is not what a proxy's line meant.
 */
function inlineTableHint(
  schema: z.core.$ZodType,
  path: ReadonlyArray<PropertyKey>,
  key: string,
): string | undefined {
  if (typeof path[path.length - 1] !== 'number') return undefined;
  const owners = (knownKeysAt(schema, path) ?? []).filter((field) =>
    knownKeysAt(schema, [...path, field])?.includes(key),
  );
  if (owners.length === 0) return undefined;
  return `did you mean ${owners.map((field) => `${field} = { ${key} = ... }`).join(' or ')}?`;
}

/** The paths of every table `schema` has below `path` ([auth], [[proxies]], [[https.certs]]), a few levels deep. */
function tablePaths(schema: z.core.$ZodType, path: PropertyKey[] = []): PropertyKey[][] {
  const keys = path.length < 4 ? knownKeysAt(schema, path) : undefined;
  if (keys === undefined) return [];
  return keys.flatMap((key) => {
    for (const inner of [
      [...path, key],
      [...path, key, 0],
    ]) {
      if (knownKeysAt(schema, inner) !== undefined) return [inner, ...tablePaths(schema, inner)];
    }
    return [];
  });
}

/**
 * Why `key`, unknown in the table at `path`, belongs in another table that is not around it: written at the
 * top (`failure_limit` for [auth], `remote_port` for [[proxies]]) or under a neighbour, its line said only
 * "unknown key", or guessed a key of the wrong table.
 */
function otherTableHint(
  schema: z.core.$ZodType,
  path: ReadonlyArray<PropertyKey>,
  key: string,
): string | undefined {
  const here = tableName(path);
  const owners = tablePaths(schema)
    .filter((table) => knownKeysAt(schema, table)?.includes(key))
    .map((table) => ({ name: tableName(table), inline: isInlineTable(table) }))
    .filter((owner) => owner.name !== here);
  if (owners.length === 0) return undefined;
  const names = owners.map((owner) => owner.name).join(' or ');
  if (owners.some((owner) => owner.inline))
    return `a key of ${names}: write it ${owners.length === 1 ? 'inside those braces' : 'in one of those'}`;
  return owners.length === 1
    ? `a key of ${names}: write it below the ${names} line`
    : `a key of ${names}: write it below one of those lines`;
}

/**
 * One "<file>: <key>: <reason>" line per zod issue (unknown keys get one line each, with the known key
 * they most likely stand for when `schema` is given, or the table around it they belong to; tables in
 * arrays are named by their `name` when `input`, what was validated, is given).
 */
export function formatConfigIssues(
  file: string,
  error: ZodError,
  schema?: z.core.$ZodType,
  input?: unknown,
): string[] {
  const lines: string[] = [];
  for (const issue of error.issues) {
    if (issue.code === 'unrecognized_keys') {
      const known = schema && knownKeysAt(schema, issue.path);
      for (const key of issue.keys) {
        const inline = schema && inlineTableHint(schema, issue.path, key);
        const misplaced = schema && misplacedKeyHint(schema, issue.path, key);
        const guess = known && closestName(key, known);
        const elsewhere = schema && otherTableHint(schema, issue.path, key);
        const hint =
          inline ?? misplaced ?? elsewhere ?? (guess === undefined ? undefined : `did you mean "${guess}"?`);
        lines.push(
          `${file}: ${keyPath([...issue.path, key], input)}: unknown key${hint === undefined ? '' : ` (${hint})`}`,
        );
      }
    } else {
      lines.push(`${file}: ${keyPath(issue.path, input)}: ${reasonOf(issue)}`);
    }
  }
  return lines;
}

/** Validates a plain object (from TOML or from command-line flags) against a schema. */
export function validateConfig<S extends z.ZodType>(file: string, raw: unknown, schema: S): z.output<S> {
  const result = schema.safeParse(raw);
  if (!result.success) throw new ConfigError(formatConfigIssues(file, result.error, schema, raw));
  return result.data;
}

/** Reads and parses a TOML config file as written: no environment references expanded, nothing validated. */
export function readTomlFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw ConfigError.at(file, '(file)', `cannot read: ${(err as Error).message}`);
  }
  try {
    return parseToml(text);
  } catch (err) {
    if (err instanceof TomlError) {
      const reason = err.message.split('\n')[0]!.replace(/^Invalid TOML document: /, '');
      throw ConfigError.at(file, `line ${err.line}, column ${err.column}`, `invalid TOML: ${reason}`);
    }
    throw err;
  }
}

/** Reads, parses and validates a TOML config file, its `${NAME}` references expanded; every problem becomes a ConfigError line. */
export function loadTomlConfig<S extends z.ZodType>(file: string, schema: S): z.output<S> {
  return validateConfig(file, expandEnvironmentInTree(file, readTomlFile(file)), schema);
}

/** Resolves a path written in a config file relative to that file's directory. */
export function resolveConfigPath(configFile: string, path: string): string {
  return resolve(dirname(configFile), path);
}

/** `$${` (a literal "${"), `${NAME}`, or a "${" that is neither. */
const ENV_REFERENCE = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{/g;

/**
 * `text` with its `${NAME}` references to environment variables replaced by their values, as frp's
 * `{{ .Envs.NAME }}` and docker compose's `${NAME}` are (`token = "${PORTHOLE_TOKEN}"`,
 * `secret_file = "${CREDENTIALS_DIRECTORY}/secret"`); `$${` is a literal "${". An unset or empty
 * variable, or a "${" that names none, is a config error: a value left half-expanded would fail later,
 * further from its cause.
 */
export function expandEnvironment(
  configFile: string,
  key: string,
  text: string,
  env: NodeJS.ProcessEnv = process.env,
): string {
  return text.replace(ENV_REFERENCE, (match, name: string | undefined) => {
    if (match === '$${') return '${';
    if (name === undefined) {
      throw ConfigError.at(
        configFile,
        key,
        `"\${" in "${text}" starts no environment reference like \${NAME} (letters, digits and _); write "$\${" for a literal "\${"`,
      );
    }
    const value = env[name];
    if (value === undefined || value === '') {
      const hint =
        name === 'CREDENTIALS_DIRECTORY'
          ? ' (systemd sets it for units with LoadCredential=; outside systemd, set it or use a plain path)'
          : '';
      const where = match === text ? '' : ` in "${text}"`;
      throw ConfigError.at(configFile, key, `\${${name}}${where} is not set${hint}`);
    }
    return value;
  });
}

function isTable(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/**
 * A parsed config file with every string value's `${NAME}` references expanded (`expandEnvironment`);
 * table keys stay as written. `at` names `tree`'s place in the file for errors ("proxies[0] ("web").local").
 */
export function expandEnvironmentInTree(
  configFile: string,
  tree: unknown,
  env: NodeJS.ProcessEnv = process.env,
  at = '',
): unknown {
  if (typeof tree === 'string')
    return tree.includes('${')
      ? expandEnvironment(configFile, at === '' ? '(top level)' : at, tree, env)
      : tree;
  if (Array.isArray(tree))
    return tree.map((element, index) =>
      expandEnvironmentInTree(configFile, element, env, `${at}${elementLabel(index, element)}`),
    );
  if (!isTable(tree)) return tree;
  const expanded: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(tree))
    expanded[key] = expandEnvironmentInTree(configFile, value, env, at === '' ? key : `${at}.${key}`);
  return expanded;
}

/**
 * A file path from a command-line flag: `${NAME}` expanded (`expandEnvironment`; a config file's values
 * are expanded as the file is read), then resolved relative to `configFile`'s directory.
 */
export function expandConfigPath(
  configFile: string,
  key: string,
  path: string,
  env: NodeJS.ProcessEnv = process.env,
): string {
  return resolveConfigPath(configFile, expandEnvironment(configFile, key, path, env));
}

/** Reads a file that `key` names (a certificate, a CA); one that cannot be read is a ConfigError naming both. */
export function readConfigFile(configFile: string, key: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw ConfigError.at(
      configFile,
      key,
      `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`,
    );
  }
}

/** Reads a secret (token, HMAC key) from a file, trimming the trailing newline editors add. */
export function readSecretFile(configFile: string, key: string, path: string): string {
  const text = readConfigFile(configFile, key, path).toString('utf8').trim();
  if (text === '') throw ConfigError.at(configFile, key, `${path} is empty`);
  return text;
}

/**
 * secretFileExposure of a config file for the secret at `key` (["auth", "secret"]) when the file holds it
 * as written: not when its `${NAME}` takes it from the environment, nor when a flag gave it.
 */
export function inlineSecretExposure(
  configFile: string,
  key: ReadonlyArray<string | number>,
  env: NodeJS.ProcessEnv = process.env,
): string | undefined {
  let written: unknown;
  try {
    written = readTomlFile(configFile);
  } catch {
    return undefined;
  }
  for (const part of key)
    written =
      typeof written === 'object' && written !== null
        ? (written as Record<string | number, unknown>)[part]
        : undefined;
  if (typeof written !== 'string' || written.includes('${')) return undefined;
  return secretFileExposure(configFile, env);
}

/** Whether `path` is inside $CREDENTIALS_DIRECTORY (systemd's LoadCredential=, or one named by hand). */
function inCredentialsDirectory(path: string, env: NodeJS.ProcessEnv): boolean {
  const credentials = env.CREDENTIALS_DIRECTORY;
  return (
    credentials !== undefined && credentials !== '' && resolve(path).startsWith(`${resolve(credentials)}/`)
  );
}

/**
 * Why a file that holds a secret (or a config file with one inline) is too open, or undefined: other users
 * than its owner may read or write it. A warning, not an error (ssh refuses such key files): a group may
 * be meant to share it.
 */
export function secretFileExposure(path: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch {
    return undefined;
  }
  // systemd's copy of a credential is root's, mode 0400 plus an ACL that lets the service's user read it, and
  // an ACL shows in the mode's group bits (0440): there, only the bits for others say the file is open. Not
  // the whole directory, though: the README's `CREDENTIALS_DIRECTORY=/etc/porthole porthole-server check`
  // points it at the real files, and a world-readable one of those is what this warning is for.
  const openBits = inCredentialsDirectory(path, env) ? 0o007 : 0o077;
  if ((mode & openBits) === 0) return undefined;
  return `${path} is open to other users (mode ${(mode & 0o777).toString(8).padStart(3, '0')}); chmod 600 it`;
}

/* Field schemas both ends' config files use. */

/** A zod `error` option: "required" for a missing key, otherwise what was expected. */
export function expected(what: string) {
  return (issue: { code?: string; input?: unknown }) => {
    if (issue.code !== 'invalid_type' && issue.code !== 'invalid_union' && issue.code !== 'invalid_value') {
      return undefined;
    }
    return issue.input === undefined ? 'required' : `expected ${what}`;
  };
}

/** A count of at least 1 (connections, flows, bytes): `what` names it in the error for a wrong type. */
export function positiveIntField(what: string) {
  return z
    .number({ error: expected(what) })
    .int()
    .min(1);
}

/** parseDuration's result, or its complaint as the field's issue. */
/** The longest wait a Node timer takes (2^31 - 1 ms, 24.8 days): a longer one would fire after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function durationOrIssue(text: string, ctx: z.core.$RefinementCtx): number {
  try {
    const ms = parseDuration(text);
    if (ms > MAX_TIMER_MS) {
      ctx.addIssue({ code: 'custom', message: `${text} is longer than a timer can wait (at most 24d)` });
      return z.NEVER;
    }
    return ms;
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
}

/** "10s" -> 10000 (ms). */
export const durationField = z
  .string({ error: expected('a duration string like "10s"') })
  .transform(durationOrIssue);

/** A duration of at least `floorMs` (an interval that would otherwise spin, or switch itself off at 0). */
export function durationAtLeast(floorMs: number, floorText: string) {
  return durationField.refine((ms) => ms >= floorMs, `must be at least ${floorText}`);
}

/**
 * A duration for which 0 is no setting at all: it would switch off what the key is for, unasked (keys where
 * 0 means "none" say so and take durationOrOffField). `zeroWould` says what 0 would do, for the message.
 */
export function durationAboveZero(zeroWould: string) {
  return durationField.refine((ms) => ms > 0, `must be longer than 0 ("0s" would ${zeroWould})`);
}

const DURATION_OR_OFF = 'a duration like "60s", or 0 for no limit';

/** A duration, or 0 (written 0 or "0") for no limit; anything else is named in the error. */
export const durationOrOffField = z
  .union([z.number(), z.string()], { error: expected(DURATION_OR_OFF) })
  .transform((value, ctx) => {
    if (value === 0 || value === '0') return 0;
    if (typeof value === 'string') return durationOrIssue(value, ctx);
    ctx.addIssue({ code: 'custom', message: `expected ${DURATION_OR_OFF}` });
    return z.NEVER;
  });

/** "127.0.0.1:7000", "[::1]:22"; `allowZero` for listen addresses where port 0 means "pick one". */
export function hostPortField(opts: { allowZero?: boolean } = {}) {
  return z.string({ error: expected('"host:port"') }).transform((text, ctx) => {
    try {
      return parseHostPort(text, { allowZeroPort: opts.allowZero ?? false });
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });
}

/** ["2000-2999", "8080"] or "2000-2999,8080" -> PortRanges. */
export const portRangesField = z
  .union([z.string(), z.array(z.union([z.string(), z.number().int()]))], {
    error: expected('port ranges like ["2000-2999", "8080"]'),
  })
  .transform((spec, ctx) => {
    try {
      return PortRanges.parse(spec);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export const logLevelField = z.enum(LOG_LEVELS, { error: expected(`one of ${LOG_LEVELS.join(', ')}`) });
export type LogLevel = (typeof LOG_LEVELS)[number];
