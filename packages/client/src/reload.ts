import type { ProxySpec } from '@porthole/protocol';
import type { ClientConfig, ProxyConfig } from './config.js';

export interface ProxyDiff {
  /** In the new config only: register. */
  added: string[];
  /** In the old config only: unregister. */
  removed: string[];
  /**
   * What the server sees changed (type, remote_port...): unregister, then register again. Also an http
   * proxy's local address or local_tls: the server keeps its tunnel streams alive between requests, and only
   * a new registration lets those to the old service go.
   */
  changed: string[];
  /**
   * The local address (or local_tls) changed on a proxy whose listener the server keeps (nothing else
   * changed, or `samePort`): new connections go to the new address; a udp proxy's open flows end.
   */
  localChanged: string[];
  /**
   * Of `changed`: tcp and udp proxies that keep their remote_port. Registered again without an unregister
   * first, so the server keeps their listener and takes the new spec on it: closing the port and binding it
   * again refused (or reset) the visitors that came in between, and lost a udp proxy's datagrams.
   */
  samePort: string[];
}

/**
 * What a reload changed, by name: the `config reloaded` line's fields and the answer to
 * `porthole-client reload`. dial_proxy_changed names keys ("proxy", "proxy_password_file"), never values.
 */
export interface ReloadSummary {
  added: string[];
  removed: string[];
  changed: string[];
  local_changed: string[];
  visitors_added: string[];
  visitors_removed: string[];
  visitors_changed: string[];
  bandwidth_limit_changed: string[];
  dial_proxy_changed: string[];
  /** A new server, token or CA: the session is dialled again. */
  reconnect: boolean;
}

function sameSpec(a: ProxySpec, b: ProxySpec): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * A tcp or udp proxy on the same remote_port and address: the server can give it a new spec on the listener
 * it has. One whose remote_bind changed is bound again on the new address.
 */
function keepsPort(old: ProxyConfig, next: ProxyConfig): boolean {
  return (
    old.type === next.type &&
    (next.type === 'tcp' || next.type === 'udp') &&
    old.remotePort === next.remotePort &&
    old.remoteBind === next.remoteBind
  );
}

/**
 * Where and how a proxy reaches its local service: the address, local_tls's settings (a new ca_file's
 * contents too) and terminate_tls's (a renewed certificate or key too), which apply from the next connection
 * as a new address does.
 */
function localKey(proxy: ProxyConfig): string {
  return JSON.stringify([proxy.local, proxy.localTls, proxy.terminateTls]);
}

/** Compares the running proxies with a new config's, by name. */
export function diffProxies(
  running: ReadonlyMap<string, ProxyConfig>,
  next: readonly ProxyConfig[],
  specOf: (proxy: ProxyConfig) => ProxySpec,
): ProxyDiff {
  const diff: ProxyDiff = { added: [], removed: [], changed: [], localChanged: [], samePort: [] };
  const nextNames = new Set(next.map((p) => p.name));
  for (const name of running.keys()) if (!nextNames.has(name)) diff.removed.push(name);
  for (const proxy of next) {
    const old = running.get(proxy.name);
    if (!old) diff.added.push(proxy.name);
    else if (!sameSpec(specOf(old), specOf(proxy))) {
      diff.changed.push(proxy.name);
      if (keepsPort(old, proxy)) {
        diff.samePort.push(proxy.name);
        if (localKey(old) !== localKey(proxy)) diff.localChanged.push(proxy.name);
      }
    } else if (localKey(old) !== localKey(proxy))
      (proxy.type === 'http' ? diff.changed : diff.localChanged).push(proxy.name);
  }
  return diff;
}

function sameBuffer(a: Buffer | undefined, b: Buffer | undefined): boolean {
  return a === undefined || b === undefined ? a === b : a.equals(b);
}

/** A new server URL, token or CA means a new session (the token names the client and its grants). */
export function needsReconnect(running: ClientConfig, next: ClientConfig): boolean {
  return running.server !== next.server || running.token !== next.token || !sameBuffer(running.ca, next.ca);
}

/**
 * A new dial proxy (or its password, or none where there was one): while the server is not reached, the
 * refusals' backoff was about the old one, so the new is worth a dial at once.
 */
export function dialProxyChanged(running: ClientConfig, next: ClientConfig): boolean {
  return JSON.stringify(running.dialProxy?.proxy) !== JSON.stringify(next.dialProxy?.proxy);
}

/**
 * Which of the dial proxy's keys a reload changed, for the `config reloaded` line: "proxy" (another proxy,
 * user or inline password, or none: the environment's or a direct dial), "proxy_password_file" (another
 * file, or a new password in it). Compared whole, the passwords are never shown.
 */
export function changedDialProxyKeys(running: ClientConfig, next: ClientConfig): string[] {
  const route = (config: ClientConfig) => {
    const chosen = config.dialProxy;
    if (!chosen) return JSON.stringify({ direct: config.directBecause ?? '' });
    const { credentials, ...where } = chosen.proxy;
    return JSON.stringify({ ...where, user: credentials?.user, from: chosen.from });
  };
  const password = (config: ClientConfig) => config.dialProxy?.proxy.credentials?.password;
  // The password written in `proxy` itself; one read from proxy_password_file is that key's.
  const inline = (config: ClientConfig) => (config.dialProxy?.passwordFile ? undefined : password(config));
  const before = running.dialProxy?.passwordFile;
  const after = next.dialProxy?.passwordFile;
  const keys: string[] = [];
  if (route(running) !== route(next) || inline(running) !== inline(next)) keys.push('proxy');
  if (before !== after || (before !== undefined && password(running) !== password(next)))
    keys.push('proxy_password_file');
  return keys;
}
