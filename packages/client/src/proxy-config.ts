// One [[proxies]] table of client.toml: the keys each proxy type takes, their checks, and what the
// server is told at registration.
import {
  type BandwidthLimit,
  bandwidthLimitField,
  durationAboveZero,
  durationAtLeast,
  durationField,
  expected,
  formatDuration,
  formatLocalAddress,
  headerTableProblems,
  isUnixSocketAddress,
  type LocalAddress,
  NetworkList,
  PICKED_PORT,
  type PortRanges,
  PROXY_TYPES,
  type ProxySpec,
  type ProxyType,
  parseBindAddress,
  parseHostPattern,
  parseLocalAddress,
  parseSubdomain,
  portRangesField,
  positiveIntField,
  proxyNameSchema,
  responseHeaderRefusal,
  tlsNameRefusal,
  UDP_COMPRESSION_REASON,
  UDP_IDLE_TIMEOUT_MAX_MS,
  UDP_IDLE_TIMEOUT_MIN_MS,
  type UnixSocketAddress,
} from '@porthole/protocol';
import { z } from 'zod';
import type { HealthCheckConfig } from './health-check.js';
import { type LocalTls, localTlsField, toLocalTls } from './local-tls.js';
import {
  firstLocal,
  isLocalPortRange,
  type LocalPortRange,
  type PortRangePair,
  parseLocalPortRange,
  parseRemotePortRange,
  readPortRange,
} from './port-range-proxies.js';
import type { SocksCredentials } from './socks5.js';
import { type TerminateTls, terminateTlsField } from './terminate-tls.js';

const hostField = z.string({ error: expected('a hostname') }).transform((text, ctx) => {
  try {
    return parseHostPattern(text);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});

/** Headers the tunnel itself sets or that would break the framing; request_headers may not set them
 * (the server ignores them there too). */
const RESERVED_HEADERS = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'upgrade',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
]);

/** request_headers and response_headers: `{ "Name" = "value" }`, each field one line. */
const headerTableField = z.record(z.string(), z.string({ error: expected('a header value') }), {
  error: expected('a table of header = "value"'),
});

/**
 * `local = "socks5"`: a tcp proxy whose visitors name their destination with SOCKS5 and the client connects
 * there (chisel's R:socks, ssh -R's dynamic forward). A value of `local`, not a proxy type: the server sees a
 * tcp proxy like any other (it only carries bytes), and the other keys of a tcp proxy mean what they mean.
 */
export const SOCKS5_LOCAL = 'socks5';
/**
 * `local = "http-proxy"`: the same, with HTTP proxy requests (CONNECT and absolute-form, frp's http_proxy
 * plugin) for the programs that take only an HTTP proxy (apt, docker, pip, git, `https_proxy`).
 */
export const HTTP_PROXY_LOCAL = 'http-proxy';
/** The locals whose visitors choose their destination; the socks_* keys say who may and where to. */
export type ForwardProxyLocal = typeof SOCKS5_LOCAL | typeof HTTP_PROXY_LOCAL;

/**
 * `local = "dir:/srv/share"`: the client itself answers HTTP/1.1 with the files under that directory (frp's
 * static_file plugin), for http proxies and tcp ones. No local port: each tunnel stream goes to Node's HTTP
 * server machinery in this process.
 */
export const DIR_PREFIX = 'dir:';

export interface DirectoryLocal {
  /** The directory served; relative until the client config resolves it. */
  dir: string;
}

/**
 * A proxy's `local`: one service, SOCKS5 or an HTTP proxy (the visitor's choice of destination), or a directory
 * served here.
 */
export type ProxyLocal = LocalAddress | ForwardProxyLocal | DirectoryLocal;

export function isDirectoryLocal(local: ProxyLocal): local is DirectoryLocal {
  return typeof local === 'object' && 'dir' in local;
}

/** socks5 or http-proxy: no one local service, the visitor names where it goes. */
export function isForwardProxyLocal(local: ProxyLocal): local is ForwardProxyLocal {
  return local === SOCKS5_LOCAL || local === HTTP_PROXY_LOCAL;
}

/** "a socks5 proxy", "an http-proxy proxy": how error messages name one. */
function aProxyWith(local: ForwardProxyLocal): string {
  return local === SOCKS5_LOCAL ? 'a socks5 proxy' : 'an http-proxy proxy';
}

/** A Unix socket's path as the one local service (not a forward proxy's visitor-chosen ones, not host:port). */
export function isUnixSocketLocal(local: ProxyLocal): local is UnixSocketAddress {
  return !isForwardProxyLocal(local) && !isDirectoryLocal(local) && isUnixSocketAddress(local);
}

/**
 * The `local` of log lines and status: "127.0.0.1:22", "unix:/run/app.sock", "socks5", "http-proxy",
 * "dir:/srv/share".
 */
