// Which HTTP or SOCKS5 proxy the client dials the server through (a corporate network's way out): the
// config's `proxy` (or --proxy), else the environment's, read as curl reads it.
import { BlockList, isIP } from 'node:net';

/** An HTTP CONNECT or SOCKS5 proxy; SOCKS5 is always given the server's name, for the proxy to resolve. */
export interface DialProxy {
  kind: 'http' | 'socks5';
  /** A name or an IP address (an IPv6 one without brackets). */
  host: string;
  port: number;
  /** Basic for HTTP, RFC 1929 for SOCKS5. */
  credentials?: { user: string; password: string };
}

/** The proxy and where it came from ("config", "--proxy", "env HTTPS_PROXY"), for the start line. */
export interface ChosenProxy {
  proxy: DialProxy;
  from: string;
  /** proxy_password_file, resolved, when the password came from it: a reload names the key that changed. */
  passwordFile?: string;
}

/** The value of `proxy` (and --proxy) that turns off the environment's proxy. */
export const NO_DIAL_PROXY = 'none';

/** RFC 1929 carries a user name and a password in at most 255 bytes each. */
const MAX_SOCKS_CREDENTIAL_BYTES = 255;

const DEFAULT_PORTS = { http: 80, socks5: 1080 } as const;
/** The ports proxies usually listen on (squid's 3128), for examples in complaints. */
const USUAL_PORTS = { http: 3128, socks5: 1080 } as const;

export const PROXY_URL_EXAMPLE = '"http://proxy.corp:3128" or "socks5://proxy.corp:1080"';

/**
 * Reads a proxy URL; throws an Error whose message is a config reason and never holds the URL (its password).
 * `assumeHttp`: a value without a scheme ("proxy.corp:3128") is http://, as curl takes it from the environment.
 */
export function parseProxyUrl(text: string, assumeHttp = false): DialProxy {
  // "http//host:port" would read as a URL-less value, or from the environment as a proxy named "http".
  const colonless = /^(https?|socks5h?)\/\//i.exec(text);
  if (colonless) throw new Error(`"${colonless[1]}//" lacks its colon: write "${colonless[1]}://"`);
  const withScheme = assumeHttp && !/^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? `http://${text}` : text;
  if (!URL.canParse(withScheme)) throw new Error(`must be a URL like ${PROXY_URL_EXAMPLE}`);
  const url = new URL(withScheme);
  const scheme = url.protocol.slice(0, -1).toLowerCase();
  let kind: DialProxy['kind'];
  if (scheme === 'http') kind = 'http';
  // curl's socks5 resolves the name itself and socks5h asks the proxy to; here both ask the proxy, which is
  // what a network that lets nothing out but its proxy needs (and what chisel and frp do).
  else if (scheme === 'socks5' || scheme === 'socks5h') kind = 'socks5';
  else if (scheme === 'https')
    throw new Error(
      'an https:// proxy (TLS to the proxy itself) is not supported: use http:// (a wss:// server stays encrypted end to end through the CONNECT)',
    );
  else throw new Error(`${scheme}:// is not a proxy scheme porthole speaks: ${PROXY_URL_EXAMPLE}`);
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (host === '') throw new Error(`names no host: ${PROXY_URL_EXAMPLE}`);
  if ((url.pathname !== '' && url.pathname !== '/') || url.search !== '' || url.hash !== '')
    throw new Error(`must not have a path or query: ${PROXY_URL_EXAMPLE}`);
  if (url.port === '0')
    throw new Error(
      `names port 0: give the port the proxy listens on ("${kind}://proxy.corp:${USUAL_PORTS[kind]}")`,
    );
  const proxy: DialProxy = { kind, host, port: url.port === '' ? DEFAULT_PORTS[kind] : Number(url.port) };
  if (url.username !== '' || url.password !== '') {
    const user = decodePercents(url.username);
    const password = decodePercents(url.password);
    if (user === '') throw new Error('has a password without a user ("user:password@")');
    proxy.credentials = { user, password };
  }
  return proxy;
}

/** A URL's user or password as written, its "%XX" decoded; the complaint never holds it. */
function decodePercents(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new Error('its user or password is not valid percent-encoding: write a "%" in it as %25');
  }
}

