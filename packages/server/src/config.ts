import { isIPv4, isIPv6 } from 'node:net';
import {
  type BandwidthLimit,
  bandwidthLimitField,
  ConfigError,
  DEFAULT_CONTROL_PATH,
  durationAboveZero,
  durationAtLeast,
  durationField,
  elementLabel,
  expected,
  type HostPort,
  hostPortField,
  inlineSecretExposure,
  type LogLevel,
  loadCertFiles,
  loadTomlConfig,
  logLevelField,
  MIN_SECRET_LENGTH,
  PortRanges,
  parseBindAddress,
  parseHostPort,
  portRangesField,
  positiveIntField,
  readCaFile,
  readSecretFile,
  readUnverifiedClaims,
  resolveConfigPath,
  secretFileExposure,
} from '@porthole/protocol';
import { z } from 'zod';
import type { PendingLimits } from './pending-connections.js';
import { type PluginConfig, pluginsField } from './plugin-config.js';
import { loadRoutingConfig, type RoutingConfig, routingConfigShape } from './routing-config.js';

/** Loopback only unless the operator says otherwise: the admin API shows every client and connection. */
export const DEFAULT_ADMIN_LISTEN = '127.0.0.1:7500';
const MIN_ADMIN_TOKEN_LENGTH = 16;
/**
 * Above what any homelab service meets (the bench holds 10,000 idle connections through one proxy), below
 * the 65,536 streams of a client's tunnel: a flood on one public port cannot take the streams of its
 * client's other proxies.
 */
export const DEFAULT_PROXY_MAX_CONNECTIONS = 16_384;
/** Enough for any homelab; a cap so that one token cannot make the route tables (and their upkeep) huge. */
export const DEFAULT_MAX_PROXIES_PER_CLIENT = 256;
/**
 * Connections one source address (IPv4; IPv6 by /64, as auth failures are counted) may have open before
 * they sign in or are routed. A stranger's slow request head costs ~25 KiB for up to headers_timeout: this
 * is ~6 MiB a source. A client is pending for a round trip or three (its TLS handshake and upgrade), and
 * clients cut off together come back spread by full jitter over reconnect_initial (500 ms) and then
 * doubling windows: a thousand behind one NAT at ~100 ms a handshake have ~200 pending at once, and one
 * refused tries again at its next backoff.
 */
export const DEFAULT_MAX_PENDING_PER_SOURCE = 256;
/** The same from all sources together (~100 MiB at most), so that many sources cannot exhaust memory. */
export const DEFAULT_MAX_PENDING_CONNECTIONS = 4096;

/**
 * Why `text` cannot be proxy_bind (an IPv4 or IPv6 address, or a host name), or undefined when it can. A
 * pattern for IPv6 took "127.0.0.1:80" for one, check passed it, and every proxy then failed to bind
 * (getaddrinfo ENOTFOUND 127.0.0.1:80).
 */
function bindHostProblem(text: string): string | undefined {
  if (isIPv4(text) || isIPv6(text) || /^[A-Za-z0-9.-]+$/.test(text)) return undefined;
  const unbracketed = /^\[(.*)\]$/.exec(text)?.[1];
  if (unbracketed !== undefined && isIPv6(unbracketed))
    return `write an IPv6 address without brackets: "${unbracketed}"`;
  try {
    const { host } = parseHostPort(text);
    return `must be a host without a port, e.g. "${host}" (each proxy binds its own remote_port)`;
  } catch {
    return 'must be an IP address or a host name';
  }
}

