// Start real porthole-server / porthole-client processes from real TOML files (the pinned CLI contract,
// notes/CLI_CONTRACT.md), issue tokens with `porthole-server token issue`, and read ports from their logs.
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { clientBin, type Harness, type LogLine, type Proc, runOk, serverBin } from './processes.js';

type TomlValue = string | number | boolean | string[];

/** key = value lines; strings as TOML basic strings (JSON escapes are valid TOML for these). */
export function toml(entries: Record<string, TomlValue | undefined>): string {
  return Object.entries(entries)
    .filter((e): e is [string, TomlValue] => e[1] !== undefined)
    .map(
      ([k, v]) =>
        `${k} = ${Array.isArray(v) ? `[${v.map((s) => JSON.stringify(s)).join(', ')}]` : JSON.stringify(v)}`,
    )
    .join('\n');
}

/** "host:port" -> port */
export function portOf(addr: unknown): number {
  const s = String(addr);
  const port = Number(s.slice(s.lastIndexOf(':') + 1));
  if (!Number.isInteger(port) || port <= 0) throw new Error(`no port in address ${JSON.stringify(addr)}`);
  return port;
}

let serial = 0;
function unique(prefix: string): string {
  serial += 1;
  return `${prefix}-${serial}`;
}

export async function writeSecret(
  h: Harness,
  value = randomBytes(32).toString('base64url'),
): Promise<string> {
  return h.file(unique('secret'), `${value}\n`);
}

export interface ServerOptions {
  /** host:port of the ws endpoint; default 127.0.0.1:0 (the real port is read from the log) */
  listen?: string;
  path?: string;
  proxyBind?: string;
  /** allow_bind: the addresses a proxy's remote_bind may name besides proxy_bind. */
  allowBind?: string[];
  allowPorts: string[];
  heartbeatInterval?: string;
  heartbeatTimeout?: string;
  shutdownTimeout?: string;
  revokedTokens?: string[];
  /** [auth] failure_limit and failure_window (the server's defaults when omitted). */
  failureLimit?: number;
  failureWindow?: string;
  /** path of the secret file; a new random secret when omitted */
  secretFile?: string;
  netns?: string;
  logLevel?: string;
  /** An [admin] table: listen (default 127.0.0.1:0) and the admin token (written to a file). */
  admin?: { listen?: string; token: string };
  /** The program to run instead of node_modules/.bin/porthole-server (e.g. the bundled file). */
  bin?: string;
}

export interface ServerConfigFile {
  configPath: string;
  secretFile: string;
  options: ServerOptions;
}

/** The lines of an [admin] table (its token written to a file of its own); none without `admin`. */
export async function adminTableLines(h: Harness, admin: ServerOptions['admin']): Promise<string[]> {
  if (!admin) return [];
  return [
    '[admin]',
    toml({
      listen: admin.listen ?? '127.0.0.1:0',
      token_file: await h.file(unique('admin-token'), `${admin.token}\n`),
    }),
  ];
}

/** The text of a server.toml for these options (an admin token is written to its own file). */
export async function serverConfigText(
  h: Harness,
  options: ServerOptions,
  secretFile: string,
): Promise<string> {
  const admin = await adminTableLines(h, options.admin);
  return [
    toml({
      listen: options.listen ?? '127.0.0.1:0',
      path: options.path,
      proxy_bind: options.proxyBind ?? '127.0.0.1',
      allow_bind: options.allowBind,
      allow_ports: options.allowPorts,
      heartbeat_interval: options.heartbeatInterval,
      heartbeat_timeout: options.heartbeatTimeout,
      shutdown_timeout: options.shutdownTimeout ?? '2s',
      log_level: options.logLevel ?? 'info',
    }),
    '[auth]',
    toml({
      secret_file: secretFile,
      revoked_tokens: options.revokedTokens,
      failure_limit: options.failureLimit,
      failure_window: options.failureWindow,
    }),
    ...admin,
    '',
  ].join('\n');
}

