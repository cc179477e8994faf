// What an http request names: the host it is routed by, which is also the host the local service receives.
// Read once here, so that routing, the auth check and the forwarded request agree: Node keeps the first of
// several Host fields in req.headers, while the raw fields the request is forwarded from hold them all.
import { normalizeRequestHost } from '@porthole/protocol';

export interface RequestTarget {
  /** The Host the service receives (and its X-Forwarded-Host) as the visitor wrote it; '' when none came. */
  host: string;
  /** `host` normalized for the route lookup; undefined when it names nothing routable. */
  name: string | undefined;
}

/** Why a request is answered 400 before it is routed. */
export interface RefusedTarget {
  refused: string;
}

/** Every value of the field `lower` in a raw [name, value, ...] list, in order. */
function fieldValues(raw: readonly string[], lower: string): string[] {
  const values: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) if (raw[i]!.toLowerCase() === lower) values.push(raw[i + 1]!);
  return values;
}

/**
 * The host a request is routed by, or why it is refused. Two Host fields are (RFC 9112 3.2): routed by
 * the first and forwarded with the last, a request would pass one name's auth and reach another's service.
 */
export function readRequestTarget(rawHeaders: readonly string[]): RequestTarget | RefusedTarget {
  const hosts = fieldValues(rawHeaders, 'host');
  if (hosts.length > 1) return { refused: 'more than one Host header' };
  const host = (hosts[0] ?? '').trim();
  return { host, name: normalizeRequestHost(host) };
}
