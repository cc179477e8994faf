import {
  ConfigError,
  certificateNames,
  clientMetadataSchema,
  durationAtLeast,
  durationField,
  elementLabel,
  expandConfigPath,
  expected,
  formatConfigIssues,
  formatHostPort,
  formatLocalAddress,
  type HostPort,
  hostPortField,
  inlineSecretExposure,
  isLoopback,
  isUnixSocketAddress,
  type LogLevel,
  loadCertFiles,
  loadTomlConfig,
  logLevelField,
  namesCover,
  PICKED_PORT,
  parseRule,
  readCaFile,
  readSecretFile,
  requestHostIsLoopback,
  resolveConfigPath,
  secretFileExposure,
  UNIX_SOCKET_PATH_MAX_BYTES,
  validateConfig,
} from '@porthole/protocol';
import { z } from 'zod';
import {
  type IncludedTables,
  type IncludeMatch,
  includesField,
  notInIncludedFile,
  readIncludes,
} from './config-includes.js';
import {
  type ChosenProxy,
  checkSocksCredentials,
  describeDialProxy,
  NO_DIAL_PROXY,
  PROXY_URL_EXAMPLE,
  parseProxyUrl,
  proxyFromEnvironment,
} from './dial-proxy.js';
import type { LocalTls } from './local-tls.js';
import { expandPortRange, readPortRange, tableMembers, writtenMembers } from './port-range-proxies.js';
import {
  isDirectoryLocal,
  isUnixSocketLocal,
  type ProxyConfig,
  portKey,
  proxySchema,
  type RawProxy,
  toProxyConfig,
} from './proxy-config.js';
import { type TableKind, TablePlaces } from './table-places.js';
import type { RawTerminateTls, TerminateTls } from './terminate-tls.js';
import { DEFAULT_VISITOR_HANDSHAKE_TIMEOUT_MS } from './terminate-tls.js';
import { tokenWarnings } from './token-warnings.js';
import { toVisitorConfig, type VisitorConfig, visitorSchema, visitRule } from './visitor-config.js';

export type { ProxyConfig } from './proxy-config.js';
export type { VisitorConfig } from './visitor-config.js';

/**
 * A user or password in the server URL ("ws://u:secret@host/..."): never sent (the token is what signs in),
 * and it would be printed wherever the server URL is (log lines, `status`).
 */
function hasUserinfo(server: string): boolean {
  if (!URL.canParse(server)) return false;
  const url = new URL(server);
  return url.username !== '' || url.password !== '';
}