export function describeLocal(local: ProxyLocal): string {
  if (isForwardProxyLocal(local)) return local;
  return isDirectoryLocal(local) ? `${DIR_PREFIX}${local.dir}` : formatLocalAddress(local);
}

/**
 * A proxy's `local` as log lines and status show it: describeLocal's, "127.0.0.1:8006 (tls)" with local_tls,
 * "tls ended here -> 127.0.0.1:8080" with terminate_tls (the visitors' TLS ends on this client).
 */
export function describeProxyLocal(proxy: Pick<ProxyConfig, 'local' | 'localTls' | 'terminateTls'>): string {
  const local = describeLocal(proxy.local);
  const towardsService = proxy.localTls ? `${local} (tls)` : local;
  return proxy.terminateTls ? `tls ended here -> ${towardsService}` : towardsService;
}

/**
 * "host:port", "unix:PATH", "dir:PATH" (a relative PATH is resolved later, where the config file is known)
 * "socks5" or "http-proxy"; "host:PORTS" ("127.0.0.1:27015-27030") for a range of tcp or udp proxies.
 */
const localField = z
  .string({
    error: expected('"host:port", "unix:/path/to.sock", "dir:/path/to/share", "socks5" or "http-proxy"'),
  })
  .transform((text, ctx): ProxyLocal | LocalPortRange => {
    if (text === SOCKS5_LOCAL || text === HTTP_PROXY_LOCAL) return text;
    if (text.startsWith(DIR_PREFIX)) {
      const dir = text.slice(DIR_PREFIX.length);
      const problem =
        dir === ''
          ? `"${text}" names no directory (expected dir:PATH, e.g. dir:/srv/share)`
          : dir.includes('\0')
            ? `"${text}": a directory path cannot hold a NUL byte`
            : undefined;
      if (problem === undefined) return { dir };
      ctx.addIssue({ code: 'custom', message: problem });
      return z.NEVER;
    }
    try {
      if (!text.startsWith('unix:')) {
        const range = parseLocalPortRange(text);
        if (range) return range;
      }
      return parseLocalAddress(text);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });

/** A tcp or udp proxy's public port; 0 (PICKED_PORT) asks the server to pick one, as `ssh -R 0:...` does. */
const remotePortNumber = z
  .number({ error: expected('a port number (0: one the server picks)') })
  .int()
  .min(PICKED_PORT)
  .max(65535);

/** A string that is one port: `remote_port = "${PORT}"`, a number from the environment. */
const ONE_PORT_TEXT = /^\s*\d+\s*$/;

/**
 * remotePortNumber, or a range of them written as a string ("27015-27030"), which `local` pairs with. A
 * string of one port is that port, not a range of one: the proxy keeps its name.
 */
const remotePortField = z
  .union([z.number(), z.string()], {
    error: expected('a port number (0: one the server picks) or a range like "27015-27030"'),
  })
  .transform((value, ctx): number | PortRanges => {
    if (typeof value === 'number' || ONE_PORT_TEXT.test(value)) {
      const port = remotePortNumber.safeParse(Number(value));
      if (port.success) return port.data;
      for (const issue of port.error.issues) ctx.addIssue({ ...issue });
      return z.NEVER;
    }
    try {
      return parseRemotePortRange(value);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });

/** A tcp or udp proxy's address on the server (ssh -R's bind_address), in the spelling the server compares. */
const remoteBindField = z
  .string({ error: expected('an IP address like "127.0.0.1"') })
  .transform((text, ctx) => {
    try {
      return parseBindAddress(text);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });

/** Keys only some types take: [type that may use it, ...]. */
const KEY_TYPES: Record<string, readonly ProxyType[]> = {
  remote_port: ['tcp', 'udp'],
  remote_bind: ['tcp', 'udp'],
  hosts: ['http', 'tls', 'tcpmux'],
  subdomain: ['http', 'tls', 'tcpmux'],
  locations: ['http'],
  http_user: ['http', 'tcpmux'],
  http_password: ['http', 'tcpmux'],
  host_header_rewrite: ['http'],
  request_headers: ['http'],
  response_headers: ['http'],
  proxy_protocol: ['tcp', 'tls', 'tcpmux'],
  max_connections: ['tcp', 'tls', 'http', 'tcpmux'],
  udp_idle_timeout: ['udp'],
  max_flows: ['udp'],
  group: ['tcp', 'udp', 'http', 'tls', 'tcpmux'],
  health_check: ['tcp', 'http', 'tls', 'tcpmux'],
  private: ['tcp', 'udp'],
  multiplexer: ['tcpmux'],
  terminate_tls: ['tcp', 'tls'],
};

/**
 * frp's tcpmux proxies name how visitors choose them; "httpconnect" (an HTTP CONNECT request) is the one
 * way, here as there, so a proxy copied from frpc.toml keeps its line.
 */
export const TCPMUX_MULTIPLEXERS = ['httpconnect'] as const;

/** frp's healthCheck defaults: a check every 10 s, 3 s to answer, 3 failures in a row. */
const HEALTH_CHECK_DEFAULTS = { interval: 10_000, timeout: 3_000, max_failed: 3 };

/** `health_check = { type = "tcp"|"http", interval, timeout, max_failed, path }`. */
const healthCheckField = z
  .strictObject(
    {
      type: z.enum(['tcp', 'http'], { error: expected('"tcp" or "http"') }),
      interval: durationAtLeast(100, '100ms').optional(),
      timeout: durationAboveZero('never let a check pass').optional(),
      max_failed: positiveIntField('a number of failed checks').max(1000).optional(),
      path: z
        .string({ error: expected('a path like "/healthz"') })
        .regex(/^\/[^\s#]*$/, 'must start with "/" and contain no spaces or "#"')
        .optional(),
    },
    { error: expected('a table like { type = "tcp", interval = "10s", timeout = "3s", max_failed = 3 }') },
  )
  .superRefine((check, ctx) => {
    if (check.type === 'http' && check.path === undefined)
      ctx.addIssue({
        code: 'custom',
        path: ['path'],
        message: 'required for an http check, e.g. "/healthz"',
      });
    if (check.type === 'tcp' && check.path !== undefined)
      ctx.addIssue({ code: 'custom', path: ['path'], message: 'applies to http checks only' });
  });

/** A SOCKS user name or password: RFC 1929 carries each in at most 255 bytes. */
const socksCredentialField = z
  .string({ error: expected('a string') })
  .min(1)
  .refine((text) => Buffer.byteLength(text) <= 255, 'must be at most 255 bytes (RFC 1929)');

/** Keys only a `local = "socks5"` or `"http-proxy"` proxy takes: one set of rules for both. */
const SOCKS_KEYS = [
  'socks_user',
  'socks_password',
  'socks_password_file',
  'socks_no_auth',
  'socks_allow',
  'socks_allow_ports',
] as const;

/** Keys only a `local = "dir:PATH"` proxy takes. */
const DIR_KEYS = ['strip_prefix', 'serve_dotfiles', 'follow_outside_symlinks'] as const;

/**
 * strip_prefix: the leading path segments visitors' URLs carry and the directory does not, written "static",
 * "/static" or "/static/" as frp's stripPrefix is ("static"); kept as "/static".
 */
const stripPrefixField = z
  .string({ error: expected('a path like "static" or "/files/public"') })
  .transform((text, ctx) => {
    const segments = text.split('/').filter((segment) => segment !== '');
    const bad = segments.find((s) => s === '.' || s === '..' || /[\s?#%\\\0]/.test(s));
    if (segments.length === 0 || bad !== undefined) {
      ctx.addIssue({
        code: 'custom',
        message:
          bad === undefined
            ? 'names no path segment (leave strip_prefix out to serve the directory at "/")'
            : `"${bad}" cannot be a segment here: no ".", "..", spaces, "?", "#", "%" or backslashes`,
      });
      return z.NEVER;
    }
    return `/${segments.join('/')}`;
  });

/** "tcp", "tcp and tls", "tcp, tls and http". */
function listed(words: readonly string[]): string {
  return words.length < 2 ? words.join('') : `${words.slice(0, -1).join(', ')} and ${words.at(-1)}`;
}

export const proxySchema = z
  .strictObject({
    name: proxyNameSchema,
    type: z.enum(PROXY_TYPES as [ProxyType, ...ProxyType[]], {
      error: expected(`one of ${PROXY_TYPES.join(', ')}`),
    }),
    local: localField,
    remote_port: remotePortField.optional(),
    remote_bind: remoteBindField.optional(),
    hosts: z
      .array(hostField, { error: expected('a list of hostnames') })
      .max(64)
      .optional(),
    subdomain: z
      .string({ error: expected('a name like "app"') })
      .transform((text, ctx) => {
        try {
          return parseSubdomain(text);
        } catch (err) {
          ctx.addIssue({ code: 'custom', message: (err as Error).message });
          return z.NEVER;
        }
      })
      .optional(),
    locations: z
      .array(
        z
          .string({ error: expected('a path like "/api"') })
          .regex(/^\/[^\s?#]*$/, 'must start with "/" and contain no spaces, "?" or "#"'),
        { error: expected('a list of paths like ["/", "/api"]') },
      )
      .min(1)
      .max(64)
      .optional(),
    http_user: z
      .string({ error: expected('a string') })
      .min(1)
      .max(256)
      .optional(),
    http_password: z
      .string({ error: expected('a string') })
      .min(1)
      .max(256)
      .optional(),
    host_header_rewrite: hostField
      .refine((host) => !host.startsWith('*.'), 'must be a plain hostname')
      .optional(),
    request_headers: headerTableField.optional(),
    response_headers: headerTableField.optional(),
    proxy_protocol: z.enum(['v1', 'v2'], { error: expected('"v1" or "v2"') }).optional(),
    max_connections: positiveIntField('a number of connections').max(1_000_000).optional(),
    compression: z.boolean({ error: expected('true or false') }).optional(),
    udp_idle_timeout: durationField.optional(),
    max_flows: positiveIntField('a number of flows').max(1_000_000).optional(),
    bandwidth_limit: bandwidthLimitField.optional(),
    group: proxyNameSchema.optional(),
    health_check: healthCheckField.optional(),
    socks_user: socksCredentialField.optional(),
    socks_password: socksCredentialField.optional(),
    socks_password_file: z.string({ error: expected('a file path') }).optional(),
    socks_no_auth: z.boolean({ error: expected('true or false') }).optional(),
    socks_allow: z
      .array(
        z.string({ error: expected('a network like "192.168.1.0/24"') }).refine(
          (text) => {
            try {
              NetworkList.check(text);
              return true;
            } catch {
              return false;
            }
          },
          { error: (issue) => `"${issue.input}" is not an IP address or CIDR network like "192.168.1.0/24"` },
        ),
        { error: expected('a list of networks like ["192.168.1.0/24", "fd00::/8"]') },
      )
      .min(1)
      .max(1024)
      .optional(),
    socks_allow_ports: portRangesField.optional(),
    strip_prefix: stripPrefixField.optional(),
    serve_dotfiles: z.boolean({ error: expected('true or false') }).optional(),
    follow_outside_symlinks: z.boolean({ error: expected('true or false') }).optional(),
    private: z.boolean({ error: expected('true or false') }).optional(),
    multiplexer: z.enum(TCPMUX_MULTIPLEXERS, { error: expected('"httpconnect"') }).optional(),
    local_tls: localTlsField.optional(),
    terminate_tls: terminateTlsField.optional(),
  })
  .superRefine((table, ctx) => {
    // A range's own checks are readPortRange's; the others read its first port as they would a single one.
    const proxy = { ...table, local: isLocalPortRange(table.local) ? firstLocal(table.local) : table.local };
    const range = readPortRange(table);
    if (range && 'message' in range)
      ctx.addIssue({ code: 'custom', path: [range.key], message: range.message });
    for (const [key, types] of Object.entries(KEY_TYPES)) {
      if ((proxy as Record<string, unknown>)[key] !== undefined && !types.includes(proxy.type)) {
        ctx.addIssue({
          code: 'custom',
          path: [key],
          message: `applies to ${listed(types)} proxies, not ${proxy.type}`,
        });
      }
    }
    if (proxy.compression && proxy.type === 'udp')
      ctx.addIssue({ code: 'custom', path: ['compression'], message: UDP_COMPRESSION_REASON });
    checkSocks(proxy, ctx);
    checkDirectory(proxy, ctx);
    checkLocalTls(proxy, ctx);
    checkTerminateTls(proxy, ctx);
    if (proxy.group !== undefined && proxy.remote_port === PICKED_PORT) {
      ctx.addIssue({
        code: 'custom',
        path: ['remote_port'],
        message: 'a proxy in a group shares the port it names with the others: 0 would be a port of its own',
      });
    }
    if (proxy.health_check !== undefined && isForwardProxyLocal(proxy.local)) {
      ctx.addIssue({
        code: 'custom',
        path: ['health_check'],
        message: `${aProxyWith(proxy.local)} has no one local service to check`,
      });
    }
    if (proxy.health_check !== undefined && isDirectoryLocal(proxy.local)) {
      ctx.addIssue({
        code: 'custom',
        path: ['health_check'],
        message: 'a directory proxy is served by the client itself: there is no local service to check',
      });
    }
    if (proxy.type === 'udp' && isUnixSocketLocal(proxy.local)) {
      ctx.addIssue({
        code: 'custom',
        path: ['local'],
        message: 'a udp proxy cannot reach a Unix socket: give its service as "host:port"',
      });
    }
    if (proxy.private === true && proxy.remote_port !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['remote_port'],
        message:
          'a private proxy has no port on the server: visitors reach it by name ([[visitors]] service = "CLIENT/NAME")',
      });
    }
    // Both share a public port; a private proxy has none.
    for (const key of ['remote_bind', 'group'] as const) {
      if (proxy.private === true && proxy[key] !== undefined)
        ctx.addIssue({
          code: 'custom',
          path: [key],
          message: `a private proxy has no public port for ${key === 'group' ? 'a group to share' : 'the server to bind'}: visitors reach it by name`,
        });
    }
    if (
      (proxy.type === 'tcp' || proxy.type === 'udp') &&
      proxy.remote_port === undefined &&
      proxy.private !== true
    ) {
      ctx.addIssue({
        code: 'custom',
        path: ['remote_port'],
        message: `required for a ${proxy.type} proxy: its port on the server, or 0 for one the server picks (or private = true for one only visitors reach)`,
      });
    }
    if (
      (proxy.type === 'http' || proxy.type === 'tls' || proxy.type === 'tcpmux') &&
      !proxy.hosts?.length &&
      !proxy.subdomain
    ) {
      ctx.addIssue({
        code: 'custom',
        path: ['hosts'],
        message: `a ${proxy.type} proxy needs hosts or subdomain`,
      });
    }
    if (proxy.type === 'tls') {
      for (const [i, host] of (proxy.hosts ?? []).entries()) {
        const refusal = tlsNameRefusal(host);
        if (refusal) ctx.addIssue({ code: 'custom', path: ['hosts', i], message: refusal });
      }
    }
    if ((proxy.http_user === undefined) !== (proxy.http_password === undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: ['http_password'],
        message: 'http_user and http_password go together',
      });
    }
    for (const table of ['request_headers', 'response_headers'] as const) {
      for (const { field, message } of headerTableProblems(proxy[table] ?? {}))
        ctx.addIssue({ code: 'custom', path: field === undefined ? [table] : [table, field], message });
    }
    for (const name of Object.keys(proxy.request_headers ?? {})) {
      if (RESERVED_HEADERS.has(name.toLowerCase())) {
        ctx.addIssue({
          code: 'custom',
          path: ['request_headers', name],
          message: `cannot be set here${name.toLowerCase() === 'host' ? ' (use host_header_rewrite)' : ''}`,
        });
      }
    }
    for (const name of Object.keys(proxy.response_headers ?? {})) {
      const refusal = responseHeaderRefusal(name);
      if (refusal) ctx.addIssue({ code: 'custom', path: ['response_headers', name], message: refusal });
    }
    // The bounds of the server's register message: past them it would close the session, every proxy's.
    if (proxy.udp_idle_timeout !== undefined && proxy.udp_idle_timeout < UDP_IDLE_TIMEOUT_MIN_MS) {
      const least = formatDuration(UDP_IDLE_TIMEOUT_MIN_MS);
      ctx.addIssue({ code: 'custom', path: ['udp_idle_timeout'], message: `must be at least ${least}` });
    }
    if (proxy.udp_idle_timeout !== undefined && proxy.udp_idle_timeout > UDP_IDLE_TIMEOUT_MAX_MS) {
      const most = formatDuration(UDP_IDLE_TIMEOUT_MAX_MS);
      ctx.addIssue({ code: 'custom', path: ['udp_idle_timeout'], message: `must be at most ${most}` });
    }
  })
  .transform(({ local, remote_port, ...table }) => {
    // Checked above: a range here pairs. The table reads as its first port, with the pair beside it.
    const range = readPortRange({ ...table, local, remote_port });
    if (range === undefined || 'message' in range)
      return {
        ...table,
        local: local as ProxyLocal,
        remote_port: remote_port as number | undefined,
        port_range: undefined as PortRangePair | undefined,
      };
    const first = isLocalPortRange(local) ? firstLocal(local) : (local as ProxyLocal);
    return { ...table, local: first, remote_port: range.remote.at(0), port_range: range };
  });

/** A [[proxies]] table as validated; one with port ranges reads as its first port, its ranges in port_range. */
export type RawProxy = z.output<typeof proxySchema>;

/**
 * A socks5 or http-proxy proxy's keys. The server's public port is open to the internet (unless its
 * proxy_bind is loopback), so such a port without a password and without a list of destinations would be an
 * open proxy into the client's network: refused. With socks_no_auth, socks_allow must say where visitors may go.
 */
function checkSocks(
  proxy: Record<string, unknown> & { type: ProxyType; local: ProxyLocal },
  ctx: z.RefinementCtx,
): void {
  const issue = (key: string, message: string) => ctx.addIssue({ code: 'custom', path: [key], message });
  if (!isForwardProxyLocal(proxy.local)) {
    for (const key of SOCKS_KEYS)
      if (proxy[key] !== undefined)
        issue(key, 'applies to proxies with local = "socks5" or "http-proxy" only');
    return;
  }
  const local = proxy.local;
  if (proxy.type !== 'tcp') {
    issue('local', `"${local}" is for tcp proxies, not ${proxy.type}`);
    return;
  }
  if (proxy.proxy_protocol !== undefined)
    issue('proxy_protocol', `${aProxyWith(local)} has no one local service to send a PROXY header to`);
  // Its handshake is read off the tunnel stream itself, before any inflater could stand in between.
  if (proxy.compression === true) issue('compression', `${aProxyWith(local)} does not compress (yet)`);
  const passwords = [proxy.socks_password, proxy.socks_password_file].filter((v) => v !== undefined);
  if (passwords.length > 1) issue('socks_password', 'set socks_password or socks_password_file, not both');
  if ((proxy.socks_user === undefined) !== (passwords.length === 0))
    issue('socks_user', 'socks_user and socks_password (or socks_password_file) go together');
  // A private one has no port on the server: who reaches it is whoever its visitors let in.
  const reachedBy =
    proxy.private === true
      ? "every client whose token may visit it, and anyone who can connect to their visitors' ports"
      : undefined;
  if (proxy.socks_no_auth === true) {
    if (proxy.socks_user !== undefined)
      issue('socks_no_auth', 'set socks_user or socks_no_auth = true, not both');
    if (proxy.socks_allow === undefined)
      issue(
        'socks_allow',
        reachedBy
          ? `required with socks_no_auth = true: without a password, list the networks visitors may reach, or ${reachedBy} could use your whole network`
          : "required with socks_no_auth = true: without a password, list the networks visitors may reach, or anyone who finds the server's port could use your network as an open proxy",
      );
  } else if (proxy.socks_user === undefined) {
    issue(
      'socks_user',
      reachedBy
        ? `${aProxyWith(local)} needs socks_user and socks_password_file: this private one is reached by ${reachedBy} (or set socks_no_auth = true with socks_allow)`
        : `${aProxyWith(local)} needs socks_user and socks_password_file: its port on the server can be reached from the internet (or set socks_no_auth = true with socks_allow, e.g. on a server whose proxy_bind is 127.0.0.1)`,
    );
  }
}

/** A directory proxy's keys: dir: is for http and tcp proxies, and its own keys for it alone. */
function checkDirectory(
  proxy: Record<string, unknown> & { type: ProxyType; local: ProxyLocal },
  ctx: z.RefinementCtx,
): void {
  const issue = (key: string, message: string) => ctx.addIssue({ code: 'custom', path: [key], message });
  if (!isDirectoryLocal(proxy.local)) {
    for (const key of DIR_KEYS)
      if (proxy[key] !== undefined) issue(key, 'applies to proxies with local = "dir:PATH" only');
    return;
  }
  if (proxy.type !== 'http' && proxy.type !== 'tcp') {
    issue('local', `"dir:" is for http and tcp proxies (the client answers HTTP), not ${proxy.type}`);
    return;
  }
  if (proxy.proxy_protocol !== undefined)
    issue(
      'proxy_protocol',
      'a directory served by the client has no local service to send a PROXY header to',
    );
}

/**
 * local_tls: TLS from the client to one service at host:port, for tcp, tcpmux and http proxies (a tcpmux proxy
 * is a tcp proxy chosen by name: its local connection is made the same way), and tls proxies whose
 * terminate_tls ends the visitor's TLS here. Without it, a tls proxy passes the visitor's own TLS through, end
 * to end, so a second layer would be refused by the service.
 */
function checkLocalTls(
  proxy: { type: ProxyType; local: ProxyLocal; local_tls?: unknown; terminate_tls?: unknown },
  ctx: z.RefinementCtx,
): void {
  if (proxy.local_tls === undefined || proxy.local_tls === false) return;
  const issue = (message: string) => ctx.addIssue({ code: 'custom', path: ['local_tls'], message });
  if (proxy.type === 'tls' && proxy.terminate_tls === undefined) {
    issue(
      "a tls proxy passes the visitor's TLS through to the service untouched, so the service already speaks TLS with the visitor: leave local_tls out, or set terminate_tls to end the visitor's TLS on this client and speak TLS again to the service (frp's https2https)",
    );
    return;
  }
  if (proxy.type !== 'tcp' && proxy.type !== 'tcpmux' && proxy.type !== 'http' && proxy.type !== 'tls') {
    issue(`applies to tcp, tcpmux, http and tls (with terminate_tls) proxies, not ${proxy.type}`);
    return;
  }
  if (isForwardProxyLocal(proxy.local))
    issue(
      `${aProxyWith(proxy.local)} has no one local service to speak TLS to: its visitors choose where they go`,
    );
  else if (isDirectoryLocal(proxy.local))
    issue('a directory is served by the client itself: there is no local service to speak TLS to');
  else if (isUnixSocketAddress(proxy.local))
    issue('applies to a local service at "host:port", not a Unix socket');
}

/**
 * terminate_tls: the client ends the visitor's TLS and passes the plaintext to one local service (tcp and tls
 * proxies; the type itself is KEY_TYPES's to check).
 */
function checkTerminateTls(
  proxy: { type: ProxyType; local: ProxyLocal; terminate_tls?: unknown },
  ctx: z.RefinementCtx,
): void {
  if (proxy.terminate_tls === undefined) return;
  const issue = (message: string) => ctx.addIssue({ code: 'custom', path: ['terminate_tls'], message });
  if (isForwardProxyLocal(proxy.local))
    issue(
      `${aProxyWith(proxy.local)} is not supported with terminate_tls: use a local service at "host:port"`,
    );
  else if (isDirectoryLocal(proxy.local))
    issue('a directory proxy is not supported with terminate_tls: use a local service at "host:port"');
}

export interface ProxyConfig {
  name: string;
  type: ProxyType;
  /**
   * A Unix socket's path is absolute here (tcp, http and tls proxies only); "socks5" and "http-proxy" for tcp only; a
   * directory's path absolute too (http and tcp only).
   */
  local: ProxyLocal;
  /** tcp, udp: the public port on the server; 0 (PICKED_PORT): one the server picks. */
  remotePort?: number;
  /** tcp, udp: the address the server binds remotePort on; absent: its proxy_bind. */
  remoteBind?: string;
  /**
   * tcp, udp: a table with port ranges, as read (remotePort and local are its first pair's), which
   * expandPortRange makes one proxy per port of; the proxies that run never have it.
   */
  portRange?: PortRangePair;
  /** http, tls, tcpmux: hostnames (exact or "*.suffix") and/or a subdomain of the server's subdomain_host. */
  hosts?: string[];
  subdomain?: string;
  /** http: path prefixes served (longest wins at the server). */
  locations?: string[];
  /** http: basic auth; tcpmux: Proxy-Authorization on the CONNECT. Asked for by the server. */
  httpUser?: string;
  httpPassword?: string;
  hostHeaderRewrite?: string;
  requestHeaders?: Record<string, string>;
  /** http: set on every response of the service but a 101 (by the server, which must say it does). */
  responseHeaders?: Record<string, string>;
  /** tcp, tls, tcpmux: write a PROXY protocol header to the local service before the visitor's bytes. */
  proxyProtocol?: 'v1' | 'v2';
  /**
   * tcp, tls, tcpmux: visitor connections open at once; http: upgraded (WebSocket) connections open at once. The
   * server caps it with proxy_max_connections.
   */
  maxConnections?: number;
  /**
   * tcp, tls, tcpmux, http: the tunnel hop carries this proxy's bytes deflated (asked of the server, which
   * must know it; an older one runs it uncompressed).
   */
  compression?: boolean;
  /** udp: ms without datagrams before a flow ends (the server's setting when absent). */
  udpIdleTimeout?: number;
  maxFlows?: number;
  /** Bytes per second each way, for all its connections (or flows) together; applied here, not by the server. */
  bandwidthLimit?: BandwidthLimit;
  /** local = "socks5" or "http-proxy": who may use it and where to (the socks_* keys). */
  socks?: SocksSettings;
  /** local = "dir:PATH": how its files are served. */
  directory?: DirectorySettings;
  /** Its load-balancing group (proxies sharing one port or name). */
  group?: string;
  /** tcp, http, tls: the local service is checked; unhealthy, the proxy is withdrawn from the server. */
  healthCheck?: HealthCheckConfig;
  /** tcp: no public port; reached only by other clients' [[visitors]] as "CLIENT/NAME". */
  private?: boolean;
  /** tcp, tcpmux, http (and tls with terminateTls) with a host:port local: the client speaks TLS to the local service. */
  localTls?: LocalTls;
  /** tcp, tls: the client ends the visitor's TLS with this pair (read by the config loader). */
  terminateTls?: TerminateTls;
}

export interface DirectorySettings {
  /** "/static": URLs under it are served, the prefix taken off; others are 404. */
  stripPrefix?: string;
  /** Names starting with "." are listed and served (otherwise hidden: 404, left out of listings). */
  serveDotfiles: boolean;
  /** Symlinks leading out of the directory are followed (otherwise 404, left out of listings). */
  followOutsideSymlinks: boolean;
}

export interface SocksSettings {
  /** Absent with socks_no_auth = true. */
  credentials?: SocksCredentials;
  /** Destinations it may connect to; absent: any. */
  allow?: NetworkList;
  allowPorts?: PortRanges;
}

export function toProxyConfig(raw: RawProxy): ProxyConfig {
  const proxy: ProxyConfig = { name: raw.name, type: raw.type, local: raw.local };
  if (raw.remote_port !== undefined) proxy.remotePort = raw.remote_port;
  if (raw.remote_bind !== undefined) proxy.remoteBind = raw.remote_bind;
  if (raw.port_range !== undefined) proxy.portRange = raw.port_range;
  if (raw.hosts !== undefined) proxy.hosts = raw.hosts;
  if (raw.subdomain !== undefined) proxy.subdomain = raw.subdomain;
  if (raw.locations !== undefined) proxy.locations = raw.locations;
  if (raw.http_user !== undefined) proxy.httpUser = raw.http_user;
  if (raw.http_password !== undefined) proxy.httpPassword = raw.http_password;
  if (raw.host_header_rewrite !== undefined) proxy.hostHeaderRewrite = raw.host_header_rewrite;
  if (raw.request_headers !== undefined) proxy.requestHeaders = raw.request_headers;
  if (raw.response_headers !== undefined) proxy.responseHeaders = raw.response_headers;
  if (raw.proxy_protocol !== undefined) proxy.proxyProtocol = raw.proxy_protocol;
  if (raw.max_connections !== undefined) proxy.maxConnections = raw.max_connections;
  if (raw.compression === true) proxy.compression = true;
  if (raw.udp_idle_timeout !== undefined) proxy.udpIdleTimeout = raw.udp_idle_timeout;
  if (raw.max_flows !== undefined) proxy.maxFlows = raw.max_flows;
  if (raw.bandwidth_limit !== undefined) proxy.bandwidthLimit = raw.bandwidth_limit;
  if (raw.group !== undefined) proxy.group = raw.group;
  if (raw.health_check !== undefined) {
    const check = raw.health_check;
    proxy.healthCheck = {
      type: check.type,
      intervalMs: check.interval ?? HEALTH_CHECK_DEFAULTS.interval,
      timeoutMs: check.timeout ?? HEALTH_CHECK_DEFAULTS.timeout,
      maxFailed: check.max_failed ?? HEALTH_CHECK_DEFAULTS.max_failed,
      ...(check.path === undefined ? {} : { path: check.path }),
    };
  }
  if (raw.private === true) proxy.private = true;
  const localTls = toLocalTls(raw.local_tls);
  if (localTls) proxy.localTls = localTls;
  if (isForwardProxyLocal(raw.local)) {
    const socks: SocksSettings = {};
    // socks_password_file is read by the config loader, which knows where the file is.
    if (raw.socks_user !== undefined && raw.socks_password !== undefined)
      socks.credentials = { user: raw.socks_user, password: raw.socks_password };
    if (raw.socks_allow !== undefined) socks.allow = new NetworkList(raw.socks_allow);
    if (raw.socks_allow_ports !== undefined) socks.allowPorts = raw.socks_allow_ports;
    proxy.socks = socks;
  }
  if (isDirectoryLocal(raw.local)) {
    proxy.directory = {
      serveDotfiles: raw.serve_dotfiles ?? false,
      followOutsideSymlinks: raw.follow_outside_symlinks ?? false,
      ...(raw.strip_prefix === undefined ? {} : { stripPrefix: raw.strip_prefix }),
    };
  }
  return proxy;
}

/** What the server is told about a proxy at registration. */
export function proxySpecFields(proxy: ProxyConfig): ProxySpec {
  const spec: ProxySpec = { name: proxy.name, type: proxy.type };
  if (proxy.remotePort !== undefined) spec.remote_port = proxy.remotePort;
  if (proxy.remoteBind !== undefined) spec.remote_bind = proxy.remoteBind;
  if (proxy.hosts !== undefined) spec.hosts = proxy.hosts;
  if (proxy.subdomain !== undefined) spec.subdomain = proxy.subdomain;
  if (proxy.locations !== undefined) spec.locations = proxy.locations;
  if (proxy.httpUser !== undefined) spec.http_user = proxy.httpUser;
  if (proxy.httpPassword !== undefined) spec.http_password = proxy.httpPassword;
  if (proxy.hostHeaderRewrite !== undefined) spec.host_header_rewrite = proxy.hostHeaderRewrite;
  if (proxy.requestHeaders !== undefined) spec.request_headers = proxy.requestHeaders;
  if (proxy.responseHeaders !== undefined) spec.response_headers = proxy.responseHeaders;
  if (proxy.proxyProtocol !== undefined) spec.proxy_protocol = proxy.proxyProtocol;
  if (proxy.maxConnections !== undefined) spec.max_connections = proxy.maxConnections;
  if (proxy.compression) spec.compression = true;
  if (proxy.udpIdleTimeout !== undefined) spec.udp_idle_timeout_ms = proxy.udpIdleTimeout;
  if (proxy.maxFlows !== undefined) spec.max_flows = proxy.maxFlows;
  if (proxy.group !== undefined) spec.group = proxy.group;
  if (proxy.private) spec.private = true;
  return spec;
}

/**
 * The key a proxy's public port is unique under: tcp and udp ports are separate spaces. Proxies whose port
 * the server picks have none: it gives each its own.
 */
export function portKey(type: ProxyType, remotePort: number | undefined): string | undefined {
  return remotePort === undefined || remotePort === PICKED_PORT ? undefined : `${type}/${remotePort}`;
}

/** A tcp or udp proxy whose public port the server picks (remote_port = 0). */
export function picksPort(proxy: ProxyConfig): boolean {
  return proxy.remotePort === PICKED_PORT;
}
