import type { IncomingMessage } from 'node:http';
import { requestHostIsLoopback } from './host-names.js';

/** What an admin endpoint answers a request it does not serve: status, the JSON body's error, extra headers. */
export interface AdminRefusal {
  status: number;
  error: string;
  headers: Record<string, string>;
}

/** A request to an admin endpoint: the path it asks for, or the refusal it gets before any route. */
export type ScreenedAdminRequest = { path: string } | { refusal: AdminRefusal };

/**
 * The rules both programs' admin endpoints share, before their routes: GET and HEAD only, except POST to
 * `postPaths` (and only POST there); /healthz for any Host (a health check may name the machine); any other
 * path on a loopback listener only for a loopback Host, so that a web page that rebinds its own name to
 * 127.0.0.1 gets neither the data nor a chance to guess a token (`ssh -L` keeps the Host loopback). A POST
 * must say `Content-Type: application/json`: a web page may send a form or text to 127.0.0.1 from any
 * origin, but JSON only after a CORS preflight, which these endpoints never answer.
 */
export function screenAdminRequest(
  req: Pick<IncomingMessage, 'method' | 'url' | 'headers'>,
  loopbackOnly: boolean,
  postPaths: readonly string[] = [],
): ScreenedAdminRequest {
  let path: string;
  try {
    path = new URL(req.url ?? '/', 'http://admin').pathname;
  } catch {
    return { refusal: { status: 400, error: 'bad request', headers: {} } };
  }
  const allowed = postPaths.includes(path) ? ['POST'] : ['GET', 'HEAD'];
  if (!allowed.includes(req.method ?? ''))
    return { refusal: { status: 405, error: 'method not allowed', headers: { Allow: allowed.join(', ') } } };
  if (path !== '/healthz' && loopbackOnly && !requestHostIsLoopback(req.headers.host))
    return { refusal: { status: 421, error: 'Host must be a loopback name or address', headers: {} } };
  if (req.method === 'POST' && !/^application\/json\s*(;|$)/i.test(req.headers['content-type'] ?? ''))
    return { refusal: { status: 415, error: 'Content-Type must be application/json', headers: {} } };
  return { path };
}
