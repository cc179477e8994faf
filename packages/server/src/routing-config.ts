// The server.toml keys of hostname routing and UDP: subdomain_host, trusted_proxies, udp_*, [http],
// [https] and [tcpmux]. Kept apart from config.ts so that file only spreads these in.
import {
  ConfigError,
  durationAboveZero,
  durationAtLeast,
  durationOrOffField,
  expected,
  formatDuration,
  type HostPort,
  hostPortField,
  loadCertFiles,
  type PemPair,
  parseHostPattern,
  positiveIntField,
  UDP_IDLE_TIMEOUT_MIN_MS,
} from '@porthole/protocol';
import { z } from 'zod';
import { type AcmeSettings, acmeTableField, loadAcmeSettings } from './acme-config.js';
import { type ErrorPages, NO_ERROR_PAGES, readErrorPage } from './error-pages.js';
import type { HttpLimits } from './http-vhost-server.js';
import { type CertPair, TlsCertStore } from './tls-cert-store.js';
import { TrustedProxies } from './trusted-proxies.js';

/**
 * [http] max_header_size unless set: 32 KiB. Node's own 16 KiB refused (431) real requests that carry a big
 * session cookie or an SSO token; Go's net/http, and so frp, take 1 MiB. A held head may be this large, and
 * max_pending_connections' 4096 of them cost ~180 MiB at 32 KiB, twice that at 64 KiB: raised where needed.
 */
export const DEFAULT_MAX_HEADER_SIZE = 32 * 1024;