/** "ws://::1:7000/...", "wss://2001:db8::1/...": a host with two colons or more, not in brackets. */
const UNBRACKETED_IPV6_URL = /^wss?:\/\/[0-9a-f]*:[0-9a-f]*:[^/[\]]*(?:[/?#]|$)/i;

const clientShape = {
  server: z
    .string({ error: expected('a URL like "wss://vps.example.com/_porthole"') })
    .refine((text) => !UNBRACKETED_IPV6_URL.test(text), {
      error: 'an IPv6 address in a URL goes in brackets: "ws://[2001:db8::1]:7000/_porthole"',
      abort: true,
    })
    .refine((text) => /^wss?:\/\/[^\s/]+/.test(text) && URL.canParse(text), 'must be a ws:// or wss:// URL')
    .refine(
      (text) => !hasUserinfo(text),
      'must not hold a user or password ("user:password@"): the client signs in with its token alone, which goes in token_file',
    ),
  token: z.string({ error: expected('a string') }).optional(),
  token_file: z.string({ error: expected('a file path') }).optional(),
  ca_file: z.string({ error: expected('a file path') }).optional(),
  proxy: z
    .string({
      // `[[proxy]]` for `[[proxies]]` lands here: said as the mistake it is.
      error: (issue) =>
        typeof issue.input === 'object' && issue.input !== null
          ? 'a table here: tunnels are [[proxies]] tables (did you mean "proxies"?); proxy is the URL of an HTTP or SOCKS5 proxy to dial the server through'
          : expected(`a URL like ${PROXY_URL_EXAMPLE}, or "${NO_DIAL_PROXY}"`)(issue),
    })
    .superRefine((text, ctx) => {
      if (text === NO_DIAL_PROXY) return;
      try {
        checkSocksCredentials(parseProxyUrl(text));
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
      }
    })
    .optional(),
  proxy_password_file: z.string({ error: expected('a file path') }).optional(),
  heartbeat_interval: durationAtLeast(100, '100ms').prefault('10s'),
  heartbeat_timeout: durationField.prefault('30s'),
  reconnect_initial: durationAtLeast(100, '100ms').prefault('500ms'),
  reconnect_max: durationField.prefault('30s'),
  shutdown_timeout: durationField.prefault('10s'),
  proxy_retry_interval: durationAtLeast(1000, '1s').prefault('30s'),
  exit_on_auth_failure: z.boolean({ error: expected('true or false') }).default(false),
  log_level: logLevelField.default('info'),
  // Not clientMetadataSchema's own messages alone: a config error should say what the key wants.
  metadata: z
    .record(z.string(), z.string({ error: expected('a string') }), {
      error: expected('a table of strings like { team = "ops" }'),
    })
    .pipe(clientMetadataSchema)
    .default({}),
  // Read before the rest (their tables join these), and kept here for the hints of a misspelt key.
  includes: includesField.optional(),
  proxies: z.array(proxySchema, { error: expected('[[proxies]] tables') }).default([]),
  visitors: z.array(visitorSchema, { error: expected('[[visitors]] tables') }).default([]),
  admin: z
    .strictObject(
      {
        // No port 0: `porthole-client status` finds the client at the port written here.
        listen: hostPortField().refine(
          (hp) => isLoopback(hp.host),
          'must be a loopback address (127.0.0.1, ::1 or localhost): the client admin API has no token',
        ),
      },
      { error: expected('an [admin] table') },
    )
    .optional(),
};

/** Why a proxy password file cannot go with `proxy` (the URL, or none), in the words of the keys or flags used. */
function passwordFileProblem(
  proxy: string | undefined,
  names: { proxy: string; file: string },
): string | undefined {
  const url =
    proxy === undefined || proxy === NO_DIAL_PROXY || !URL.canParse(proxy) ? undefined : new URL(proxy);
  if (url === undefined) return `is the password of the proxy set in \`${names.proxy}\`, and there is none`;
  if (url.username === '') return `needs the user in ${names.proxy}'s URL ("http://user@proxy.corp:3128")`;
  if (url.password !== '') return `set the password in ${names.proxy}'s URL or in ${names.file}, not both`;
  return undefined;
}

const clientObject = z.strictObject(clientShape);

/** client.toml's schema, its checks across tables naming each table where `places` says it was written. */
const clientSchema = (places: TablePlaces) =>
  clientObject.superRefine((config, ctx) => {
    if ((config.token === undefined) === (config.token_file === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['token'], message: 'set exactly one of token or token_file' });
    }
    if (config.proxy_password_file !== undefined) {
      const problem = passwordFileProblem(config.proxy, { proxy: 'proxy', file: 'proxy_password_file' });
      if (problem) ctx.addIssue({ code: 'custom', path: ['proxy_password_file'], message: problem });
    }
    if (config.heartbeat_timeout <= config.heartbeat_interval) {
      ctx.addIssue({
        code: 'custom',
        path: ['heartbeat_timeout'],
        message: 'must be longer than heartbeat_interval',
      });
    }
    if (config.reconnect_max < config.reconnect_initial) {
      ctx.addIssue({
        code: 'custom',
        path: ['reconnect_max'],
        message: 'must not be shorter than reconnect_initial',
      });
    }
    // A name's holder: its table, and the port of a range's that took it.
    const names = new Map<string, { index: number; port?: number | undefined }>();
    const ports = new Map<string, number>();
    config.proxies.forEach((proxy, i) => {
      // A range table stands for one proxy per port: each of their names and ports is checked, and the first
      // clash said, once for the table.
      const members = tableMembers(proxy);
      const ranged = proxy.port_range !== undefined;
      const clashingName = members.find((member) => names.has(member.name));
      if (clashingName) {
        const whose = ranged ? `, the name of its port ${clashingName.remotePort},` : '';
        const holder = names.get(clashingName.name)!;
        const holderLabel =
          holder.port === undefined
            ? places.seenFrom(i, 'proxies', holder.index)
            : `${places.seenFrom(i, 'proxies', holder.index, config.proxies[holder.index])}'s port ${holder.port}`;
        ctx.addIssue({
          code: 'custom',
          path: ['proxies', i, 'name'],
          message: `"${clashingName.name}"${whose} is already the name of ${holderLabel}`,
        });
      }
      // tcp and udp ports are separate spaces (iperf3 -u, DNS and others use both on one port number).
      const clashingPort = members.find((member) => {
        const holder = ports.get(portKey(proxy.type, member.remotePort) ?? '');
        // Proxies of one group share their port: two local replicas behind one public port is the point.
        return (
          holder !== undefined && (proxy.group === undefined || config.proxies[holder]?.group !== proxy.group)
        );
      });
      if (clashingPort) {
        const holder = ports.get(portKey(proxy.type, clashingPort.remotePort)!)!;
        const holderGroup = config.proxies[holder]?.group;
        const groups =
          holderGroup === undefined && proxy.group === undefined
            ? ''
            : ` (${holderGroup === undefined ? 'in no group' : `in group "${holderGroup}"`}; only proxies of one group share a port)`;
        const its =
          config.proxies[holder]?.port_range === undefined ? 'the remote_port' : 'in the remote_port';
        ctx.addIssue({
          code: 'custom',
          path: ['proxies', i, 'remote_port'],
          message: `${clashingPort.remotePort} is already ${its} of ${places.seenFrom(i, 'proxies', holder, config.proxies[holder])}${groups}`,
        });
      }
      for (const member of members) {
        names.set(member.name, { index: i, port: ranged ? member.remotePort : undefined });
        const port = portKey(proxy.type, member.remotePort);
        if (port !== undefined) ports.set(port, i);
      }
    });
    const visitorNames = new Map<string, number>();
    const binds = new Map<string, number>();
    config.visitors.forEach((visitor, i) => {
      const named = visitorNames.get(visitor.name);
      if (named !== undefined)
        ctx.addIssue({
          code: 'custom',
          path: ['visitors', i, 'name'],
          message: `"${visitor.name}" is already the name of ${places.seenFrom(i, 'visitors', named)}`,
        });
      // A tcp and a udp visitor may share an address and port, as a tcp and a udp service do.
      const bind = `${visitor.type}/${visitor.bind.host}/${visitor.bind.port}`;
      const bound = binds.get(bind);
      if (bound !== undefined)
        ctx.addIssue({
          code: 'custom',
          path: ['visitors', i, 'bind'],
          message: `is already the bind of ${places.seenFrom(i, 'visitors', bound, config.visitors[bound])}`,
        });
      visitorNames.set(visitor.name, i);
      binds.set(bind, i);
    });
  });

export interface ClientConfig {
  /** The config file, or "command line" for quick flags. */
  source: string;
  server: string;
  token: string;
  ca?: Buffer;
  heartbeatInterval: number;
  heartbeatTimeout: number;
  reconnectInitial: number;
  reconnectMax: number;
  shutdownTimeout: number;
  /** How often proxies the server refused or closed are asked for again, over the live session. */
  proxyRetryInterval: number;
  exitOnAuthFailure: boolean;
  logLevel: LogLevel;
  /** Told to the server at sign-in, for its plugins (frp's metadatas); a change applies at the next sign-in. */
  metadata: Readonly<Record<string, string>>;
  proxies: ProxyConfig[];
  /**
   * The [[proxies]] tables with port ranges ("proxies[3] (\"game\")", an included file's named first) and
   * the proxies each made, for `check`.
   */
  portRanges: { table: string; proxies: string[] }[];
  /** client.toml's `includes`: what each entry matched, and the files read (in order, each once), for `check`. */
  includes: IncludeMatch[];
  includedFiles: string[];
  /** Local ports whose connections go to other clients' private services. */
  visitors: VisitorConfig[];
  /** Worth saying but not refusing (a token file others can read), for the log. */
  warnings: string[];
  /** Where `porthole-client status` finds this client: a loopback HTTP listener. */
  admin?: { listen: HostPort };
  /** The HTTP or SOCKS5 proxy the server is dialled through, and where it was set. */
  dialProxy?: ChosenProxy;
  /** Why the server is dialled directly though the environment names a proxy: "config", "env NO_PROXY". */
  directBecause?: string;
}

/**
 * Where paths (token_file, ca_file) lead: next to the config file, or in the working directory for flags,
 * whose `${VAR}` (e.g. `${CREDENTIALS_DIRECTORY}`) is expanded here; a file's values were as it was read.
 */
function resolvePath(at: KeyOrigin, path: string): string {
  if (at.source === COMMAND_LINE) return expandConfigPath(`${process.cwd()}/.`, at.key, path);
  return resolveConfigPath(at.source, path);
}

/**
 * A proxy's `local = "unix:PATH"`: resolved as the other paths are (so `${RUNTIME_DIRECTORY}/app.sock` or a
 * socket next to the config file work), then checked against the size of a socket address.
 */
function resolveSocketPath(at: KeyOrigin, path: string): string {
  const resolved = resolvePath(at, path);
  const bytes = Buffer.byteLength(resolved);
  if (bytes > UNIX_SOCKET_PATH_MAX_BYTES)
    throw ConfigError.at(
      at.source,
      at.key,
      `the socket path ${resolved} is ${bytes} bytes, and a Unix socket's path holds at most ${UNIX_SOCKET_PATH_MAX_BYTES} (name a symlink to its directory instead)`,
    );
  return resolved;
}

/** The proxy keys that hold a password inline, in the config file itself. */
const INLINE_PASSWORD_KEYS = ['http_password', 'socks_password'] as const;

/**
 * A validated [[proxies]] table of `source`, its socket or directory path (if any) resolved next to the file and its
 * socks_password_file read; a password file (or a config file holding one inline) that others can read
 * goes to `warnings`.
 */
function fileProxy(source: string, raw: RawProxy, index: number, warnings: string[]): ProxyConfig {
  const proxy = toProxyConfig(raw);
  for (const key of INLINE_PASSWORD_KEYS) {
    if (raw[key] === undefined) continue;
    const exposed = inlineSecretExposure(source, ['proxies', index, key]);
    if (exposed) warnings.push(`proxies${elementLabel(index, raw)}.${key}: ${exposed}`);
  }
  if (raw.socks_password_file !== undefined && raw.socks_user !== undefined && proxy.socks) {
    const key = `proxies${elementLabel(index, raw)}.socks_password_file`;
    const path = resolvePath({ source, key }, raw.socks_password_file);
    const password = readSecretFile(source, key, path);
    if (Buffer.byteLength(password) > 255)
      throw ConfigError.at(
        source,
        key,
        `the password in ${path} is over 255 bytes, the most RFC 1929 carries`,
      );
    proxy.socks.credentials = { user: raw.socks_user, password };
    const exposed = secretFileExposure(path);
    if (exposed) warnings.push(`${key}: ${exposed}`);
  }
  if (isUnixSocketLocal(proxy.local)) {
    const at = { source, key: `proxies${elementLabel(index, raw)}.local` };
    proxy.local = { path: resolveSocketPath(at, proxy.local.path) };
  }
  if (proxy.localTls)
    readLocalTlsFiles(source, `proxies${elementLabel(index, raw)}.local_tls`, proxy.localTls, warnings);
  if (raw.terminate_tls !== undefined) {
    const key = `proxies${elementLabel(index, raw)}.terminate_tls`;
    proxy.terminateTls = readTerminateTlsFiles(source, key, raw.terminate_tls, warnings);
    warnUncoveredHosts(key, proxy, warnings);
  }
  if (isDirectoryLocal(proxy.local)) {
    // Not checked for being there: a disk mounted later, or a directory made after the client starts, is fine.
    const at = { source, key: `proxies${elementLabel(index, raw)}.local` };
    proxy.local = { dir: resolvePath(at, proxy.local.dir) };
  }
  return proxy;
}

/**
 * A proxy's local_tls: its ca_file read (resolved next to the config file) and checked for a certificate;
 * insecure_skip_verify said as the warning it is, at start and on each reload.
 */
function readLocalTlsFiles(source: string, key: string, tls: LocalTls, warnings: string[]): void {
  if (tls.insecureSkipVerify)
    warnings.push(
      `${key}.insecure_skip_verify: the local service's certificate is not checked, so whoever can reach the network between this client and the service can pose as it; pin it with fingerprint or trust it with ca_file instead`,
    );
  if (tls.caFile === undefined) return;
  const at = { source, key: `${key}.ca_file` };
  const path = resolvePath(at, tls.caFile);
  tls.caFile = path;
  tls.ca = readCaFile(
    source,
    at.key,
    path,
    "ca_file is the service's certificate (or its CA's), not its key",
  );
}

/**
 * A proxy's terminate_tls: its certificate and key read (resolved next to the config file) and checked to be a
 * pair TLS can use, so a bad pair is refused at start, by `check` and by a reload (which keeps the running
 * one); a key file others can read is warned about, as every secret file is.
 */
function readTerminateTlsFiles(
  source: string,
  key: string,
  raw: RawTerminateTls,
  warnings: string[],
): TerminateTls {
  const pair = loadCertFiles(source, key, raw, warnings);
  const keyFile = resolvePath({ source, key: `${key}.key_file` }, raw.key_file);
  const exposed = secretFileExposure(keyFile);
  if (exposed) warnings.push(`${key}.key_file: ${exposed}`);
  return {
    certFile: resolvePath({ source, key: `${key}.cert_file` }, raw.cert_file),
    keyFile,
    pair,
    handshakeTimeoutMs: raw.handshake_timeout ?? DEFAULT_VISITOR_HANDSHAKE_TIMEOUT_MS,
  };
}

/**
 * A tls proxy's hosts that its terminate_tls certificate does not name: its visitors would refuse it. Only
 * warned about: a certificate on its way (a renewal with a new name) is replaced by a reload. A subdomain's
 * full name is the server's subdomain_host's, unknown here.
 */
function warnUncoveredHosts(key: string, proxy: ProxyConfig, warnings: string[]): void {
  if (!proxy.terminateTls || !proxy.hosts?.length) return;
  const names = certificateNames(proxy.terminateTls.pair.cert);
  const uncovered = proxy.hosts.filter((host) => !namesCover(names, host));
  if (uncovered.length > 0)
    warnings.push(
      `${key}.cert_file: the certificate in ${proxy.terminateTls.certFile} names ${names.join(', ') || 'no DNS name'}, not ${uncovered.join(', ')} (visitors of those names will refuse it)`,
    );
}

/** The flag that sets each key a flag can set. */
const FLAG_OF_KEY = {
  server: '--server',
  token: '--token',
  token_file: '--token-file',
  ca_file: '--ca-file',
  proxy: '--proxy',
  proxy_password_file: '--proxy-password-file',
  log_level: '--log-level',
} as const;
type FlagKey = keyof typeof FLAG_OF_KEY;

/** Where a key's value came from, for messages and relative paths: the file's key, or the flag that set it. */
interface KeyOrigin {
  source: string;
  key: string;
}

/**
 * validateConfig of client.toml with its included files' tables: a problem of an included table is named by
 * that file and the table's index there, as the file alone would name it.
 */
function validateClientConfig(places: TablePlaces, rawInput: Record<string, unknown>) {
  const result = clientSchema(places).safeParse(rawInput);
  if (result.success) return result.data;
  const problems = result.error.issues.flatMap((issue) => {
    const [kind, index] = issue.path;
    const place =
      (kind === 'proxies' || kind === 'visitors') && typeof index === 'number'
        ? { kind: kind as TableKind, ...places.of(kind, index) }
        : undefined;
    if (place === undefined || place.file === places.main)
      return formatConfigIssues(places.main, new z.ZodError([issue]), clientObject, rawInput);
    // Read along the included file's own list, so the table's name shows beside its index there.
    const tables: unknown[] = [];
    tables[place.index] = (rawInput[place.kind] as unknown[])[index as number];
    const path = [place.kind, place.index, ...issue.path.slice(2)];
    const input = { [place.kind]: tables };
    if (issue.code !== 'unrecognized_keys' || issue.path.length !== 2)
      return formatConfigIssues(place.file, new z.ZodError([{ ...issue, path }]), clientObject, input);
    // A key of client.toml's own written after a table's keys: TOML put it in the table; it goes in client.toml.
    return issue.keys.flatMap((key) =>
      TOP_LEVEL_KEYS.has(key)
        ? [
            `${place.file}: ${places.local(place.kind, index as number, tables[place.index])}.${key}: ${notInIncludedFile(places.main, key)}`,
          ]
        : formatConfigIssues(
            place.file,
            new z.ZodError([{ ...issue, path, keys: [key] }]),
            clientObject,
            input,
          ),
    );
  });
  throw new ConfigError(problems);
}

/** What a config without `includes` includes. */
const NO_INCLUDES: IncludedTables = {
  matches: [],
  files: [],
  tables: { proxies: [], visitors: [] },
  places: { proxies: [], visitors: [] },
};

/** Validates a raw config (from TOML or flags) and reads the files it points at. */
function finish(
  places: TablePlaces,
  rawInput: Record<string, unknown>,
  setByFlags: ReadonlySet<FlagKey>,
  included: IncludedTables,
): ClientConfig {
  const source = places.main;
  const raw = validateClientConfig(places, rawInput);
  const originOf = (key: FlagKey): KeyOrigin =>
    setByFlags.has(key) ? { source: COMMAND_LINE, key: FLAG_OF_KEY[key] } : { source, key };
  const tokenAt = originOf('token_file');
  const tokenFile = raw.token === undefined ? resolvePath(tokenAt, raw.token_file!) : undefined;
  const token = raw.token ?? readSecretFile(tokenAt.source, tokenAt.key, tokenFile!);
  // The token sits in its file, or inline in the config file itself.
  const exposed =
    tokenFile === undefined ? inlineSecretExposure(source, ['token']) : secretFileExposure(tokenFile);
  const config: ClientConfig = {
    source,
    server: raw.server,
    token,
    heartbeatInterval: raw.heartbeat_interval,
    heartbeatTimeout: raw.heartbeat_timeout,
    reconnectInitial: raw.reconnect_initial,
    reconnectMax: raw.reconnect_max,
    shutdownTimeout: raw.shutdown_timeout,
    proxyRetryInterval: raw.proxy_retry_interval,
    exitOnAuthFailure: raw.exit_on_auth_failure,
    logLevel: raw.log_level,
    metadata: raw.metadata,
    proxies: [],
    portRanges: [],
    includes: included.matches,
    includedFiles: included.files,
    visitors: raw.visitors.map(toVisitorConfig),
    warnings: exposed ? [`${tokenFile === undefined ? 'token' : 'token_file'}: ${exposed}`] : [],
  };
  // Read as tables (a range's files and warnings once), then run as proxies, one per port of a range.
  const tables = raw.proxies.map((proxy, i) => {
    const { file, index } = places.of('proxies', i);
    const found: string[] = [];
    const table = fileProxy(file, proxy, index, found);
    // An included file's are said with its name, as its errors are; client.toml's name no file.
    config.warnings.push(...found.map((warning) => (file === source ? warning : `${file}: ${warning}`)));
    return table;
  });
  const expanded = tables.map(expandPortRange);
  config.proxies = expanded.flat();
  config.portRanges = tables.flatMap((table, i) =>
    table.portRange === undefined
      ? []
      : [{ table: places.label('proxies', i, table), proxies: expanded[i]!.map((proxy) => proxy.name) }],
  );
  const serverUrl = new URL(raw.server);
  // A URL's host is a Host field's value: host[:port], an IPv6 address in brackets.
  if (serverUrl.protocol === 'ws:' && !requestHostIsLoopback(serverUrl.host)) {
    config.warnings.push(
      `${originOf('server').key}: ws:// carries the token and every tunnelled byte in clear across the network; use wss:// (a [tls] table on the server, or nginx/Caddy in front of it)`,
    );
  }
  const tokenKey = raw.token === undefined ? tokenAt.key : originOf('token').key;
  config.warnings.push(
    ...tokenWarnings(tokenKey, token, tables, config.visitors, (kind, i, table) =>
      places.label(kind, i, table),
    ),
  );
  if (raw.admin) config.admin = { listen: raw.admin.listen };
  chooseDialProxy(config, raw, originOf('proxy'), originOf('proxy_password_file'));
  if (raw.ca_file !== undefined) {
    const caAt = originOf('ca_file');
    const caPath = resolvePath(caAt, raw.ca_file);
    config.ca = readCaFile(
      caAt.source,
      caAt.key,
      caPath,
      "ca_file is the certificate of the CA that signed the server's",
    );
  }
  return config;
}

/**
 * The proxy to dial through: `proxy` (its password from the URL or proxy_password_file), else the
 * environment's for the server's scheme; "none" (or no_proxy) dials directly.
 */
function chooseDialProxy(
  config: ClientConfig,
  raw: { proxy?: string | undefined; proxy_password_file?: string | undefined },
  at: KeyOrigin,
  passwordAt: KeyOrigin,
): void {
  const from = at.source === COMMAND_LINE ? at.key : 'config';
  if (raw.proxy === NO_DIAL_PROXY) {
    if (environmentNamesProxy(config.server)) config.directBecause = from;
    return;
  }
  if (raw.proxy === undefined) {
    const found = proxyFromEnvironmentOrError(config.server);
    if (found && 'proxy' in found) config.dialProxy = { proxy: found.proxy, from: found.from };
    else if (found) config.directBecause = `env ${found.excludedBy}`;
    return;
  }
  const proxy = parseProxyUrl(raw.proxy);
  if (proxy.credentials?.password) {
    if (at.source === COMMAND_LINE) {
      // An argument is in every user's `ps` and /proc/PID/cmdline, for as long as the client runs.
      config.warnings.push(
        `${at.key}: its password shows in ps to every user of this machine; put it in a file for ${FLAG_OF_KEY.proxy_password_file} (only the user in the URL: "http://user@host:port")`,
      );
    } else {
      // Inline in the config file, like a token written there: the file's mode is the password's.
      const exposed = inlineSecretExposure(at.source, ['proxy']);
      if (exposed) config.warnings.push(`proxy: ${exposed}`);
    }
  }
  if (raw.proxy_password_file !== undefined && proxy.credentials) {
    const key = passwordAt.key;
    const path = resolvePath(passwordAt, raw.proxy_password_file);
    proxy.credentials.password = readSecretFile(passwordAt.source, key, path);
    try {
      checkSocksCredentials(proxy);
    } catch (err) {
      throw ConfigError.at(passwordAt.source, key, `${path}: ${(err as Error).message}`);
    }
    const exposed = secretFileExposure(path);
    if (exposed) config.warnings.push(`${key}: ${exposed}`);
    config.dialProxy = { proxy, from, passwordFile: path };
    return;
  }
  config.dialProxy = { proxy, from };
}

/**
 * How the server is reached, for the start line, `status` and `check`: `via` the proxy (scheme, host and
 * port: never its credentials) or "direct", `via_from` where that was decided ("config", "--proxy",
 * "env HTTPS_PROXY", "env NO_PROXY"); no `via_from` when nothing named a proxy.
 */
export function dialRoute(config: Pick<ClientConfig, 'dialProxy' | 'directBecause'>): DialRoute {
  const { dialProxy, directBecause } = config;
  if (dialProxy) return { via: describeDialProxy(dialProxy.proxy), via_from: dialProxy.from };
  return { via: 'direct', ...(directBecause ? { via_from: directBecause } : {}) };
}

export interface DialRoute {
  via: string;
  via_from?: string;
}

/**
 * Whether the environment names a proxy for `server`, read or not: "none" ignores one porthole cannot read
 * too, as the complaint about it says.
 */
function environmentNamesProxy(server: string): boolean {
  try {
    return proxyFromEnvironment(server) !== undefined;
  } catch {
    return true;
  }
}

/** proxyFromEnvironment, its complaint a ConfigError ("environment: HTTPS_PROXY: must be a URL ..."). */
function proxyFromEnvironmentOrError(server: string): ReturnType<typeof proxyFromEnvironment> {
  try {
    return proxyFromEnvironment(server);
  } catch (err) {
    throw new ConfigError([`environment: ${(err as Error).message}`]);
  }
}

export const COMMAND_LINE = 'command line';

/** client.toml's own keys, which an included file may not hold (but for its tables). */
const TOP_LEVEL_KEYS: ReadonlySet<string> = new Set(Object.keys(clientShape));

/** Quick flags; any set here overrides the config file (and `tcp` rules add proxies). */
export interface ClientFlags {
  server?: string;
  token?: string;
  tokenFile?: string;
  caFile?: string;
  /** `--proxy URL` or `--proxy none`. */
  proxy?: string;
  /** `--proxy-password-file FILE`: the password of the user named in the proxy's URL. */
  proxyPasswordFile?: string;
  tcp?: string[];
  /** `--udp 5353:127.0.0.1:53` rules (udp proxies named udp-REMOTE_PORT). */
  udp?: string[];
  /** `--visit 2222:homelab/ssh` rules (visitors named visit-PORT). */
  visit?: string[];
  exitOnAuthFailure?: boolean;
  logLevel?: string;
}

/**
 * The file's proxies and then one per `--tcp`/`--udp` rule. A rule whose port or name another proxy already
 * has is refused here, in one line naming both: checked with the file's, it read as two problems of a
 * "proxies[N]" the user never wrote.
 */
function withRuleProxies(
  fileProxies: unknown[],
  places: TablePlaces,
  rules: { rule: string; type: 'tcp' | 'udp' }[],
): unknown[] {
  const proxies = [...fileProxies];
  const owners = fileProxies.map((proxy, i) => places.withFile('proxies', i, proxy));
  for (const { rule, type } of rules) {
    // A socks5 or http-proxy proxy needs its password (or allow list) too, which a rule has no room for.
    const forwardProxy = /:(socks5|http-proxy)$/.exec(rule.trim())?.[1];
    if (forwardProxy)
      throw ConfigError.at(
        COMMAND_LINE,
        `--${type}`,
        `"${rule}": a ${forwardProxy} proxy is written in a config file, with its socks_user and socks_password_file (see examples/client.toml)`,
      );
    let parsed: ReturnType<typeof parseRule>;
    try {
      parsed = parseRule(rule, type);
      if (parsed.type !== type)
        throw new Error(`"${rule}" is a ${parsed.type} rule: give it to --${parsed.type}`);
    } catch (err) {
      throw ConfigError.at(COMMAND_LINE, `--${type}`, (err as Error).message);
    }
    let local = parsed.local;
    if (isUnixSocketAddress(local)) {
      if (type === 'udp')
        throw ConfigError.at(COMMAND_LINE, '--udp', `"${rule}": a udp proxy cannot reach a Unix socket`);
      // Relative to the working directory, as the other flags' paths are.
      local = { path: resolveSocketPath({ source: COMMAND_LINE, key: `--${type}` }, local.path) };
    }
    const { ranges } = parsed;
    if (ranges && !isUnixSocketAddress(local)) {
      const range = readPortRange({
        type,
        local: { host: local.host, ports: ranges.local },
        remote_port: ranges.remote,
      });
      if (range && 'message' in range)
        throw ConfigError.at(COMMAND_LINE, `--${type}`, `"${rule}": ${range.message}`);
    }
    const proxy =
      ranges && !isUnixSocketAddress(local)
        ? // Its proxies are named TYPE-PORT, as a single rule's is: the table is named by the type.
          {
            name: type,
            type,
            local: formatHostPort(local.host, ranges.local),
            remote_port: `${ranges.remote}`,
          }
        : {
            name: ruleProxyName(parsed.type, parsed.remotePort, proxies),
            type,
            local: formatLocalAddress(local),
            remote_port: parsed.remotePort,
          };
    if (parsed.remoteBind !== undefined) Object.assign(proxy, { remote_bind: parsed.remoteBind });
    // Its proxies' ports and names against every table's and rule's before it, as tableMembers has them (the
    // file's are not validated yet); the server gives each proxy with port 0 a port of its own.
    const mine = writtenMembers(proxy);
    const sharedPort = (other: unknown) =>
      isRecord(other) && other.type === type
        ? writtenMembers(other).find(
            (theirs) =>
              theirs.remotePort !== PICKED_PORT && mine.some((m) => m.remotePort === theirs.remotePort),
          )
        : undefined;
    const samePort = proxies.findIndex((other) => sharedPort(other) !== undefined);
    if (samePort !== -1)
      throw ConfigError.at(
        COMMAND_LINE,
        `--${type}`,
        `"${rule}": ${type} port ${sharedPort(proxies[samePort])!.remotePort} is already taken by ${owners[samePort]}`,
      );
    const sharedName = (other: unknown) =>
      isRecord(other)
        ? writtenMembers(other).find((theirs) => mine.some((m) => m.name === theirs.name))
        : undefined;
    const sameName = proxies.findIndex((other) => sharedName(other) !== undefined);
    if (sameName !== -1)
      throw ConfigError.at(
        COMMAND_LINE,
        `--${type}`,
        `"${rule}": its proxy's name, "${sharedName(proxies[sameName])!.name}", is already that of ${owners[sameName]}`,
      );
    proxies.push(proxy);
    owners.push(`--${type} "${rule}"`);
  }
  return proxies;
}

/**
 * The keys the flags set, each checked on its own first: a bad one is named as the flag, not as a key of a
 * config file that may not even have it (before, `--config c.toml --log-level loud` said "c.toml: log_level").
 */
function flagValues(flags: ClientFlags): Partial<Record<FlagKey, string>> {
  const given: Partial<Record<FlagKey, string>> = {};
  if (flags.server !== undefined) given.server = flags.server;
  if (flags.token !== undefined) given.token = flags.token;
  if (flags.tokenFile !== undefined) given.token_file = flags.tokenFile;
  if (flags.caFile !== undefined) given.ca_file = flags.caFile;
  if (flags.proxy !== undefined) given.proxy = flags.proxy;
  if (flags.proxyPasswordFile !== undefined) given.proxy_password_file = flags.proxyPasswordFile;
  if (flags.logLevel !== undefined) given.log_level = flags.logLevel;
  const keys = Object.keys(given) as FlagKey[];
  const asFlags = z.strictObject(Object.fromEntries(keys.map((key) => [FLAG_OF_KEY[key], clientShape[key]])));
  validateConfig(
    COMMAND_LINE,
    Object.fromEntries(keys.map((key) => [FLAG_OF_KEY[key], given[key]])),
    asFlags,
  );
  return given;
}

/**
 * A rule's proxy name: tcp-2222, udp-5353. Rules with port 0 (the server picks) are tcp-0, then tcp-0-2,
 * tcp-0-3..., as `ssh -R 0:...` may be given more than once.
 */
function ruleProxyName(type: 'tcp' | 'udp', remotePort: number, taken: readonly unknown[]): string {
  const name = `${type}-${remotePort}`;
  if (remotePort !== PICKED_PORT) return name;
  const names = new Set(taken.map((other) => (isRecord(other) ? other.name : undefined)));
  let n = 1;
  while (names.has(n === 1 ? name : `${name}-${n}`)) n++;
  return n === 1 ? name : `${name}-${n}`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null;
}

/**
 * Loads client.toml (if given) and applies quick flags on top (flags override keys, `tcp` rules add
 * proxies), then validates the result once; throws ConfigError naming source, key and reason.
 */
export function loadClientConfig(file: string | undefined, flags: ClientFlags = {}): ClientConfig {
  const raw: Record<string, unknown> =
    file === undefined ? {} : { ...loadTomlConfig(file, z.record(z.string(), z.unknown())) };
  const included =
    file === undefined || raw.includes === undefined
      ? NO_INCLUDES
      : readIncludes(file, raw.includes, clientObject, TOP_LEVEL_KEYS);
  const mainCounts = { proxies: 0, visitors: 0 };
  for (const kind of ['proxies', 'visitors'] as const) {
    const written = raw[kind] ?? [];
    // Not a list (`[proxies]` for `[[proxies]]`): left for the schema to name in client.toml.
    if (!Array.isArray(written)) continue;
    mainCounts[kind] = written.length;
    if (included.tables[kind].length > 0) raw[kind] = [...written, ...included.tables[kind]];
  }
  const places = new TablePlaces(file ?? COMMAND_LINE, mainCounts, included.places);
  const given = flagValues(flags);
  if (given.token !== undefined || given.token_file !== undefined) {
    delete raw.token;
    delete raw.token_file;
  }
  // --proxy replaces the file's proxy whole, the file's password for it too (unless given with it).
  if (given.proxy !== undefined) delete raw.proxy_password_file;
  if (given.proxy_password_file !== undefined) {
    // Named as the flags the user typed, not as keys of a file that may not have them.
    const proxy = given.proxy ?? (typeof raw.proxy === 'string' ? raw.proxy : undefined);
    const fromFile = given.proxy === undefined && raw.proxy !== undefined;
    const names = { proxy: fromFile ? 'proxy' : '--proxy', file: '--proxy-password-file' };
    const problem = passwordFileProblem(proxy, names);
    if (problem) throw ConfigError.at(COMMAND_LINE, '--proxy-password-file', problem);
  }
  Object.assign(raw, given);
  if (flags.exitOnAuthFailure) raw.exit_on_auth_failure = true;
  const rules = [
    ...(flags.tcp ?? []).map((rule) => ({ rule, type: 'tcp' as const })),
    ...(flags.udp ?? []).map((rule) => ({ rule, type: 'udp' as const })),
  ];
  if (rules.length > 0)
    raw.proxies = withRuleProxies(Array.isArray(raw.proxies) ? raw.proxies : [], places, rules);
  if (flags.visit?.length)
    raw.visitors = [
      ...(Array.isArray(raw.visitors) ? raw.visitors : []),
      ...flags.visit.map((rule) => {
        try {
          return visitRule(rule);
        } catch (err) {
          throw ConfigError.at(COMMAND_LINE, '--visit', (err as Error).message);
        }
      }),
    ];
  // Without a file the keys are flags: name the flag, not the file's key.
  if (file === undefined && raw.token === undefined && raw.token_file === undefined)
    throw ConfigError.at(
      COMMAND_LINE,
      '--token-file',
      'the client token is needed (--token-file FILE or --token JWT)',
    );
  return finish(places, raw, new Set(Object.keys(given) as FlagKey[]), included);
}