/** Overwrites a running server's config file (then SIGHUP it to reload). */
export async function rewriteServerConfig(h: Harness, config: ServerConfigFile, options: ServerOptions) {
  await writeFile(config.configPath, await serverConfigText(h, options, config.secretFile));
  config.options = options;
}

export async function writeServerConfig(h: Harness, options: ServerOptions): Promise<ServerConfigFile> {
  const secretFile = options.secretFile ?? (await writeSecret(h));
  const configPath = await h.file(`${unique('server')}.toml`, await serverConfigText(h, options, secretFile));
  return { configPath, secretFile, options };
}

export interface TokenOptions {
  name: string;
  ports?: string;
  expires?: string;
}

/** `porthole-server token issue`: prints the JWT on stdout and nothing else. */
export async function issueToken(config: ServerConfigFile, token: TokenOptions): Promise<string> {
  const args = ['token', 'issue', '--config', config.configPath, '--name', token.name];
  if (token.ports !== undefined) args.push('--ports', token.ports);
  if (token.expires !== undefined) args.push('--expires', token.expires);
  const out = await runOk(serverBin, args, { timeoutMs: 20_000 });
  const jwt = out.trim();
  if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(jwt) || out !== `${jwt}\n`) {
    throw new Error(
      `token issue printed something other than one JWT line: ${JSON.stringify(out.slice(0, 300))}`,
    );
  }
  return jwt;
}

/** The claims of a JWT (no verification; to read jti/exp in tests). */
export function jwtClaims(jwt: string): Record<string, unknown> {
  const payload = jwt.split('.')[1] ?? '';
  return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>;
}

export interface RunningServer {
  proc: Proc;
  config: ServerConfigFile;
  /** host:port the ws endpoint listens on (from the "server listening" log line) */
  addr: string;
  port: number;
  /** ws://addr/path */
  url: string;
  /** http://host:port of the admin listener, when the config has [admin] */
  adminUrl?: string;
}

export async function startServer(
  h: Harness,
  options: ServerOptions | ServerConfigFile,
  name = 'server',
  timeoutMs = 15_000,
): Promise<RunningServer> {
  const config = 'configPath' in options ? options : await writeServerConfig(h, options);
  const proc = h.spawn(name, config.options.bin ?? serverBin, ['--config', config.configPath], {
    netns: config.options.netns,
  });
  const line = await proc.waitForMsg('server listening', timeoutMs);
  const adminLine = config.options.admin ? await proc.waitForMsg('admin listening', timeoutMs) : undefined;
  const addr = String(line.addr);
  const port = portOf(addr);
  const host = addr.slice(0, addr.lastIndexOf(':')).replace(/^\[|\]$/g, '');
  const urlHost = host === '0.0.0.0' || host === '::' || host === '' ? '127.0.0.1' : host;
  const pathPart = String(line.path ?? config.options.path ?? '/_porthole');
  const url = `ws://${urlHost.includes(':') ? `[${urlHost}]` : urlHost}:${port}${pathPart}`;
  const running: RunningServer = { proc, config, addr, port, url };
  if (adminLine) running.adminUrl = `http://${String(adminLine.addr)}`;
  return running;
}

export interface ProxySpec {
  name: string;
  /** tcp unless said otherwise */
  type?: 'tcp' | 'udp';
  /** host:port of the local service */
  local: string;
  remotePort: number;
  /** udp_idle_timeout of a udp proxy (the client's default when omitted). */
  udpIdleTimeout?: string;
  /** compression = true: the tunnel hop carries it deflated. */
  compression?: boolean;
}

export interface ClientOptions {
  server: string;
  token: string;
  proxies: ProxySpec[];
  heartbeatInterval?: string;
  heartbeatTimeout?: string;
  reconnectInitial?: string;
  reconnectMax?: string;
  exitOnAuthFailure?: boolean;
  netns?: string;
  logLevel?: string;
  shutdownTimeout?: string;
  proxyRetryInterval?: string;
  /** [admin] listen of the client (loopback), for `porthole-client status`. */
  adminListen?: string;
  /** The program to run instead of node_modules/.bin/porthole-client. */
  bin?: string;
}

