// `local = "dir:PATH"`: the client answers HTTP/1.1 itself with the files under a directory (frp's
// static_file plugin). One HTTP server per client, listening nowhere: each tunnel stream's connection is
// handed to it. GET and HEAD only; files streamed with backpressure (a 100 GiB file costs what a 1 KiB one
// does), Range (one range), If-Modified-Since, index.html or a listing; nothing outside the directory, and
// nothing hidden, is served unless the proxy's keys say so.
import { createReadStream, type Dirent, type Stats } from 'node:fs';
import { type FileHandle, open, readdir, realpath, stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join, relative, sep } from 'node:path';
import type { Duplex } from 'node:stream';
import { pipeline } from 'node:stream';
import type { Logger } from '@porthole/protocol';
import { readRange } from './byte-range.js';
import { contentTypeOf } from './content-types.js';
import { LISTING_CSP, type ListedEntry, listingHtml } from './directory-listing.js';
import { directoryUrl, type RequestedPath, requestedPath, targetPath } from './directory-path.js';
import { type DirectorySettings, isDirectoryLocal, type ProxyConfig } from './proxy-config.js';

/** A connection without a byte either way for this long is closed (a visitor that went quiet mid-request). */
const IDLE_TIMEOUT_MS = 60_000;
/**
 * Between requests a connection waits this long for the next. Longer than the server's 15 s for its idle
 * tunnel streams, so an http proxy's streams are closed by the server, which knows when it is about to reuse one.
 */
const KEEP_ALIVE_TIMEOUT_MS = 30_000;
/** The longest request path a log line carries. */
const LOGGED_PATH_CHARS = 1024;
/**
 * Largest request head an `http` proxy's requests may bring: the server's [http] max_header_size has already
 * held them to its limit (at most 1 MiB), so ours must not be the smaller one, plus room for the fields the
 * server adds (X-Forwarded-*, request_headers). Node's 16 KiB default refused 24 KiB of cookie with 431
 * that the server's 32 KiB default had let through.
 */
const HTTP_PROXY_MAX_HEADER_SIZE = 1024 * 1024 + 64 * 1024;
/**
 * Largest request head on a `tcp` proxy, where nothing stands in front: the server's own default for its
 * [http] port, so a head that passes there passes here, and one held unfinished costs no more.
 */
const TCP_PROXY_MAX_HEADER_SIZE = 32 * 1024;

/** Whose connection a served stream is: the fields of its request lines. */
export interface DirectoryVisit {
  proxy: string;
  conn: number | undefined;
  /** The visitor of the stream (an http proxy's stream carries many visitors' requests: see visitorOf). */
  remoteAddr: string;
  /** A private proxy's stream: the client that visits it. */
  visitor?: string;
}

/** An answer of our own, not a file: the status, and why (for the log line). */
class Refusal extends Error {
  constructor(
    readonly status: number,
    reason: string,
  ) {
    super(reason);
  }
}

/** What a request's line counts: body bytes sent, and why an answer under way was cut short. */
interface Tally {
  sent(bytes: number): void;
  failed(reason: string): void;
}

/** A file or directory found for a request, by its real path. */
interface Found {
  real: string;
  stats: Stats;
}

export class DirectoryServer {
  /** By proxy type: only the head size they take differs (see HTTP_PROXY_MAX_HEADER_SIZE). */
  private readonly servers: Record<'http' | 'tcp', Server>;
  private readonly visits = new WeakMap<Duplex, DirectoryVisit>();

  constructor(
    /** The running proxies, read per request: a reload's new strip_prefix applies to the next request. */
    private readonly proxies: ReadonlyMap<string, ProxyConfig>,
    private readonly logger: Logger,
  ) {
    this.servers = {
      http: this.createHttpServer(HTTP_PROXY_MAX_HEADER_SIZE),
      tcp: this.createHttpServer(TCP_PROXY_MAX_HEADER_SIZE),
    };
  }

