// Where a request for a served directory leads, read from its target alone (the file system is asked
// later): percent-decoded once, segment by segment, and refused when it could leave the directory or name
// what is hidden. Nothing is normalized for the visitor: "/a/../b" is refused, not read as "/b".

export interface RequestedPath {
  /** The decoded names below the directory, in order (strip_prefix taken off). */
  segments: string[];
  /** The target ended in "/" (a directory's URL; without it, a directory is redirected to it). */
  trailingSlash: boolean;
}

export interface PathRefusal {
  status: 400 | 404;
  reason: string;
}

export interface PathOptions {
  /** "/static": the target must start with these segments, which are taken off. */
  stripPrefix?: string | undefined;
  serveDotfiles: boolean;
}

/** The path of a request target: origin-form "/a/b?q", or absolute-form "http://host/a/b" (a tcp proxy's). */
export function targetPath(target: string): string | undefined {
  if (target.startsWith('/')) return target.replace(/[?#].*$/s, '');
  const absolute = /^https?:\/\/[^/?#]*(\/[^?#]*)?/i.exec(target);
  return absolute ? (absolute[1] ?? '/') : undefined;
}

export function requestedPath(target: string, opts: PathOptions): RequestedPath | PathRefusal {
  const path = targetPath(target);
  if (path === undefined) return { status: 400, reason: 'not a path' };
  const raw = path.split('/').slice(1);
  const segments: string[] = [];
  for (const piece of raw) {
    let name: string;
    try {
      name = decodeURIComponent(piece);
    } catch {
      return { status: 400, reason: 'bad percent-encoding' };
    }
    if (name.includes('\0')) return { status: 400, reason: 'a NUL byte in the path' };
    // Not resolved: a visitor has no business above the directory, whatever the path comes back to.
    if (name === '..') return { status: 400, reason: 'a ".." segment' };
    if (name.includes('/')) return { status: 404, reason: 'a "/" inside a name (%2F)' };
    if (name === '' || name === '.') continue;
    segments.push(name);
  }
  const prefix = opts.stripPrefix === undefined ? [] : opts.stripPrefix.split('/').slice(1);
  if (prefix.some((name, i) => segments[i] !== name))
    return { status: 404, reason: `outside strip_prefix ${opts.stripPrefix}` };
  const below = segments.slice(prefix.length);
  if (!opts.serveDotfiles && below.some((name) => name.startsWith('.')))
    return { status: 404, reason: 'a hidden name (serve_dotfiles is off)' };
  return { segments: below, trailingSlash: raw.at(-1) === '' };
}

/**
 * The URL of the directory at `segments` under `stripPrefix`, ending in "/", each name percent-encoded: safe
 * in a Location header (never "//host", whatever the request's path was).
 */
export function directoryUrl(segments: readonly string[], stripPrefix: string | undefined): string {
  return `${stripPrefix ?? ''}/${segments.map((name) => `${encodeURIComponent(name)}/`).join('')}`;
}
