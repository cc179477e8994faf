// The path an http request is routed by. A location decides which proxy serves a request and whether basic
// auth guards it, so routing must read the path the way a local service may: "//admin/x", "/%61dmin/x",
// "/\admin/x", "/admin%2Fx" and "/x/../admin/x" all reach /admin at a service that merges slashes or
// decodes escapes, and "/admin;v=1/x" and "/x/..;/admin/x" at one that drops ";parameters" from each
// segment before it resolves dot segments (Tomcat, Jetty, Spring): all must meet /admin's auth here. The
// request line itself is forwarded unchanged (an absolute-form target in its origin-form, see
// splitAbsoluteForm).

const ESCAPE = /%([0-9A-Fa-f]{2})/g;
const SLASHES = /[/\\]+/g;
/** A segment's parameters (RFC 2396 3.3): from ";" to the end of the segment. */
const SEGMENT_PARAMETERS = /;[^/\\]*/g;
/** "http://authority/path?query": the authority ends at the first "/", "?" or "#". */
const ABSOLUTE_FORM = /^https?:\/\/([^/?#]*)(.*)$/is;

/**
 * Characters RFC 3986 lets a normalizer decode, plus the two that a service may take for a slash, and ";",
 * which a service behind a proxy that decodes paths before passing them on receives as a parameter start.
 */
function decodedForRouting(code: number): boolean {
  return (
    (code >= 0x41 && code <= 0x5a) || // A-Z
    (code >= 0x61 && code <= 0x7a) || // a-z
    (code >= 0x30 && code <= 0x39) || // 0-9
    code === 0x2d || // -
    code === 0x2e || // .
    code === 0x5f || // _
    code === 0x7e || // ~
    code === 0x2f || // /
    code === 0x5c || // backslash
    code === 0x3b // ;
  );
}

function decodeEscape(sequence: string, hex: string): string {
  const code = Number.parseInt(hex, 16);
  return decodedForRouting(code) ? String.fromCharCode(code) : sequence.toUpperCase();
}

/**
 * An absolute-form target ("http://app.example.com:8080/a?q", what proxies are sent) as its authority and
 * its origin-form ("/a?q"; "/" when it has no path); undefined for any other form.
 */
export function splitAbsoluteForm(target: string): { authority: string; originForm: string } | undefined {
  const match = ABSOLUTE_FORM.exec(target);
  if (!match) return undefined;
  const rest = match[2]!;
  return { authority: match[1]!, originForm: rest.startsWith('/') ? rest : `/${rest}` };
}

/**
 * The normalized path of a request target (origin-form "/a/b?q" or absolute-form "http://h/a/b"):
 * escapes of unreserved characters, of slashes and of ";" decoded, other escapes uppercased, ";parameters"
 * dropped from each segment (so "..;" is ".."), backslashes and runs of slashes made one "/", dot segments
 * resolved. Anything else (such as "*") routes as "/".
 */
export function routingPath(target: string | undefined): string {
  if (target === undefined) return '/';
  const origin = target.startsWith('/') ? target : splitAbsoluteForm(target)?.originForm;
  if (origin === undefined) return '/';
  const end = origin.search(/[?#]/);
  let path = end < 0 ? origin : origin.slice(0, end);
  path = path.replace(ESCAPE, decodeEscape).replace(SEGMENT_PARAMETERS, '').replace(SLASHES, '/');
  // One leading slash now, so URL cannot read the path as an authority; it resolves "." and "..".
  try {
    return new URL(path, 'http://x').pathname;
  } catch {
    return '/';
  }
}

/**
 * Whether a request target asks for the control endpoint at `controlPath`, the one rule for every port
 * that serves it. Both are read as routingPath reads them: a proxy in front (nginx, Caddy) picks its location
 * by the normalized path and forwards the target as it came, so "//_porthole" or "/%5Fporthole" that it sent
 * here as the control path must be the control path here too; the vhost ports must not route them to an
 * http proxy either. The path guards nothing (the token does), so reading it loosely lets nothing in.
 */
export function isControlPath(target: string | undefined, controlPath: string): boolean {
  return routingPath(target) === routingPath(controlPath);
}