  private createHttpServer(maxHeaderSize: number): Server {
    const http = createServer({ maxHeaderSize }, (req, res) => void this.answer(req, res));
    // A visitor's FIN after its request (`printf 'GET / ...' | nc`) still gets the answer.
    (http as Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
    http.timeout = IDLE_TIMEOUT_MS;
    http.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
    // Node's own answer destroys the connection right after writing it, which here would cut the answer off.
    http.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      const visit = this.visits.get(socket);
      this.logger.debug({ proxy: visit?.proxy, conn: visit?.conn, reason: err.message }, 'bad http request');
      const status =
        err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
      if (socket.writable) socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      else socket.destroy();
    });
    return http;
  }

  /** Answers the HTTP requests that arrive on `end` (one end of an in-process connection to a tunnel stream). */
  serve(end: Duplex, visit: DirectoryVisit): void {
    this.visits.set(end, visit);
    const type = this.proxies.get(visit.proxy)?.type === 'http' ? 'http' : 'tcp';
    this.servers[type].emit('connection', end);
  }

  private async answer(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    const visit = this.visits.get(req.socket as Duplex);
    const proxy = visit && this.proxies.get(visit.proxy);
    const path = (targetPath(req.url ?? '') ?? req.url ?? '').slice(0, LOGGED_PATH_CHARS);
    let bytes = 0;
    let reason: string | undefined;
    res.on('close', () => {
      this.logger.info(
        {
          proxy: visit?.proxy,
          conn: visit?.conn,
          remote_addr: visit && visitorOf(req, proxy, visit),
          ...(visit?.visitor === undefined ? {} : { visitor: visit.visitor }),
          method: req.method,
          path,
          status: res.headersSent ? res.statusCode : undefined,
          bytes_out: bytes,
          ms: Math.round(performance.now() - started),
          reason: reason ?? (res.writableFinished ? 'done' : 'visitor closed early'),
        },
        'file request',
      );
    });
    const tally: Tally = {
      sent: (n) => {
        bytes += n;
      },
      failed: (why) => {
        reason ??= why;
      },
    };
    try {
      if (!proxy?.directory || !isDirectoryLocal(proxy.local))
        throw new Refusal(503, 'the proxy no longer serves a directory (changed by a reload)');
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.setHeader('Allow', 'GET, HEAD');
        // Not read on: an upload's body would be read only to be thrown away.
        res.setHeader('Connection', 'close');
        throw new Refusal(405, `method ${req.method} (GET and HEAD only)`);
      }
      const asked = requestedPath(req.url ?? '', proxy.directory);
      if ('status' in asked) throw new Refusal(asked.status, asked.reason);
      await this.serveFound(req, res, proxy.local.dir, proxy.directory, asked, tally);
    } catch (err) {
      const refusal =
        err instanceof Refusal
          ? err
          : new Refusal(500, `${(err as Error).message} (${errnoOf(err) ?? 'error'})`);
      reason = refusal.message;
      if (res.headersSent) res.destroy();
      else answerText(req, res, refusal.status, tally);
    }
  }

  private async serveFound(
    req: IncomingMessage,
    res: ServerResponse,
    root: string,
    settings: DirectorySettings,
    asked: RequestedPath,
    tally: Tally,
  ): Promise<void> {
    const realRoot = await realpath(root).catch((err: unknown) => {
      throw new Refusal(404, `the directory ${root} cannot be read (${errnoOf(err)})`);
    });
    const found = await locate(realRoot, asked.segments, settings);
    if (!found.stats.isDirectory()) return serveFile(req, res, found, tally);
    if (!asked.trailingSlash) {
      // Relative links in a listing (and in an index.html) need the directory's URL to end in "/".
      res.setHeader('Location', directoryUrl(asked.segments, settings.stripPrefix));
      throw new Refusal(301, 'a directory, asked without its "/"');
    }
    const index = await locate(realRoot, [...asked.segments, 'index.html'], settings).catch(() => undefined);
    if (index?.stats.isFile()) return serveFile(req, res, index, tally);
    const entries = await listed(realRoot, found.real, settings);
    const body = Buffer.from(
      listingHtml(
        decodeURIComponent(directoryUrl(asked.segments, settings.stripPrefix)),
        entries,
        asked.segments.length === 0,
      ),
    );
    res.setHeader('Content-Type', 'text/html; charset=utf-8');
    res.setHeader('Content-Security-Policy', LISTING_CSP);
    res.setHeader('X-Content-Type-Options', 'nosniff');
    res.setHeader('Content-Length', body.length);
    if (req.method === 'HEAD') res.end();
    else {
      tally.sent(body.length);
      res.end(body);
    }
  }
}

/**
 * Where the request leads, by the real path: a symlink may lead out of the directory only with
 * follow_outside_symlinks, and to a hidden name inside it only with serve_dotfiles.
 */
async function locate(
  realRoot: string,
  segments: readonly string[],
  settings: DirectorySettings,
): Promise<Found> {
  let real: string;
  try {
    real = await realpath(join(realRoot, ...segments));
  } catch (err) {
    const code = errnoOf(err);
    if (code === 'EACCES') throw new Refusal(403, 'permission denied (EACCES)');
    throw new Refusal(404, `not found (${code})`);
  }
  const problem = outOfBounds(realRoot, real, settings);
  if (problem) throw new Refusal(404, problem);
  try {
    return { real, stats: await stat(real) };
  } catch (err) {
    throw new Refusal(404, `not found (${errnoOf(err)})`);
  }
}

