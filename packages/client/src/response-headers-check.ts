// A proxy with response_headers, registered with a server older than response_headers: that server drops
// the field and passes the service's answers as they are, without the headers (HSTS, X-Frame-Options...)
// the user asked for at the tunnel. A server that sets them says so in the register_result and on each of
// the proxy's streams; without that word the client gives the proxy back and serves none of its visitors.
import type { ProxyConfig } from './proxy-config.js';

const NOT_APPLIED =
  'the server does not set response_headers (it is older than response_headers), so this proxy is not served without them';

/**
 * Why `proxy` may not be served when the server said `applied` (a register_result's or a stream header's
 * `response_headers`), or undefined when it may (or the proxy has none).
 */
export function responseHeadersUnapplied(
  proxy: ProxyConfig,
  applied: boolean | undefined,
): string | undefined {
  return proxy.responseHeaders !== undefined && applied !== true ? NOT_APPLIED : undefined;
}
