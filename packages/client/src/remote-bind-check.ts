// A proxy with remote_bind, registered with a server older than remote_bind: that server drops the field and
// binds its proxy_bind, which may be every interface when the user asked for loopback only. The client
// finds out from the address the server reports (the register_result's remote_addr, each stream's
// public_addr) and serves nothing bound elsewhere than asked.
import { parseBindAddress, parseHostPort } from '@porthole/protocol';
import type { ProxyConfig } from './proxy-config.js';

/**
 * Why the server's `boundAt` ("0.0.0.0:8080", as it reports a proxy's public address) is not where
 * `proxy` asked to be bound, or undefined when it is (or the proxy asked for no address).
 */
export function boundElsewhere(proxy: ProxyConfig, boundAt: string | undefined): string | undefined {
  if (proxy.remoteBind === undefined) return undefined;
  let host: string | undefined;
  try {
    host = boundAt === undefined ? undefined : parseBindAddress(parseHostPort(boundAt).host);
  } catch {}
  if (host === proxy.remoteBind) return undefined;
  return `the server bound it on ${boundAt ?? 'an address it did not say'}, not on remote_bind ${proxy.remoteBind}: it is older than remote_bind and binds its proxy_bind only, so this proxy is not served there`;
}