const hostnameField = z.string({ error: expected('a hostname') }).transform((text, ctx) => {
  try {
    const host = parseHostPattern(text);
    if (host.startsWith('*.')) throw new Error(`"${text}" must be a plain hostname, not a wildcard`);
    return host;
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});

const networksField = z
  .array(z.string(), { error: expected('a list of networks like ["10.0.0.0/8", "127.0.0.1"]') })
  .superRefine((networks, ctx) => {
    networks.forEach((network, i) => {
      try {
        TrustedProxies.check(network);
      } catch (err) {
        ctx.addIssue({ code: 'custom', path: [i], message: (err as Error).message });
      }
    });
  });

/** Spread into the server schema's top level. */
export const routingConfigShape = {
  subdomain_host: hostnameField.optional(),
  trusted_proxies: networksField.default([]),
  // The floor a client's own udp_idle_timeout has: 0 ended each flow at once, and its stream header was refused.
  udp_idle_timeout: durationAtLeast(
    UDP_IDLE_TIMEOUT_MIN_MS,
    formatDuration(UDP_IDLE_TIMEOUT_MIN_MS),
  ).prefault('60s'),
  udp_max_flows: positiveIntField('a number of flows').max(1_000_000).default(1024),
  http: z
    .strictObject(
      {
        listen: hostPortField({ allowZero: true }).optional(),
        headers_timeout: durationAboveZero('let a visitor trickle its headers for ever (slowloris)').prefault(
          '10s',
        ),
        request_timeout: durationOrOffField.prefault('0s'),
        response_timeout: durationOrOffField.prefault('60s'),
        // Not "no keep-alive" (nginx's keepalive_timeout 0): Node would keep idle connections for idle_timeout.
        keep_alive_timeout: durationAboveZero(
          'not turn keep-alive off but keep idle connections open until idle_timeout',
        ).prefault('5s'),
        idle_timeout: durationAboveZero(
          'let a visitor that stops reading hold its tunnel stream for good',
        ).prefault('60s'),
        max_header_size: positiveIntField('a number of bytes')
          .min(1024)
          .max(1024 * 1024)
          .default(DEFAULT_MAX_HEADER_SIZE),
        max_streams_per_proxy: positiveIntField('a number of streams').max(65_536).default(256),
        not_found_page: z.string({ error: expected('a file path') }).optional(),
        unavailable_page: z.string({ error: expected('a file path') }).optional(),
      },
      { error: expected('an [http] table') },
    )
    .optional(),
  https: z
    .strictObject(
      {
        listen: hostPortField({ allowZero: true }),
        default_host: hostnameField.optional(),
        // 0 timed out every ClientHello after 1 ms: check passed it and the port closed nearly every visitor.
        handshake_timeout: durationAboveZero(
          'close every connection whose ClientHello is not there within 1 ms',
        ).prefault('10s'),
        max_client_hello_size: positiveIntField('a number of bytes')
          .min(512)
          .max(64 * 1024)
          .default(16 * 1024),
        certs: z
          .array(
            z.strictObject({
              cert_file: z.string({ error: expected('a file path') }),
              key_file: z.string({ error: expected('a file path') }),
            }),
            { error: expected('[[https.certs]] tables with cert_file and key_file') },
          )
          .default([]),
        acme: acmeTableField,
      },
      { error: expected('an [https] table with listen') },
    )
    .optional(),
  tcpmux: z
    .strictObject(
      {
        listen: hostPortField({ allowZero: true }),
        handshake_timeout: durationAboveZero(
          'close every connection whose CONNECT request is not there within 1 ms',
        ).prefault('10s'),
      },
      { error: expected('a [tcpmux] table with listen') },
    )
    .optional(),
};

type RawRouting = z.output<z.ZodObject<typeof routingConfigShape>>;

export interface RoutingConfig {
  subdomainHost: string | undefined;
  trustedProxies: string[];
  udpIdleTimeout: number;
  udpMaxFlows: number;
  /** The plain HTTP vhost port; absent: none. */
  httpListen: HostPort | undefined;
  /** Limits for the http port and for connections the TLS port terminates. */
  httpLimits: HttpLimits;
  maxStreamsPerProxy: number;
  /** [http] not_found_page and unavailable_page, read in; a reload re-reads them. */
  errorPages: ErrorPages;
  https:
    | {
        listen: HostPort;
        defaultHost: string | undefined;
        handshakeTimeout: number;
        maxClientHelloSize: number;
        /** [[https.certs]] (and the control endpoint's [tls] certificate). */
        certs: TlsCertStore;
        /** [https.acme]: names whose certificates the server orders and renews itself. */
        acme?: AcmeSettings | undefined;
      }
    | undefined;
  /** The HTTP CONNECT port of tcpmux proxies; absent: none (tcpmux proxies are refused). */
  tcpmux: { listen: HostPort; handshakeTimeout: number } | undefined;
}

export function defaultRoutingConfig(): RoutingConfig {
  return {
    subdomainHost: undefined,
    trustedProxies: [],
    udpIdleTimeout: 60_000,
    udpMaxFlows: 1024,
    httpListen: undefined,
    httpLimits: {
      headersTimeout: 10_000,
      requestTimeout: 0,
      responseTimeout: 60_000,
      keepAliveTimeout: 5_000,
      idleTimeout: 60_000,
      maxHeaderSize: DEFAULT_MAX_HEADER_SIZE,
    },
    maxStreamsPerProxy: 256,
    errorPages: NO_ERROR_PAGES,
    https: undefined,
    tcpmux: undefined,
  };
}

/**
 * Turns the validated keys into a RoutingConfig, reading and checking certificate files; `tls` is the
 * [tls] pair (checked already). A certificate out of its dates is added to `warnings`.
 */
export function loadRoutingConfig(
  file: string,
  raw: RawRouting,
  tls: PemPair | undefined,
  warnings: string[],
): RoutingConfig {
  const config = defaultRoutingConfig();
  config.subdomainHost = raw.subdomain_host;
  config.trustedProxies = raw.trusted_proxies;
  config.udpIdleTimeout = raw.udp_idle_timeout;
  config.udpMaxFlows = raw.udp_max_flows;
  if (raw.http) {
    config.httpListen = raw.http.listen;
    const requestTimeout = raw.http.request_timeout;
    if (requestTimeout !== 0 && requestTimeout < raw.http.headers_timeout) {
      throw ConfigError.at(file, 'http.request_timeout', 'must not be shorter than http.headers_timeout');
    }
    config.httpLimits = {
      headersTimeout: raw.http.headers_timeout,
      requestTimeout,
      responseTimeout: raw.http.response_timeout,
      keepAliveTimeout: raw.http.keep_alive_timeout,
      idleTimeout: raw.http.idle_timeout,
      maxHeaderSize: raw.http.max_header_size,
    };
    config.maxStreamsPerProxy = raw.http.max_streams_per_proxy;
    const pageAt = (key: 'not_found_page' | 'unavailable_page') => {
      const path = raw.http?.[key];
      return path === undefined ? undefined : readErrorPage(file, `http.${key}`, path);
    };
    const notFound = pageAt('not_found_page');
    const unavailable = pageAt('unavailable_page');
    if (notFound || unavailable) config.errorPages = { notFound, unavailable };
  }
  if (raw.https) {
    const pairs: CertPair[] = raw.https.certs.map((files, i) => ({
      ...loadCertFiles(file, `https.certs[${i}]`, files, warnings),
      source: `https.certs[${i}]`,
    }));
    if (tls) pairs.push({ ...tls, source: 'tls' });
    let certs: TlsCertStore;
    try {
      certs = new TlsCertStore(pairs);
    } catch (err) {
      const message = (err as Error).message;
      const key = /^(https\.certs\[\d+\]|tls)/.exec(message)?.[1] ?? 'https.certs';
      throw ConfigError.at(file, key, message.slice(key.length + 2) || message);
    }
    config.https = {
      listen: raw.https.listen,
      defaultHost: raw.https.default_host,
      handshakeTimeout: raw.https.handshake_timeout,
      maxClientHelloSize: raw.https.max_client_hello_size,
      certs,
      acme:
        raw.https.acme === undefined
          ? undefined
          : loadAcmeSettings(file, raw.https.acme, raw.http?.listen !== undefined),
    };
  }
  if (raw.tcpmux) {
    config.tcpmux = { listen: raw.tcpmux.listen, handshakeTimeout: raw.tcpmux.handshake_timeout };
  }
  return config;
}