/** Refuses credentials SOCKS5 cannot carry, naming which. */
export function checkSocksCredentials(proxy: DialProxy): void {
  if (proxy.kind !== 'socks5' || !proxy.credentials) return;
  for (const [what, value] of Object.entries(proxy.credentials))
    if (Buffer.byteLength(value) > MAX_SOCKS_CREDENTIAL_BYTES)
      throw new Error(
        `the ${what} is over ${MAX_SOCKS_CREDENTIAL_BYTES} bytes, the most SOCKS5 (RFC 1929) carries`,
      );
}

/** The proxy as log lines and `status` show it: scheme, host and port, never the credentials. */
export function describeDialProxy(proxy: DialProxy): string {
  const host = isIP(proxy.host) === 6 ? `[${proxy.host}]` : proxy.host;
  return `${proxy.kind}://${host}:${proxy.port}`;
}

/** The first of `names` set (and not empty) in `env`, with its name. */
function firstSet(
  env: NodeJS.ProcessEnv,
  names: readonly string[],
): { name: string; value: string } | undefined {
  for (const name of names) {
    const value = env[name]?.trim();
    if (value) return { name, value };
  }
  return undefined;
}

/**
 * Whether no_proxy's `list` leaves `host` out: "*" for every host; an entry matches the host itself and
 * the names under it ("example.com" and ".example.com" both match vps.example.com); an IP address only
 * itself, a range ("10.0.0.0/8") the addresses in it. Case does not matter; a port in an entry is ignored, as curl ignores it.
 */
export function noProxyExcludes(list: string, host: string): boolean {
  const target = host
    .toLowerCase()
    .replace(/^\[(.*)\]$/, '$1')
    .replace(/\.$/, '');
  for (const raw of list.split(/[\s,]+/)) {
    let entry = raw.trim().toLowerCase();
    if (entry === '') continue;
    if (entry === '*') return true;
    if (isIP(target) !== 0 && inAddressRange(entry, target)) return true;
    entry = entry.startsWith('[') ? entry.replace(/^\[(.*)\](:\d+)?$/, '$1') : entry.replace(/:\d+$/, '');
    entry = entry.replace(/^\*?\./, '').replace(/\.$/, '');
    if (isIP(target) !== 0 || isIP(entry) !== 0) {
      if (entry === target) return true;
    } else if (target === entry || target.endsWith(`.${entry}`)) return true;
  }
  return false;
}

/** Whether `entry` is an address range ("10.0.0.0/8", "fd00::/8", as curl takes them) holding the IP `target`. */
function inAddressRange(entry: string, target: string): boolean {
  const range = /^\[?([^\]/]+)\]?\/(\d{1,3})$/.exec(entry);
  if (!range) return false;
  const [, network = '', bits] = range;
  const family = isIP(network);
  if (family === 0 || family !== isIP(target) || Number(bits) > (family === 4 ? 32 : 128)) return false;
  const list = new BlockList();
  const type = family === 4 ? 'ipv4' : 'ipv6';
  list.addSubnet(network, Number(bits), type);
  return list.check(target, type);
}

/** What the environment says of a proxy for `server`: one to use, one no_proxy excluded, or nothing. */
export type EnvironmentProxy =
  | { proxy: DialProxy; from: string }
  | { excludedBy: string; from: string }
  | undefined;

/**
 * The proxy the environment names for a ws:// or wss:// `server`, as curl picks it: https_proxy for wss://
 * (a TLS connection), http_proxy for ws://, then all_proxy, each lower case first; no_proxy leaves the
 * server's host out. Throws ("HTTPS_PROXY: reason", never its value) when the chosen one cannot be read.
 */
export function proxyFromEnvironment(server: string, env: NodeJS.ProcessEnv = process.env): EnvironmentProxy {
  const url = new URL(server);
  const scheme = url.protocol === 'wss:' ? ['https_proxy', 'HTTPS_PROXY'] : ['http_proxy', 'HTTP_PROXY'];
  const chosen = firstSet(env, [...scheme, 'all_proxy', 'ALL_PROXY']);
  if (!chosen) return undefined;
  const from = `env ${chosen.name}`;
  const noProxy = firstSet(env, ['no_proxy', 'NO_PROXY']);
  if (noProxy && noProxyExcludes(noProxy.value, url.hostname)) return { excludedBy: noProxy.name, from };
  try {
    const proxy = parseProxyUrl(chosen.value, true);
    checkSocksCredentials(proxy);
    return { proxy, from };
  } catch (err) {
    throw new Error(
      `${chosen.name}: ${(err as Error).message}; proxy = "none" in the config (or --proxy none) ignores it`,
    );
  }
}
