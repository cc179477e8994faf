// Which HTTP fields the proxy passes on and which belong to one hop: in heads (RFC 9110 7.6.1) and in the
// trailer section after a chunked body (RFC 9110 6.5).
import { validateHeaderName, validateHeaderValue } from 'node:http';

/** Headers that describe one hop, never forwarded (RFC 9110 7.6.1), plus ones we set ourselves. */
export const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authenticate',
  'proxy-authorization',
]);

/** Fields that frame or route a message: they mean nothing once the body is over (RFC 9110 6.5.1). */
const NOT_IN_TRAILERS = new Set([...HOP_BY_HOP, 'content-length', 'host']);

const NONE: readonly [string, string][] = [];

/** An http proxy's response_headers as the router applies them to each of the service's response heads. */
export interface ResponseFieldSet {
  /** The names set, lowercased: the service's fields of these names are left out (all their values). */
  names: ReadonlySet<string>;
  /** [name, value, ...] as the client spelt them, appended to the head. */
  fields: readonly string[];
}

/**
 * `response_headers` (names checked at registration) as the router takes them; undefined when there are
 * none, so that a proxy without them costs its responses nothing.
 */
export function responseFieldSetOf(
  headers: Record<string, string> | undefined,
): ResponseFieldSet | undefined {
  const entries = Object.entries(headers ?? {});
  if (entries.length === 0) return undefined;
  return { names: new Set(entries.map(([name]) => name.toLowerCase())), fields: entries.flat() };
}

export interface Trailers {
  /** the fields to pass on, as [name, value] pairs (what res.addTrailers takes) */
  fields: readonly [string, string][];
  /** fields left out: malformed, or framing and routing fields */
  dropped: number;
}

/** Sorts a trailer section (a flat [name, value, ...] list, as received) into what may be passed on. */
export function forwardableTrailers(raw: readonly string[]): Trailers {
  if (raw.length === 0) return { fields: NONE, dropped: 0 };
  const fields: [string, string][] = [];
  let dropped = 0;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!;
    const value = raw[i + 1]!;
    if (NOT_IN_TRAILERS.has(name.toLowerCase()) || !isValidField(name, value)) dropped += 1;
    else fields.push([name, value]);
  }
  return { fields, dropped };
}

/** Node's own checks, the ones res.addTrailers() would throw on. */
function isValidField(name: string, value: string): boolean {
  try {
    validateHeaderName(name);
    validateHeaderValue(name, value);
    return true;
  } catch {
    return false;
  }
}
