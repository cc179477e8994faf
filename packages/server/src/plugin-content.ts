// What porthole knows, in the fields frp's plugin protocol (doc/server_plugin.md) gives them, so that a
// plugin written for frps reads it unchanged. Secrets (the token, http_password) are never sent.
import type { ProxySpec } from '@porthole/protocol';

/** frp's "user" object: which client, its metadata, and the session (frp's run_id). */
export interface PluginUser {
  user: string;
  metas: Readonly<Record<string, string>>;
  run_id: string;
}

/** frp's name for a proxy's type: a tls proxy is frp's https (routed by SNI, passed through), a private one stcp/sudp. */
export function frpProxyType(spec: Pick<ProxySpec, 'type' | 'private'>): string {
  if (spec.private) return spec.type === 'udp' ? 'sudp' : 'stcp';
  return spec.type === 'tls' ? 'https' : spec.type;
}

/** Login: at sign-in. frp's hostname, os, arch and privilege_key are not known here (empty). */
export function loginContent(
  user: PluginUser,
  client: { version: string; address: string },
): Record<string, unknown> {
  return {
    version: client.version,
    hostname: '',
    os: '',
    arch: '',
    user: user.user,
    timestamp: Math.floor(Date.now() / 1000),
    privilege_key: '',
    run_id: user.run_id,
    pool_count: 0,
    metas: user.metas,
    client_address: client.address,
  };
}

/** NewProxy: at registration, with what the client asked for (remote_port 0: the server picks). */
export function newProxyContent(user: PluginUser, spec: ProxySpec): Record<string, unknown> {
  const content: Record<string, unknown> = {
    user,
    proxy_name: spec.name,
    proxy_type: frpProxyType(spec),
    use_encryption: false,
    use_compression: spec.compression === true,
    bandwidth_limit: '',
    bandwidth_limit_mode: '',
    group: spec.group ?? '',
    group_key: '',
    metas: {},
  };
  if (spec.type === 'tcp' || spec.type === 'udp') content.remote_port = spec.remote_port ?? 0;
  if (spec.type === 'http' || spec.type === 'tls' || spec.type === 'tcpmux') {
    content.custom_domains = spec.hosts ?? [];
    content.subdomain = spec.subdomain ?? '';
  }
  if (spec.type === 'http') {
    content.locations = spec.locations ?? [];
    content.http_user = spec.http_user ?? '';
    content.host_header_rewrite = spec.host_header_rewrite ?? '';
    content.headers = spec.request_headers ?? {};
  }
  if (spec.type === 'tcpmux') content.multiplexer = 'httpconnect';
  return content;
}

/** NewUserConn: a visitor's connection (for an http proxy, each request and each upgrade). */
export function newUserConnContent(
  user: PluginUser,
  spec: Pick<ProxySpec, 'name' | 'type' | 'private'>,
  remoteAddr: string,
): Record<string, unknown> {
  return { user, proxy_name: spec.name, proxy_type: frpProxyType(spec), remote_addr: remoteAddr };
}

/** CloseProxy: a proxy no longer served (unregistered, its client gone, closed by the server's rules). */
export function closeProxyContent(user: PluginUser, proxyName: string): Record<string, unknown> {
  return { user, proxy_name: proxyName };
}