const bindHostField = z.string({ error: expected('an address like "0.0.0.0"') }).superRefine((text, ctx) => {
  const problem = bindHostProblem(text);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

/**
 * A whole token pasted into revoked_tokens would be compared with token ids and match none: the token it
 * was meant to revoke stayed valid, and the file now held it.
 */
function notAWholeToken(entry: string, ctx: z.RefinementCtx): void {
  const claims = readUnverifiedClaims(entry);
  if (claims === undefined) return;
  const id = claims.jti === undefined ? 'its id (jti)' : `its id (jti) "${claims.jti}"`;
  ctx.addIssue({
    code: 'custom',
    message: `this is a whole token, not a token id: write ${id} here instead, and keep the token itself out of this file`,
  });
}

const serverSchema = z
  .strictObject({
    listen: hostPortField({ allowZero: true }).prefault('0.0.0.0:7000'),
    path: z
      .string({ error: expected('a path like "/_porthole"') })
      .regex(/^\/[A-Za-z0-9._~!$&'()*+,;=:@/%-]*$/, 'must start with "/" and contain no spaces, "?" or "#"')
      .default(DEFAULT_CONTROL_PATH),
    proxy_bind: bindHostField.default('0.0.0.0'),
    allow_ports: portRangesField.optional(),
    allow_bind: z
      .array(
        z.string({ error: expected('an IP address like "127.0.0.1"') }).transform((text, ctx) => {
          try {
            return parseBindAddress(text);
          } catch (err) {
            ctx.addIssue({ code: 'custom', message: (err as Error).message });
            return z.NEVER;
          }
        }),
        { error: expected('a list of addresses like ["127.0.0.1", "::1", "0.0.0.0"]') },
      )
      .max(256)
      .optional(),
    proxy_max_connections: positiveIntField('a number of connections')
      .max(1_000_000)
      .default(DEFAULT_PROXY_MAX_CONNECTIONS),
    max_proxies_per_client: positiveIntField('a number of proxies')
      .max(100_000)
      .default(DEFAULT_MAX_PROXIES_PER_CLIENT),
    client_bandwidth_limit: bandwidthLimitField.optional(),
    max_pending_per_source: positiveIntField('a number of connections')
      .max(1_000_000)
      .default(DEFAULT_MAX_PENDING_PER_SOURCE),
    max_pending_connections: positiveIntField('a number of connections')
      .max(1_000_000)
      .default(DEFAULT_MAX_PENDING_CONNECTIONS),
    heartbeat_interval: durationAtLeast(100, '100ms').prefault('10s'),
    heartbeat_timeout: durationField.prefault('30s'),
    shutdown_timeout: durationField.prefault('10s'),
    log_level: logLevelField.default('info'),
    auth: z.strictObject(
      {
        secret: z.string({ error: expected('a string') }).optional(),
        secret_file: z.string({ error: expected('a file path') }).optional(),
        revoked_tokens: z
          .array(z.string().superRefine(notAWholeToken), { error: expected('a list of token ids (jti)') })
          .default([]),
        failure_limit: positiveIntField('a number').default(20),
        failure_window: durationAboveZero(
          'start a new window at every failure, so failure_limit would never be reached',
        ).prefault('1m'),
      },
      { error: expected('an [auth] table with secret or secret_file') },
    ),
    ...routingConfigShape,
    tls: z
      .strictObject({
        cert_file: z.string({ error: expected('a file path') }),
        key_file: z.string({ error: expected('a file path') }),
      })
      .optional(),
    admin: z
      .strictObject(
        {
          listen: hostPortField({ allowZero: true }).prefault(DEFAULT_ADMIN_LISTEN),
          token: z.string({ error: expected('a string') }).optional(),
          token_file: z.string({ error: expected('a file path') }).optional(),
        },
        { error: expected('an [admin] table') },
      )
      .optional(),
    plugins: pluginsField,
  })
  .superRefine((config, ctx) => {
    if (config.heartbeat_timeout <= config.heartbeat_interval) {
      ctx.addIssue({
        code: 'custom',
        path: ['heartbeat_timeout'],
        message: 'must be longer than heartbeat_interval',
      });
    }
    const { secret, secret_file } = config.auth;
    if ((secret === undefined) === (secret_file === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['auth'], message: 'set exactly one of secret or secret_file' });
    }
    if (config.admin && (config.admin.token === undefined) === (config.admin.token_file === undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: ['admin'],
        message: 'set exactly one of token or token_file (the admin API is Bearer-protected)',
      });
    }
  });

export interface ServerConfig {
  /** The config file, for messages. */
  file: string;
  listen: HostPort;
  path: string;
  proxyBind: string;
  /**
   * The addresses a tcp or udp proxy may ask to be bound on (remote_bind) besides proxy_bind, which is always
   * allowed; empty unless allow_bind is set.
   */
  allowBind: readonly string[];
  allowPorts: PortRanges;
  /** Visitor connections a tcp or tls proxy may have open at once; a client's max_connections can only lower it. */
  proxyMaxConnections: number;
  /** Proxies one client may have registered at once (each costs listeners, routes and table work). */
  maxProxiesPerClient: number;
  /**
   * The cap on one client's public proxies together, each direction, for tokens that carry none of their
   * own (a token's bandwidth limit wins); undefined: none.
   */
  clientBandwidthLimit?: BandwidthLimit;
  /**
   * Connections not signed in (control endpoint) or routed (vhost ports) yet, per source and in all; over
   * either, a new one is reset at once.
   */
  pending: PendingLimits;
  heartbeatInterval: number;
  heartbeatTimeout: number;
  shutdownTimeout: number;
  logLevel: LogLevel;
  auth: {
    secret: string;
    revoked: ReadonlySet<string>;
    failureLimit: number;
    failureWindow: number;
  };
  tls?: { cert: Buffer; key: Buffer };
  /** subdomain_host, trusted_proxies, udp_*, [http], [https], [tcpmux]; absent: defaults (no vhost ports). */
  routing?: RoutingConfig;
  /** The admin listener (JSON API, /metrics, status page); absent when there is no [admin] table. */
  admin?: { listen: HostPort; token: string };
  /** [[plugins]]: the operator's services asked at sign-in, registration and visitor connections; a reload applies new ones. */
  plugins: readonly PluginConfig[];
  /** Worth saying but not refusing (a secret file others can read), for the log. */
  warnings: string[];
}

/**
 * A secret set inline (`key`) or read from a file (`key`_file; the schema lets exactly one through), at least
 * `minLength` characters; errors name whichever key it came from.
 */
function secretSetting(
  file: string,
  key: string,
  inline: string | undefined,
  path: string | undefined,
  rule: { what: string; minLength: number; howToMake: string; sentAsHeader?: boolean },
  warnings: string[],
): string {
  const fileKey = `${key}_file`;
  const secretPath = inline === undefined ? resolveConfigPath(file, path!) : file;
  const value = inline ?? readSecretFile(file, fileKey, secretPath);
  const exposed =
    inline === undefined ? secretFileExposure(secretPath) : inlineSecretExposure(file, key.split('.'));
  if (exposed) warnings.push(`${inline === undefined ? fileKey : key}: ${exposed}`);
  if (value.length < rule.minLength) {
    throw ConfigError.at(
      file,
      inline === undefined ? fileKey : key,
      `${rule.what} must be at least ${rule.minLength} characters (make one with: ${rule.howToMake})`,
    );
  }
  // A browser cannot send other characters in an Authorization header, nor can the header's parser
  // tell a space inside the token from the one after "Bearer".
  if (rule.sentAsHeader && !/^[\x21-\x7e]+$/.test(value)) {
    throw ConfigError.at(
      file,
      inline === undefined ? fileKey : key,
      `${rule.what} must be printable ASCII without spaces (make one with: ${rule.howToMake})`,
    );
  }
  return value;
}

/** Loads and checks server.toml; throws ConfigError naming file, key and reason. */
export function loadServerConfig(file: string): ServerConfig {
  const raw = loadTomlConfig(file, serverSchema);
  const warnings: string[] = [];
  const secret = secretSetting(
    file,
    'auth.secret',
    raw.auth.secret,
    raw.auth.secret_file,
    { what: 'the secret', minLength: MIN_SECRET_LENGTH, howToMake: 'openssl rand -hex 32' },
    warnings,
  );
  const config: ServerConfig = {
    file,
    listen: raw.listen,
    path: raw.path,
    proxyBind: raw.proxy_bind,
    allowBind: [...new Set(raw.allow_bind ?? [])],
    allowPorts: raw.allow_ports ?? PortRanges.all(),
    proxyMaxConnections: raw.proxy_max_connections,
    maxProxiesPerClient: raw.max_proxies_per_client,
    clientBandwidthLimit: raw.client_bandwidth_limit,
    pending: { perSource: raw.max_pending_per_source, total: raw.max_pending_connections },
    heartbeatInterval: raw.heartbeat_interval,
    heartbeatTimeout: raw.heartbeat_timeout,
    shutdownTimeout: raw.shutdown_timeout,
    logLevel: raw.log_level,
    auth: {
      secret,
      revoked: new Set(raw.auth.revoked_tokens),
      failureLimit: raw.auth.failure_limit,
      failureWindow: raw.auth.failure_window,
    },
    plugins: raw.plugins.map((plugin, index) => withPluginCa(file, index, plugin)),
    warnings,
  };
  if (raw.tls) {
    config.tls = loadCertFiles(file, 'tls', raw.tls, warnings);
    const exposed = secretFileExposure(resolveConfigPath(file, raw.tls.key_file));
    if (exposed) warnings.push(`tls.key_file: ${exposed}`);
  }
  config.routing = loadRoutingConfig(file, raw, config.tls, warnings);
  if (raw.admin) {
    const token = secretSetting(
      file,
      'admin.token',
      raw.admin.token,
      raw.admin.token_file,
      {
        what: 'the admin token',
        minLength: MIN_ADMIN_TOKEN_LENGTH,
        howToMake: 'openssl rand -hex 24',
        sentAsHeader: true,
      },
      warnings,
    );
    config.admin = { listen: raw.admin.listen, token };
  }
  checkListenersApart(file, config);
  return config;
}

/** A [[plugins]] table with its ca_file (resolved next to the config file) read and checked. */
function withPluginCa(file: string, index: number, plugin: PluginConfig): PluginConfig {
  if (plugin.caFile === undefined) return plugin;
  const key = `plugins${elementLabel(index, plugin)}.ca_file`;
  const path = resolveConfigPath(file, plugin.caFile);
  return {
    ...plugin,
    ca: readCaFile(file, key, path, "ca_file is the plugin's certificate (or its CA's), not its key"),
  };
}

const ANY_ADDRESS = new Set(['0.0.0.0', '::', '']);

/**
 * Two listeners on one port would pass `check` and fail at start (EADDRINUSE, exit 1, and systemd
 * restarting it every 2 s): refused here, naming both keys.
 */
function checkListenersApart(file: string, config: ServerConfig): void {
  const listeners: [key: string, at: HostPort | undefined][] = [
    ['listen', config.listen],
    ['http.listen', config.routing?.httpListen],
    ['https.listen', config.routing?.https?.listen],
    ['tcpmux.listen', config.routing?.tcpmux?.listen],
    ['admin.listen', config.admin?.listen],
  ];
  for (let i = 0; i < listeners.length; i++) {
    const [key, at] = listeners[i]!;
    if (!at || at.port === 0) continue;
    for (const [earlierKey, earlier] of listeners.slice(0, i)) {
      if (!earlier || earlier.port !== at.port) continue;
      if (earlier.host === at.host || ANY_ADDRESS.has(earlier.host) || ANY_ADDRESS.has(at.host))
        throw ConfigError.at(
          file,
          key,
          `port ${at.port} is ${earlierKey}'s too; each listener needs a port of its own`,
        );
    }
  }
}
