// The HTTP CONNECT request a tcpmux visitor opens with (RFC 9110 9.3.6), parsed strictly (the reading and the
// request-line and field syntax are @porthole/protocol's readRequestHead and parseRequestHead), since the
// name it carries picks the service the bytes after it reach.
import {
  badRequest,
  isRefusedRequest,
  normalizeRequestHost,
  parseConnectTarget,
  parseRequestHead,
  type RefusedRequest,
} from '@porthole/protocol';

/** A CONNECT head is a line and a few fields; 8 KiB leaves room for a long Proxy-Authorization. */
export const MAX_CONNECT_HEAD_BYTES = 8 * 1024;

export interface ConnectRequest {
  /** The target's host, normalized for the route lookup ("nas.example.com"). */
  name: string;
  /** The target as the visitor wrote it ("nas.example.com:22"): the port is not used for routing. */
  authority: string;
  /** The Proxy-Authorization field's value, if one came. */
  proxyAuthorization: string | undefined;
}

/**
 * The routed parts of a complete head (as readRequestHead gave it), or why it is refused: 405 for another
 * method; 400 for what parseRequestHead refuses, a target not in authority form, and two Host or
 * Proxy-Authorization fields or a Host naming another host than the target (one request would name two
 * services).
 */
export function parseConnectHead(head: Buffer): ConnectRequest | RefusedRequest {
  const request = parseRequestHead(head);
  if (isRefusedRequest(request)) return request;
  const { method, target } = request;
  if (method !== 'CONNECT') return { status: 405, reason: `method ${method.slice(0, 16)}, not CONNECT` };
  const name = parseConnectTarget(target)?.name;
  if (name === undefined) return badRequest('the CONNECT target is not host:port');
  const fields = new Map<string, string>();
  for (const { key, value } of request.fields) {
    if ((key === 'host' || key === 'proxy-authorization') && fields.has(key))
      return badRequest(`more than one ${key === 'host' ? 'Host' : 'Proxy-Authorization'} field`);
    fields.set(key, value);
  }
  const host = fields.get('host');
  if (host !== undefined && normalizeRequestHost(host) !== name)
    return badRequest('Host names another host than the CONNECT target');
  return { name, authority: target, proxyAuthorization: fields.get('proxy-authorization') };
}