/** The text of a client.toml for these options (the token is written to its own file). */
export async function clientConfigText(h: Harness, options: ClientOptions): Promise<string> {
  const tokenFile = await h.file(unique('token'), `${options.token}\n`);
  const parts = [
    toml({
      server: options.server,
      token_file: tokenFile,
      heartbeat_interval: options.heartbeatInterval,
      heartbeat_timeout: options.heartbeatTimeout,
      reconnect_initial: options.reconnectInitial ?? '200ms',
      reconnect_max: options.reconnectMax ?? '2s',
      exit_on_auth_failure: options.exitOnAuthFailure,
      shutdown_timeout: options.shutdownTimeout,
      proxy_retry_interval: options.proxyRetryInterval,
      log_level: options.logLevel ?? 'info',
    }),
  ];
  if (options.adminListen !== undefined) parts.push('', '[admin]', toml({ listen: options.adminListen }));
  for (const p of options.proxies) {
    parts.push(
      '',
      '[[proxies]]',
      toml({
        name: p.name,
        type: p.type ?? 'tcp',
        local: p.local,
        remote_port: p.remotePort,
        udp_idle_timeout: p.udpIdleTimeout,
        compression: p.compression,
      }),
    );
  }
  parts.push('');
  return parts.join('\n');
}

export async function writeClientConfig(h: Harness, options: ClientOptions): Promise<string> {
  return h.file(`${unique('client')}.toml`, await clientConfigText(h, options));
}

/** Overwrites a running client's config file (then SIGHUP it to reload). */
export async function rewriteClientConfig(h: Harness, configPath: string, options: ClientOptions) {
  await writeFile(configPath, await clientConfigText(h, options));
}

export interface RunningClient {
  proc: Proc;
  configPath: string;
  /** proxy name -> public port, for the proxies the client reported registered */
  ports: Map<string, number>;
}

/**
 * Start a client; by default wait until each of its proxies is registered (`waitFor: 'none'` to return
 * at once, e.g. for clients expected to be refused).
 */
export async function startClient(
  h: Harness,
  options: ClientOptions,
  opts: { name?: string; waitFor?: 'registered' | 'none'; timeoutMs?: number } = {},
): Promise<RunningClient> {
  const configPath = await writeClientConfig(h, options);
  const proc = h.spawn(opts.name ?? 'client', options.bin ?? clientBin, ['--config', configPath], {
    netns: options.netns,
  });
  const ports = new Map<string, number>();
  if ((opts.waitFor ?? 'registered') === 'registered') {
    for (const p of options.proxies) {
      const line = await proc.waitForMsg('proxy registered', opts.timeoutMs ?? 15_000, {
        fields: { proxy: p.name },
      });
      ports.set(p.name, registeredPort(line, p.remotePort));
    }
  }
  return { proc, configPath, ports };
}

/** The public port from a "proxy registered" line (remote_addr), falling back to the requested port. */
export function registeredPort(line: LogLine, requested: number): number {
  return line.remote_addr === undefined ? requested : portOf(line.remote_addr);
}

export interface Tunnel {
  server: RunningServer;
  client: RunningClient;
  /** the public port of the first proxy */
  publicPort: number;
}

/**
 * The common case on loopback: a server allowing exactly the proxies' ports, a token granting them,
 * and a client exposing each `local` service. Returns once every proxy is registered.
 */
export async function startTunnel(
  h: Harness,
  proxies: ProxySpec[],
  extra: { server?: Partial<ServerOptions>; client?: Partial<ClientOptions>; tokenName?: string } = {},
): Promise<Tunnel> {
  const ports = proxies.map((p) => String(p.remotePort));
  const server = await startServer(h, { allowPorts: ports, ...extra.server });
  const token = await issueToken(server.config, { name: extra.tokenName ?? 'e2e', ports: ports.join(',') });
  const client = await startClient(h, { server: server.url, token, proxies, ...extra.client });
  const first = proxies[0];
  if (!first) throw new Error('startTunnel needs at least one proxy');
  return { server, client, publicPort: client.ports.get(first.name) ?? first.remotePort };
}
