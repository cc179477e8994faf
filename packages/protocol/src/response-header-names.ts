// Which response fields an http proxy's response_headers may set. The server owns the fields that describe
// its own connection to the visitor or frame the body it passes on: a value set for them would not dress the
// service's answer, it would break the exchange. The client's config check and the server's register check
// both ask here, so a hand-written register is refused as a config file is.

const HOP_BY_HOP =
  "a hop-by-hop field: it describes the server's own connection to the visitor, which the server manages";
const FRAMING = 'it frames the body, which the server frames itself as it passes the body on';

const SERVER_OWNED = new Map<string, string>([
  ['connection', HOP_BY_HOP],
  ['keep-alive', HOP_BY_HOP],
  ['te', HOP_BY_HOP],
  ['trailer', HOP_BY_HOP],
  ['upgrade', HOP_BY_HOP],
  ['transfer-encoding', FRAMING],
  ['content-length', FRAMING],
  [
    'content-encoding',
    'it says how the body is coded, and the body is passed on as the service coded it: another value would leave it unreadable',
  ],
  ['content-range', 'it says which bytes a partial (206) body holds, which only the service knows'],
]);

/**
 * Why `name` cannot be one of response_headers' fields (case-insensitive), or undefined when it can. Every
 * Proxy-* field is refused too (Proxy-Authenticate, Proxy-Connection: hop-by-hop).
 */
export function responseHeaderRefusal(name: string): string | undefined {
  const lower = name.toLowerCase();
  const why = lower.startsWith('proxy-') ? HOP_BY_HOP : SERVER_OWNED.get(lower);
  return why === undefined ? undefined : `cannot be set here: ${why}`;
}
