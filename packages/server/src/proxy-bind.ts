// Where a tcp or udp proxy's public port is bound: the server's proxy_bind, or the address its client asked
// for (remote_bind, ssh -R's bind_address) when allow_bind lets it. Ports stay owned per port, whatever the
// address: the kernel refuses 0.0.0.0:8080 while 127.0.0.1:8080 is bound anyway, and one owner per port keeps
// "in use by another client" meaning what it says.
import { type ProxySpec, parseBindAddress } from '@porthole/protocol';
import type { ServerConfig } from './config.js';

type BindPolicy = Pick<ServerConfig, 'proxyBind' | 'allowBind'>;

/** The address to bind this proxy's port on (check remoteBindRefusal first). */
export function bindAddressOf(config: BindPolicy, spec: ProxySpec): string {
  return spec.remote_bind === undefined ? config.proxyBind : parseBindAddress(spec.remote_bind);
}

/** The proxy's remote_bind when it is another address than proxy_bind, for status and the admin API. */
export function customBindOf(config: BindPolicy, spec: ProxySpec): string | undefined {
  if (spec.remote_bind === undefined) return undefined;
  const address = bindAddressOf(config, spec);
  return address === sameSpelling(config.proxyBind) ? undefined : address;
}

/** Why this proxy may not be bound where it asks, or undefined. */
export function remoteBindRefusal(config: BindPolicy, spec: ProxySpec): string | undefined {
  if (spec.remote_bind === undefined) return undefined;
  if (spec.type !== 'tcp' && spec.type !== 'udp')
    return `remote_bind applies to tcp and udp proxies, not ${spec.type} (those share the server's [http] and [https] ports)`;
  let address: string;
  try {
    address = parseBindAddress(spec.remote_bind);
  } catch (err) {
    return `remote_bind: ${(err as Error).message}`;
  }
  const allowed = [sameSpelling(config.proxyBind), ...config.allowBind];
  if (allowed.includes(address)) return undefined;
  const others = config.allowBind.filter((a) => a !== allowed[0]);
  return others.length === 0
    ? `remote_bind ${address} is not allowed: this server binds proxies on its proxy_bind (${config.proxyBind}) only (its allow_bind names no other address)`
    : `remote_bind ${address} is not allowed: this server binds proxies on ${[config.proxyBind, ...others].join(', ')} (proxy_bind and allow_bind)`;
}

/** proxy_bind in the spelling remote_bind is compared in; a host name as it is. */
function sameSpelling(proxyBind: string): string {
  try {
    return parseBindAddress(proxyBind);
  } catch {
    return proxyBind;
  }
}
