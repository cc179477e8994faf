// One [[proxies]] table of client.toml: the keys each proxy type takes, their checks, and what the
// server is told at registration.
import {
  durationField,
  expected,
  formatDuration,
  HTTP_TOKEN,
  isUnixSocketAddress,
  type LocalAddress,
  PROXY_TYPES,
  type ProxySpec,
  type ProxyType,
  parseHostPattern,
  parseLocalAddress,
  parseSubdomain,
  positiveIntField,
  proxyNameSchema,
  tlsNameRefusal,
  UDP_IDLE_TIMEOUT_MAX_MS,
  UDP_IDLE_TIMEOUT_MIN_MS,
} from '@porthole/protocol';
import { z } from 'zod';

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

/** "host:port" or "unix:PATH" (a relative PATH is resolved later, where the config file is known). */
const localField = z
  .string({ error: expected('"host:port" or "unix:/path/to.sock"') })
  .transform((text, ctx): LocalAddress => {
    try {
      return parseLocalAddress(text);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });

const portField = z
  .number({ error: expected('a port number') })
  .int()
  .min(1)
  .max(65535);

/** Keys only some types take: [type that may use it, ...]. */
const KEY_TYPES: Record<string, readonly ProxyType[]> = {
  remote_port: ['tcp', 'udp'],
  hosts: ['http', 'tls'],
  subdomain: ['http', 'tls'],
  locations: ['http'],
  http_user: ['http'],
  http_password: ['http'],
  host_header_rewrite: ['http'],
  request_headers: ['http'],
  proxy_protocol: ['tcp', 'tls'],
  max_connections: ['tcp', 'tls', 'http'],
  udp_idle_timeout: ['udp'],
  max_flows: ['udp'],
};

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
    remote_port: portField.optional(),
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
    request_headers: z
      .record(
        z.string().regex(HTTP_TOKEN, 'must be an HTTP header name'),
        z.string({ error: expected('a header value') }).regex(/^[^\r\n]*$/, 'must be one line'),
        { error: expected('a table of header = "value"') },
      )
      .optional(),
    proxy_protocol: z.enum(['v1', 'v2'], { error: expected('"v1" or "v2"') }).optional(),
    max_connections: positiveIntField('a number of connections').max(1_000_000).optional(),
    udp_idle_timeout: durationField.optional(),
    max_flows: positiveIntField('a number of flows').max(1_000_000).optional(),
  })
  .superRefine((proxy, ctx) => {
    for (const [key, types] of Object.entries(KEY_TYPES)) {
      if ((proxy as Record<string, unknown>)[key] !== undefined && !types.includes(proxy.type)) {
        ctx.addIssue({
          code: 'custom',
          path: [key],
          message: `applies to ${listed(types)} proxies, not ${proxy.type}`,
        });
      }
    }
    if (proxy.type === 'udp' && isUnixSocketAddress(proxy.local)) {
      ctx.addIssue({
        code: 'custom',
        path: ['local'],
        message: 'a udp proxy cannot reach a Unix socket: give its service as "host:port"',
      });
    }
    if ((proxy.type === 'tcp' || proxy.type === 'udp') && proxy.remote_port === undefined) {
      ctx.addIssue({ code: 'custom', path: ['remote_port'], message: 'required' });
    }
    if ((proxy.type === 'http' || proxy.type === 'tls') && !proxy.hosts?.length && !proxy.subdomain) {
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
    for (const name of Object.keys(proxy.request_headers ?? {})) {
      if (RESERVED_HEADERS.has(name.toLowerCase())) {
        ctx.addIssue({
          code: 'custom',
          path: ['request_headers', name],
          message: `cannot be set here${name.toLowerCase() === 'host' ? ' (use host_header_rewrite)' : ''}`,
        });
      }
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
  });

export type RawProxy = z.output<typeof proxySchema>;

export interface ProxyConfig {
  name: string;
  type: ProxyType;
  /** A Unix socket's path is absolute here (tcp, http and tls proxies only). */
  local: LocalAddress;
  /** tcp, udp: the public port on the server. */
  remotePort?: number;
  /** http, tls: hostnames (exact or "*.suffix") and/or a subdomain of the server's subdomain_host. */
  hosts?: string[];
  subdomain?: string;
  /** http: path prefixes served (longest wins at the server). */
  locations?: string[];
  httpUser?: string;
  httpPassword?: string;
  hostHeaderRewrite?: string;
  requestHeaders?: Record<string, string>;
  /** tcp, tls: write a PROXY protocol header to the local service before the visitor's bytes. */
  proxyProtocol?: 'v1' | 'v2';
  /**
   * tcp, tls: visitor connections open at once; http: upgraded (WebSocket) connections open at once. The
   * server caps it with proxy_max_connections.
   */
  maxConnections?: number;
  /** udp: ms without datagrams before a flow ends (the server's setting when absent). */
  udpIdleTimeout?: number;
  maxFlows?: number;
}

export function toProxyConfig(raw: RawProxy): ProxyConfig {
  const proxy: ProxyConfig = { name: raw.name, type: raw.type, local: raw.local };
  if (raw.remote_port !== undefined) proxy.remotePort = raw.remote_port;
  if (raw.hosts !== undefined) proxy.hosts = raw.hosts;
  if (raw.subdomain !== undefined) proxy.subdomain = raw.subdomain;
  if (raw.locations !== undefined) proxy.locations = raw.locations;
  if (raw.http_user !== undefined) proxy.httpUser = raw.http_user;
  if (raw.http_password !== undefined) proxy.httpPassword = raw.http_password;
  if (raw.host_header_rewrite !== undefined) proxy.hostHeaderRewrite = raw.host_header_rewrite;
  if (raw.request_headers !== undefined) proxy.requestHeaders = raw.request_headers;
  if (raw.proxy_protocol !== undefined) proxy.proxyProtocol = raw.proxy_protocol;
  if (raw.max_connections !== undefined) proxy.maxConnections = raw.max_connections;
  if (raw.udp_idle_timeout !== undefined) proxy.udpIdleTimeout = raw.udp_idle_timeout;
  if (raw.max_flows !== undefined) proxy.maxFlows = raw.max_flows;
  return proxy;
}

/** What the server is told about a proxy at registration. */
export function proxySpecFields(proxy: ProxyConfig): ProxySpec {
  const spec: ProxySpec = { name: proxy.name, type: proxy.type };
  if (proxy.remotePort !== undefined) spec.remote_port = proxy.remotePort;
  if (proxy.hosts !== undefined) spec.hosts = proxy.hosts;
  if (proxy.subdomain !== undefined) spec.subdomain = proxy.subdomain;
  if (proxy.locations !== undefined) spec.locations = proxy.locations;
  if (proxy.httpUser !== undefined) spec.http_user = proxy.httpUser;
  if (proxy.httpPassword !== undefined) spec.http_password = proxy.httpPassword;
  if (proxy.hostHeaderRewrite !== undefined) spec.host_header_rewrite = proxy.hostHeaderRewrite;
  if (proxy.requestHeaders !== undefined) spec.request_headers = proxy.requestHeaders;
  if (proxy.proxyProtocol !== undefined) spec.proxy_protocol = proxy.proxyProtocol;
  if (proxy.maxConnections !== undefined) spec.max_connections = proxy.maxConnections;
  if (proxy.udpIdleTimeout !== undefined) spec.udp_idle_timeout_ms = proxy.udpIdleTimeout;
  if (proxy.maxFlows !== undefined) spec.max_flows = proxy.maxFlows;
  return spec;
}

/** The key a proxy's public port is unique under: tcp and udp ports are separate spaces. */
export function portKey(proxy: { type: ProxyType; remote_port?: number | undefined }): string | undefined {
  return proxy.remote_port === undefined ? undefined : `${proxy.type}/${proxy.remote_port}`;
}