/** Why a real path may not be served, if it may not. */
function outOfBounds(realRoot: string, real: string, settings: DirectorySettings): string | undefined {
  const inside =
    real === realRoot || real.startsWith(realRoot.endsWith(sep) ? realRoot : `${realRoot}${sep}`);
  if (!inside) return settings.followOutsideSymlinks ? undefined : 'a symlink leading out of the directory';
  if (
    !settings.serveDotfiles &&
    relative(realRoot, real)
      .split(sep)
      .some((name) => name.startsWith('.'))
  )
    return 'a symlink to a hidden name (serve_dotfiles is off)';
  return undefined;
}

/** A directory's entries as visitors may see them: hidden names and symlinks they could not follow left out. */
async function listed(realRoot: string, dir: string, settings: DirectorySettings): Promise<ListedEntry[]> {
  const dirents: Dirent[] = await readdir(dir, { withFileTypes: true });
  const entries: ListedEntry[] = [];
  for (const dirent of dirents) {
    if (!settings.serveDotfiles && dirent.name.startsWith('.')) continue;
    if (!dirent.isSymbolicLink()) {
      entries.push({ name: dirent.name, isDirectory: dirent.isDirectory() });
      continue;
    }
    try {
      const real = await realpath(join(dir, dirent.name));
      if (outOfBounds(realRoot, real, settings)) continue;
      entries.push({ name: dirent.name, isDirectory: (await stat(real)).isDirectory() });
    } catch {
      // A dangling symlink leads nowhere: not listed.
    }
  }
  return entries;
}

/** One file, whole or one range of it, streamed: the visitor's reading paces the reading of the disk. */
async function serveFile(
  req: IncomingMessage,
  res: ServerResponse,
  found: Found,
  tally: Tally,
): Promise<void> {
  let handle: FileHandle;
  try {
    handle = await open(found.real, 'r');
  } catch (err) {
    const code = errnoOf(err);
    throw new Refusal(code === 'EACCES' ? 403 : 404, `cannot open the file (${code})`);
  }
  let stats: Stats;
  try {
    // The open file's own size and time: the file may have been replaced since it was found.
    stats = await handle.stat();
  } catch (err) {
    await handle.close();
    throw err;
  }
  const lastModified = new Date(Math.floor(stats.mtimeMs / 1000) * 1000);
  res.setHeader('Last-Modified', lastModified.toUTCString());
  res.setHeader('Accept-Ranges', 'bytes');
  const since = Date.parse(String(req.headers['if-modified-since'] ?? ''));
  if (!Number.isNaN(since) && lastModified.getTime() <= since) {
    await handle.close();
    res.statusCode = 304;
    res.end();
    return;
  }
  const ifRange = req.headers['if-range'];
  const range =
    ifRange === undefined || ifRange === lastModified.toUTCString()
      ? readRange(req.headers.range, stats.size)
      : { kind: 'whole' as const };
  if (range.kind === 'unsatisfiable') {
    await handle.close();
    res.setHeader('Content-Range', `bytes */${stats.size}`);
    throw new Refusal(416, `range ${req.headers.range} past the end (${stats.size} bytes)`);
  }
  const [start, end] = range.kind === 'part' ? [range.start, range.end] : [0, stats.size - 1];
  res.statusCode = range.kind === 'part' ? 206 : 200;
  if (range.kind === 'part') res.setHeader('Content-Range', `bytes ${start}-${end}/${stats.size}`);
  res.setHeader('Content-Type', contentTypeOf(found.real));
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Content-Length', end - start + 1);
  if (req.method === 'HEAD' || end < start) {
    await handle.close();
    res.end();
    return;
  }
  const file = createReadStream('', { fd: handle, start, end });
  file.on('data', (chunk: string | Buffer) => tally.sent(chunk.length));
  // Before the pipeline cuts the answer short: the line says why.
  file.once('error', (err) => tally.failed(`reading ${found.real} failed: ${err.message}`));
  // A visitor that leaves ends the pipeline, which closes the file.
  pipeline(file, res, () => {});
}

/** A short text answer of our own (404, 405...); no body to HEAD and 304. */
function answerText(req: IncomingMessage, res: ServerResponse, status: number, tally: Tally): void {
  res.statusCode = status;
  const body = Buffer.from(`${status} ${res.statusMessage}\n`);
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
  res.setHeader('Content-Length', body.length);
  if (req.method === 'HEAD') res.end();
  else {
    tally.sent(body.length);
    res.end(body);
  }
}

/**
 * The visitor of one request. An http proxy's stream carries requests of many visitors, one after another:
 * the server names each in the last X-Forwarded-For entry, which it sets itself. A tcp proxy's visitor is the
 * stream's own.
 */
function visitorOf(req: IncomingMessage, proxy: ProxyConfig | undefined, visit: DirectoryVisit): string {
  if (proxy?.type !== 'http') return visit.remoteAddr;
  const forwarded = req.headers['x-forwarded-for'];
  const last = (Array.isArray(forwarded) ? forwarded.join(',') : (forwarded ?? '')).split(',').at(-1)?.trim();
  return last || visit.remoteAddr;
}

function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException)?.code;
}
