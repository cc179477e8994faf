// Servers with vhost ports ([http], [https]) and clients with udp/http/tls proxies, from real TOML files;
// tokens with host grants; certificates made with openssl in the test's temp dir.
import { readFile, writeFile } from 'node:fs/promises';
import type { Harness, LogLine, Proc } from './processes.js';
import { clientBin, freePort, run, runOk, serverBin } from './processes.js';
import { waitUntilAccepting } from './services.js';
import {
  adminTableLines,
  portOf,
  type RunningServer,
  type ServerConfigFile,
  type ServerOptions,
  startServer,
  writeSecret,
} from './tunnel.js';

export type TomlScalar = string | number | boolean | string[];
/** An object is an inline table (`health_check = { type = "tcp", max_failed = 3 }`). */
export type TomlValue = TomlScalar | Record<string, string | number | boolean>;

let serial = 0;
function unique(prefix: string): string {
  serial += 1;
  return `${prefix}-${serial}`;
}

function tomlValue(value: TomlValue): string {
  if (Array.isArray(value)) return `[${value.map((s) => JSON.stringify(s)).join(', ')}]`;
  if (typeof value === 'object') {
    return `{ ${Object.entries(value)
      .map(([k, v]) => `${JSON.stringify(k)} = ${JSON.stringify(v)}`)
      .join(', ')} }`;
  }
  return JSON.stringify(value);
}

/** key = value lines (inline tables for objects); undefined values are left out. */
export function tomlLines(entries: Record<string, TomlValue | undefined>): string {
  return Object.entries(entries)
    .filter((e): e is [string, TomlValue] => e[1] !== undefined)
    .map(([k, v]) => `${k} = ${tomlValue(v)}`)
    .join('\n');
}

export interface CertFiles {
  cert: string;
  key: string;
}

/** A self-signed certificate (EC P-256) in the harness dir: CN=`commonName`, with these `-addext` extensions. */
export async function makeSelfSigned(
  h: Harness,
  commonName: string,
  extensions: string[],
): Promise<CertFiles> {
  const id = unique('self-signed');
  const cert = h.path(`${id}.pem`);
  const key = h.path(`${id}.key`);
  await runOk('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    key,
    '-out',
    cert,
    '-days',
    '2',
    '-subj',
    `/CN=${commonName}`,
    ...extensions.flatMap((e) => ['-addext', e]),
  ]);
  return { cert, key };
}

/**
 * The SHA-256 fingerprint of a certificate (its file, or its PEM) as `openssl x509 -noout -fingerprint -sha256`
 * prints it, the README's way: "sha256 Fingerprint=AB:CD:...".
 */
export async function certificateFingerprint(cert: { file: string } | { pem: string }): Promise<string> {
  const source = 'file' in cert ? ['-in', cert.file] : [];
  const input = 'pem' in cert ? { input: cert.pem } : {};
  return (await runOk('openssl', ['x509', ...source, '-noout', '-fingerprint', '-sha256'], input)).trim();
}

/**
 * The certificate a TLS listener on 127.0.0.1:`port` serves for `servername` (undefined: a handshake without
 * SNI), as `openssl s_client -showcerts` receives it: the first PEM certificate it printed.
 */
export async function servedCertificate(port: number, servername: string | undefined): Promise<string> {
  const sni = servername === undefined ? ['-noservername'] : ['-servername', servername];
  const { out } = await sClient(['-connect', `127.0.0.1:${port}`, ...sni, '-showcerts']);
  const pem = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n?/.exec(out)?.[0];
  if (!pem) throw new Error(`openssl s_client got no certificate from port ${port}: ${out}`);
  return pem;
}

