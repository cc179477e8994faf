// What an http request names: the host it is routed by and the target it asks for, which are also what the
// local service receives. Read once here, so that routing, the auth check and the forwarded request agree:
// Node keeps the first of several Host fields in req.headers, while the raw fields the request is forwarded
// from hold them all; and an absolute-form target names its own host, which an origin server must use
// instead of Host (RFC 9112 3.2.2).
import { normalizeRequestHost } from '@porthole/protocol';
import { splitAbsoluteForm } from './request-path.js';

export interface RequestTarget {
  /** The Host the service receives (and its X-Forwarded-Host) as the visitor wrote it; '' when none came. */
  host: string;
  /** `host` normalized for the route lookup; undefined when there is none. */
  name: string | undefined;
  /** The request target the service receives: origin-form ("/path?query"), or "*". */
  target: string;
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
 * The host and target of a request (`url` as Node read the request line), or why it is refused. Refused
 * (RFC 9112 3.2): two Host fields, which routed by the first and forwarded with the last would pass one
 * name's auth and reach another's service; a Host that is not host[:port], which a service may read another
 * name in ("app.example.com:x@evil"); and a target in neither origin nor absolute form ("ftp://...",
 * "x/../admin"), which a service may resolve to a path other than the one routed.
 */
export function readRequestTarget(
  url: string | undefined,
  rawHeaders: readonly string[],
): RequestTarget | RefusedTarget {
  const hosts = fieldValues(rawHeaders, 'host');
  if (hosts.length > 1) return { refused: 'more than one Host header' };
  const field = (hosts[0] ?? '').trim();
  // Empty, Host names nothing (so the request finds no route); anything else must be a host[:port].
  const name = field === '' ? undefined : normalizeRequestHost(field);
  if (field !== '' && name === undefined) return { refused: 'Host is not host[:port]' };
  const target = url ?? '/';
  const absolute = splitAbsoluteForm(target);
  if (absolute) {
    const authority = normalizeRequestHost(absolute.authority);
    if (authority === undefined) return { refused: "the target's authority is not host[:port]" };
    // Routed by the name the service will read (Host is replaced by it), sent the way services expect.
    return { host: absolute.authority, name: authority, target: absolute.originForm };
  }
  if (!target.startsWith('/') && target !== '*')
    return { refused: 'target in neither origin nor absolute form' };
  return { host: field, name, target };
}