/** A private CA in the harness dir. */
export function makeCa(h: Harness, name = 'porthole test CA'): Promise<CertFiles> {
  return makeSelfSigned(h, name, [
    'basicConstraints=critical,CA:TRUE',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

/** A server certificate that vouches for itself (no CA), for the DNS name `name`. */
export function makeSelfSignedCert(h: Harness, name: string): Promise<CertFiles> {
  return makeSelfSigned(h, name, [`subjectAltName=DNS:${name}`]);
}

/** `openssl s_server` on 127.0.0.1:`port` with `pair`: "-www" answers any GET with 200, "-rev" reverses lines. */
export async function startSServer(h: Harness, pair: CertFiles, mode: '-www' | '-rev'): Promise<number> {
  const port = await freePort();
  h.spawn(`s_server${mode}`, 'openssl', [
    's_server',
    mode,
    '-accept',
    `127.0.0.1:${port}`,
    '-cert',
    pair.cert,
    '-key',
    pair.key,
  ]);
  await waitUntilAccepting({ host: '127.0.0.1', port }, `openssl s_server ${mode}`);
  return port;
}

/** `openssl s_client` with stdin as input; returns everything it printed. */
export async function sClient(args: string[], input = ''): Promise<{ code: number | null; out: string }> {
  const r = await run('openssl', ['s_client', ...args], { timeoutMs: 15_000, input });
  return { code: r.code, out: `${r.stdout}\n${r.stderr}` };
}

/** A server certificate signed by `ca`, subject CN=`commonName`, for the DNS names `names`. */
export async function makeCert(
  h: Harness,
  ca: CertFiles,
  commonName: string,
  names: string[],
): Promise<CertFiles> {
  const id = unique('cert');
  const key = h.path(`${id}.key`);
  const csr = h.path(`${id}.csr`);
  const cert = h.path(`${id}.pem`);
  const ext = await h.file(
    `${id}.ext`,
    `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`,
  );
  await runOk('openssl', [
    'req',
    '-new',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    key,
    '-out',
    csr,
    '-subj',
    `/CN=${commonName}`,
  ]);
  await runOk('openssl', [
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    ca.cert,
    '-CAkey',
    ca.key,
    '-CAcreateserial',
    '-out',
    cert,
    '-days',
    '2',
    '-extfile',
    ext,
  ]);
  return { cert, key };
}

export interface RoutedServerOptions {
  allowPorts?: string[];
  /** Top-level keys: subdomain_host, trusted_proxies, udp_idle_timeout, udp_max_flows... */
  top?: Record<string, TomlValue | undefined>;
  /** The [http] table; listen defaults to 127.0.0.1:0. `false`: no [http] table. */
  http?: Record<string, TomlValue | undefined> | false;
  /** The [https] table (listen defaults to 127.0.0.1:0) and its [[https.certs]]. */
  https?: { certs: CertFiles[]; keys?: Record<string, TomlValue | undefined> };
  /** The [tcpmux] table (listen defaults to 127.0.0.1:0). */
  tcpmux?: Record<string, TomlValue | undefined>;
  /** The control endpoint's own [tls] certificate. */
  tls?: CertFiles;
  /** An [admin] table (JSON API and /metrics); the server's `adminUrl` says where. */
  admin?: ServerOptions['admin'];
  logLevel?: string;
  name?: string;
  /** Run inside this network namespace. */
  netns?: string;
  /** More tables, as TOML text, at the end of the file ([[plugins]]...). */
  tables?: string[];
}

export interface RoutedServer extends RunningServer {
  httpPort: number | undefined;
  httpsPort: number | undefined;
  tcpmuxPort: number | undefined;
}

export async function startRoutedServer(h: Harness, opts: RoutedServerOptions = {}): Promise<RoutedServer> {
  const secretFile = await writeSecret(h);
  const parts = [
    tomlLines({
      listen: '127.0.0.1:0',
      proxy_bind: '127.0.0.1',
      allow_ports: opts.allowPorts ?? ['1024-65535'],
      shutdown_timeout: '2s',
      log_level: opts.logLevel ?? 'info',
      ...opts.top,
    }),
    '[auth]',
    tomlLines({ secret_file: secretFile }),
  ];
  if (opts.http !== false) parts.push('[http]', tomlLines({ listen: '127.0.0.1:0', ...opts.http }));
  if (opts.https) {
    parts.push('[https]', tomlLines({ listen: '127.0.0.1:0', ...opts.https.keys }));
    for (const pair of opts.https.certs) {
      parts.push('[[https.certs]]', tomlLines({ cert_file: pair.cert, key_file: pair.key }));
    }
  }
  if (opts.tcpmux) parts.push('[tcpmux]', tomlLines({ listen: '127.0.0.1:0', ...opts.tcpmux }));
  if (opts.tls) parts.push('[tls]', tomlLines({ cert_file: opts.tls.cert, key_file: opts.tls.key }));
  parts.push(...(await adminTableLines(h, opts.admin)), ...(opts.tables ?? []), '');
  const configPath = await h.file(`${unique('server')}.toml`, parts.join('\n'));
  const config: ServerConfigFile = {
    configPath,
    secretFile,
    options: {
      allowPorts: opts.allowPorts ?? [],
      ...(opts.admin ? { admin: opts.admin } : {}),
      ...(opts.netns ? { netns: opts.netns } : {}),
    },
  };
  const running = await startServer(h, config, opts.name ?? 'server');
  const httpLine = running.proc.logsWithMsg('http listening')[0];
  const httpsLine = running.proc.logsWithMsg('https listening')[0];
  const tcpmuxLine = running.proc.logsWithMsg('tcpmux listening')[0];
  return {
    ...running,
    httpPort: httpLine ? portOf(httpLine.addr) : undefined,
    httpsPort: httpsLine ? portOf(httpsLine.addr) : undefined,
    tcpmuxPort: tcpmuxLine ? portOf(tcpmuxLine.addr) : undefined,
  };
}

/** `porthole-server token issue` with port and host grants. */
export async function issueRoutedToken(
  server: RunningServer,
  token: { name: string; ports?: string; hosts?: string[]; bandwidthLimit?: string },
): Promise<string> {
  const args = ['token', 'issue', '--config', server.config.configPath, '--name', token.name];
  if (token.ports !== undefined) args.push('--ports', token.ports);
  if (token.hosts !== undefined) args.push('--hosts', token.hosts.join(','));
  if (token.bandwidthLimit !== undefined) args.push('--bandwidth-limit', token.bandwidthLimit);
  return (await runOk(serverBin, args, { timeoutMs: 20_000 })).trim();
}

/** One [[proxies]] table: name, type, local and any other keys. */
export type RoutedProxy = {
  name: string;
  type: 'tcp' | 'udp' | 'http' | 'tls' | 'tcpmux';
  local: string;
} & Record<string, TomlValue>;

export interface RoutedClientOptions {
  server: string;
  token: string;
  proxies: RoutedProxy[];
  caFile?: string;
  logLevel?: string;
  name?: string;
  /** [admin] listen of the client (loopback), for `porthole-client status`. */
  adminListen?: string;
  /** Wait for these proxies' "proxy registered" (default: all of them); [] to return at once. */
  waitFor?: string[];
  /** Run inside this network namespace. */
  netns?: string;
  /** More top-level keys (proxy, exit_on_auth_failure...). */
  keys?: Record<string, TomlValue | undefined>;
  /** Environment variables of the client process (https_proxy...). */
  env?: Record<string, string>;
}

export interface RoutedClient {
  proc: Proc;
  configPath: string;
  /** proxy name -> its "proxy registered" log line */
  registered: Map<string, LogLine>;
}

export async function startRoutedClient(h: Harness, opts: RoutedClientOptions): Promise<RoutedClient> {
  const tokenFile = await h.file(unique('token'), `${opts.token}\n`);
  const parts = [
    tomlLines({
      server: opts.server,
      token_file: tokenFile,
      ca_file: opts.caFile,
      reconnect_initial: '200ms',
      reconnect_max: '2s',
      log_level: opts.logLevel ?? 'info',
      ...opts.keys,
    }),
  ];
  if (opts.adminListen !== undefined) parts.push('', '[admin]', tomlLines({ listen: opts.adminListen }));
  for (const proxy of opts.proxies) parts.push('', '[[proxies]]', tomlLines(proxy));
  parts.push('');
  const configPath = await h.file(`${unique('client')}.toml`, parts.join('\n'));
  const proc = h.spawn(opts.name ?? 'client', clientBin, ['--config', configPath], {
    netns: opts.netns,
    ...(opts.env ? { env: opts.env } : {}),
  });
  const registered = new Map<string, LogLine>();
  for (const name of opts.waitFor ?? opts.proxies.map((p) => p.name)) {
    registered.set(name, await proc.waitForMsg('proxy registered', 15_000, { fields: { proxy: name } }));
  }
  return { proc, configPath, registered };
}

/** Overwrites a routed client's [[proxies]] (its other settings kept); then SIGHUP it to reload. */
export async function rewriteRoutedClientProxies(configPath: string, proxies: RoutedProxy[]): Promise<void> {
  const text = await readFile(configPath, 'utf8');
  const first = text.indexOf('\n[[proxies]]');
  const parts = [first < 0 ? text.trimEnd() : text.slice(0, first)];
  for (const proxy of proxies) parts.push('', '[[proxies]]', tomlLines(proxy));
  parts.push('');
  await writeFile(configPath, parts.join('\n'));
}

export interface AppTunnelOptions {
  /** The token's (and so the client's) name. */
  client: string;
  /** The http proxy's name (default "app"). */
  proxy?: string;
  /** More keys of the http proxy (max_connections...). */
  proxyKeys?: Record<string, TomlValue>;
  server?: RoutedServerOptions;
  /** The client process's name in the logs. */
  clientProcess?: string;
}

/** A routed server and a client whose one http proxy serves app.test from `backendPort`. */
export async function startAppTunnel(
  h: Harness,
  backendPort: number,
  opts: AppTunnelOptions,
): Promise<{ server: RoutedServer; client: RoutedClient; token: string }> {
  const server = await startRoutedServer(h, opts.server);
  const token = await issueRoutedToken(server, { name: opts.client, hosts: ['app.test'] });
  const client = await startRoutedClient(h, {
    server: server.url,
    token,
    ...(opts.clientProcess === undefined ? {} : { name: opts.clientProcess }),
    proxies: [
      {
        name: opts.proxy ?? 'app',
        type: 'http',
        local: `127.0.0.1:${backendPort}`,
        hosts: ['app.test'],
        ...opts.proxyKeys,
      },
    ],
  });
  return { server, client, token };
}

export interface UdpTunnelOptions {
  /** The token's (and so the client's) name. */
  client: string;
  /** The one udp proxy: its name, local and any other keys; its remote_port is a free port picked here. */
  proxy: { name: string; local: string } & Record<string, TomlValue>;
  server?: RoutedServerOptions;
  /** [admin] listen of the client (loopback), for `porthole-client status`. */
  adminListen?: string;
  /** Run the server and the client inside this network namespace. */
  netns?: string;
}

/** A routed server and a client whose one udp proxy listens on `remotePort`, a free port. */
export async function startUdpTunnel(
  h: Harness,
  opts: UdpTunnelOptions,
): Promise<{ server: RoutedServer; client: RoutedClient; token: string; remotePort: number }> {
  const remotePort = await freePort();
  const server = await startRoutedServer(h, { ...opts.server, netns: opts.netns });
  const token = await issueRoutedToken(server, { name: opts.client, ports: String(remotePort) });
  const client = await startRoutedClient(h, {
    server: server.url,
    token,
    netns: opts.netns,
    ...(opts.adminListen === undefined ? {} : { adminListen: opts.adminListen }),
    proxies: [{ ...opts.proxy, type: 'udp', remote_port: remotePort }],
  });
  return { server, client, token, remotePort };
}
