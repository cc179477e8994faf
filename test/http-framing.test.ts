// HTTP/1.1 message framing through the http vhost proxy, pinned end to end. The local service is a
// scripted raw-TCP fake (node:net) that writes exact bytes, often a byte at a time, and records every
// request (method, path, head, decoded body) and the local connection that carried it; the visitors are
// curl and raw sockets. What is pinned: Content-Length, chunked (extensions, trailers) and close-delimited
// bodies; HEAD, 204, 304 and 1xx answers that have no body; Connection: close and HTTP/1.0 answers that
// end the local connection; malformed, truncated and oversized answers that must never look complete;
// request bodies framed correctly towards the service; and reuse of the tunnel stream behind a local
// connection whenever the answer allows it.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { test } from 'node:test';
import { parseCurlHeads } from './lib/curl.js';
import { type Harness, run, sleep, waitFor, withHarness, withTimeout } from './lib/processes.js';
import { issueRoutedToken, type RoutedServer, startRoutedClient, startRoutedServer } from './lib/routing.js';
import { patternBytes } from './lib/sha-stream.js';

// ---------------------------------------------------------------------------------------------------------
// Byte-level reading shared by the fake service and the raw visitors.

/** Buffers a socket's bytes and hands them out by delimiter or count; undefined once the peer is gone. */
class ByteReader {
  private buf: Buffer = Buffer.alloc(0);
  private done = false;
  private wake: (() => void) | undefined;

  constructor(socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
      this.notify();
    });
    const finish = () => {
      this.done = true;
      this.notify();
    };
    socket.on('end', finish);
    socket.on('close', finish);
    socket.on('error', () => {});
  }

  /** Bytes received but not taken yet. */
  get pending(): Buffer {
    return this.buf;
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private more(): Promise<boolean> {
    if (this.done) return Promise.resolve(false);
    return new Promise((resolve) => {
      this.wake = () => resolve(true);
    });
  }

  /** Everything up to and including `delim`. */
  async until(delim: string): Promise<Buffer | undefined> {
    for (;;) {
      const at = this.buf.indexOf(delim, 0, 'latin1');
      if (at >= 0) {
        const out = this.buf.subarray(0, at + delim.length);
        this.buf = this.buf.subarray(at + delim.length);
        return out;
      }
      if (!(await this.more())) return undefined;
    }
  }

  async take(n: number): Promise<Buffer | undefined> {
    while (this.buf.length < n) if (!(await this.more())) return undefined;
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Everything until the peer closes. */
  async rest(): Promise<Buffer> {
    while (await this.more()) {}
    const out = this.buf;
    this.buf = Buffer.alloc(0);
    return out;
  }
}

interface Head {
  /** request line or status line */
  line: string;
  headers: Array<[string, string]>;
  raw: string;
}

function parseHead(raw: Buffer): Head {
  const text = raw.toString('latin1');
  const [line = '', ...rest] = text.slice(0, -4).split('\r\n');
  const headers: Array<[string, string]> = [];
  for (const l of rest) {
    const colon = l.indexOf(':');
    if (colon <= 0) throw new Error(`bad header line ${JSON.stringify(l)} in ${JSON.stringify(text)}`);
    headers.push([l.slice(0, colon).toLowerCase(), l.slice(colon + 1).trim()]);
  }
  return { line, headers, raw: text };
}

/** All values of a header (lowercase name), comma-joined like a list; undefined when absent. */
function headerOf(head: Head, name: string): string | undefined {
  const values = head.headers.filter(([n]) => n === name).map(([, v]) => v);
  return values.length === 0 ? undefined : values.join(', ');
}

interface Chunked {
  body: Buffer;
  /** the chunk-size lines as sent, extensions included */
  sizeLines: string[];
  trailers: string[];
}

/** A chunked body, strictly: hex size (extensions allowed), data, CRLF; last-chunk; trailer fields. */
async function readChunked(r: ByteReader): Promise<Chunked | undefined> {
  const parts: Buffer[] = [];
  const sizeLines: string[] = [];
  for (;;) {
    const line = await r.until('\r\n');
    if (!line) return undefined;
    const text = line.toString('latin1').slice(0, -2);
    sizeLines.push(text);
    const sizeText = text.split(';')[0]!.trim();
    if (!/^[0-9a-fA-F]{1,8}$/.test(sizeText)) throw new Error(`bad chunk-size line ${JSON.stringify(text)}`);
    const size = Number.parseInt(sizeText, 16);
    if (size === 0) break;
    const data = await r.take(size + 2);
    if (!data) return undefined;
    if (data.subarray(size).toString('latin1') !== '\r\n') throw new Error('chunk data not followed by CRLF');
    parts.push(data.subarray(0, size));
  }
  const trailers: string[] = [];
  for (;;) {
    const line = await r.until('\r\n');
    if (!line) return undefined;
    if (line.length === 2) break;
    trailers.push(line.toString('latin1').slice(0, -2));
  }
  return { body: Buffer.concat(parts), sizeLines, trailers };
}

// ---------------------------------------------------------------------------------------------------------
// The scripted local service.

interface SeenRequest {
  method: string;
  path: string;
  head: Head;
  body: Buffer;
  /** the request body came chunked (and was decoded here) */
  chunked: Chunked | undefined;
  /** which local TCP connection (1, 2, ...) carried it */
  conn: number;
}

interface Reply {
  bytes: Buffer | string;
  /** written in pieces of this many bytes (default: all at once) ... */
  piece?: number;
  /** ... with this pause after each piece */
  delayMs?: number;
  /**
   * After writing: keep serving (default), end (FIN), destroy (RST), or end after this many ms while
   * still serving whatever arrives meanwhile (so a proxy that wrongly reuses the connection is seen).
   */
  after?: 'keep' | 'end' | 'destroy' | number;
}

interface FakeService {
  port: number;
  /** local connections accepted so far */
  readonly connections: number;
  /** connection numbers the proxy side (or the service) has closed */
  closedConns: Set<number>;
  requests: SeenRequest[];
  /** request framing the service could not parse: must stay empty */
  errors: string[];
  close(): Promise<void>;
}

async function writeReply(socket: net.Socket, reply: Reply): Promise<void> {
  const bytes = typeof reply.bytes === 'string' ? Buffer.from(reply.bytes, 'latin1') : reply.bytes;
  const piece = reply.piece ?? bytes.length;
  for (let off = 0; off < bytes.length; off += piece) {
    if (socket.destroyed) return;
    socket.write(bytes.subarray(off, off + piece));
    if (reply.delayMs !== undefined) await sleep(reply.delayMs);
  }
}

async function startFakeService(script: (req: SeenRequest) => Reply): Promise<FakeService> {
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const state: FakeService = {
    port: 0,
    get connections() {
      return connections;
    },
    closedConns: new Set(),
    requests: [],
    errors: [],
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  const serve = async (socket: net.Socket, conn: number) => {
    const r = new ByteReader(socket);
    for (;;) {
      const raw = await r.until('\r\n\r\n');
      if (!raw) return;
      const head = parseHead(raw);
      const [method = '', target = ''] = head.line.split(' ');
      const te = headerOf(head, 'transfer-encoding');
      const cl = headerOf(head, 'content-length');
      if (te !== undefined && cl !== undefined) throw new Error(`both Transfer-Encoding and Content-Length`);
      let body: Buffer = Buffer.alloc(0);
      let chunked: Chunked | undefined;
      // Like a real server: a client that waits for 100 Continue is told to go on.
      if (headerOf(head, 'expect')?.toLowerCase() === '100-continue')
        socket.write('HTTP/1.1 100 Continue\r\n\r\n');
      if (te !== undefined) {
        if (te.toLowerCase() !== 'chunked') throw new Error(`unexpected Transfer-Encoding ${te}`);
        chunked = await readChunked(r);
        if (!chunked) return;
        body = chunked.body;
      } else if (cl !== undefined) {
        if (!/^\d+$/.test(cl)) throw new Error(`bad Content-Length ${cl}`);
        const data = await r.take(Number(cl));
        if (!data) return;
        body = data;
      }
      const seen: SeenRequest = { method, path: target.split('?')[0]!, head, body, chunked, conn };
      state.requests.push(seen);
      const reply = script(seen);
      await writeReply(socket, reply);
      if (reply.after === 'end') {
        socket.end();
        return;
      }
      if (reply.after === 'destroy') {
        socket.destroy();
        return;
      }
      if (typeof reply.after === 'number') setTimeout(() => socket.end(), reply.after);
    }
  };
  const server = net.createServer((socket) => {
    connections += 1;
    const conn = connections;
    sockets.add(socket);
    socket.setNoDelay(true);
    socket.on('close', () => {
      sockets.delete(socket);
      state.closedConns.add(conn);
    });
    serve(socket, conn).catch((err: Error) => {
      state.errors.push(`connection ${conn}: ${err.message}`);
      socket.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.port = (server.address() as net.AddressInfo).port;
  return state;
}

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz';
const HEAD_BODY = patternBytes(1234, 'head');
const CLOSE_BODY = patternBytes(3000, 'close-delimited');
const CUT_BODY = patternBytes(100, 'cut');
/** A chunked answer's head and a first chunk of CUT_BODY, and no more. */
const FIRST_CHUNK = Buffer.concat([
  Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n'),
  CUT_BODY,
  Buffer.from('\r\n'),
]);
const BIG_HEADER = 'a'.repeat(100 * 1024);
const FORGED_CHUNK = 'abcHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged';

function ok(text: string, extra = ''): string {
  return `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${text.length}\r\n${extra}\r\n${text}`;
}

/** What the fake service answers, by path. */
function script(req: SeenRequest): Reply {
  switch (req.path) {
    case '/cl':
      // 1. Content-Length, the whole answer (head included) a byte at a time.
      return { bytes: ok(ALPHABET, 'X-Case: cl\r\n'), piece: 1, delayMs: 1 };
    case '/chunked':
      // 2. Chunked with extensions (a quoted one too), a zero-padded size, and a trailer; a byte at a time.
      return {
        bytes:
          'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n' +
          '5;foo=bar\r\nhello\r\n' +
          'a;name="x y";flag\r\n, chunked \r\n' +
          '0003\r\nend\r\n' +
          '0;last=1\r\nX-Checksum: c0ffee\r\n\r\n',
        piece: 1,
        delayMs: 1,
      };
    case '/close-delimited':
      // 3. Neither Content-Length nor Transfer-Encoding: the body ends when the service closes.
      return {
        bytes: Buffer.concat([
          Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n'),
          CLOSE_BODY,
        ]),
        piece: 500,
        delayMs: 5,
        after: 'end',
      };
    case '/head':
      // 4. HEAD gets the GET's Content-Length and no body.
      return {
        bytes: Buffer.concat([
          Buffer.from(
            `HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${HEAD_BODY.length}\r\n\r\n`,
          ),
          req.method === 'HEAD' ? Buffer.alloc(0) : HEAD_BODY,
        ]),
      };
    case '/bad-trailers':
      // Trailer fields a proxy must not pass on (framing, a malformed name, a folded line) beside good ones.
      return {
        bytes:
          'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n' +
          'X-Digest: sha-256=abc\r\nContent-Length: 99\r\nBad Name: 1\r\n folded\r\nX-Late: \xe9t\xe9\r\n\r\n',
      };
    case '/head-chunked':
      // A HEAD answer announcing a chunked body, which it does not have.
      if (req.method !== 'HEAD') throw new Error('/head-chunked is for HEAD only');
      return { bytes: 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n' };
    case '/204':
      // 5. No body by status.
      return { bytes: 'HTTP/1.1 204 No Content\r\nX-Case: 204\r\n\r\n', piece: 3, delayMs: 1 };
    case '/304':
      // A 304 may carry the Content-Length of the representation; it still has no body.
      return { bytes: 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 500\r\n\r\n' };
    case '/1xx':
      // 6. Interim answers before the final one (none was asked for: a client must cope anyway).
      return {
        bytes:
          'HTTP/1.1 100 Continue\r\n\r\n' +
          'HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n' +
          ok('final', 'X-Case: 1xx\r\n'),
        piece: 4,
        delayMs: 1,
      };
    case '/conn-close':
      // 7. Connection: close; the service lingers before closing, still reading.
      return { bytes: ok('closing now', 'Connection: close\r\n'), after: 300 };
    case '/http10':
      // 8. An HTTP/1.0 answer without keep-alive: the connection is not reusable (lingering close, too).
      return {
        bytes: 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nold-timer',
        after: 300,
      };
    case '/bad-status':
      // 9. Malformed answers.
      return { bytes: 'HTTP/1.1 abc\r\n\r\n' };
    case '/garbage':
      return { bytes: '\x00\x01\x02 this is not http at all\r\n\r\n' };
    case '/bad-length':
      return { bytes: 'HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\nhello world!' };
    case '/gzip-chunked':
      // A transfer coding besides chunked (nobody asked for it): the visitor would get gzip bytes as plain.
      return { bytes: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n' };
    case '/gzip-close':
      return { bytes: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello', after: 'end' };
    case '/cut':
      // 10. Content-Length 1000, 100 bytes, then a clean close.
      return {
        bytes: Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n'), CUT_BODY]),
        after: 'end',
      };
    case '/cut-chunked':
      // Chunked, a 100-byte chunk, then a clean close without the last-chunk.
      return { bytes: FIRST_CHUNK, after: 'end' };
    case '/stall-chunked':
      // The same 100-byte chunk, then nothing more: the service stalls mid-body with its connection open.
      return { bytes: FIRST_CHUNK };
    case '/big-head':
      // 12. A ~100 KiB header section.
      return { bytes: ok('ok', `X-Big: ${BIG_HEADER}\r\n`), piece: 16 * 1024 };
    case '/upload':
      return { bytes: ok(`got ${req.body.length}`) };
    case '/length-and-chunks':
      // Both framings, the length a lie: a visitor told "3" would read the rest as its next answer.
      return {
        bytes:
          'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n' +
          `${FORGED_CHUNK.length.toString(16)}\r\n${FORGED_CHUNK}\r\n0\r\n\r\n`,
      };
    case '/http10-chunked':
      // HTTP/1.0 has no chunked coding: the chunk sizes would reach the visitor as body.
      return {
        bytes: 'HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
        after: 'end',
      };
    case '/upgrade-ok':
      // Switches protocols; what follows is parsed as requests again, which makes its echo visible.
      return { bytes: 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-test\r\nConnection: Upgrade\r\n\r\n' };
    default:
      return { bytes: ok(`ok ${req.method} ${req.path} conn=${req.conn}`) };
  }
}

// ---------------------------------------------------------------------------------------------------------
// Visitors.

interface Visit {
  /** curl's exit code */
  code: number | null;
  /** the final (non-1xx) status */
  status: number;
  /** every status line curl saw, 1xx included */
  statusLines: string[];
  headers: Map<string, string>;
  /** trailer fields after a chunked body, as curl wrote them after the head ("Name: value") */
  trailers: string[];
  body: Buffer;
  stderr: string;
}

let visitSerial = 0;

/** curl as the visitor (Host: app.test); headers and body go to files, so exact bytes are kept. */
async function visit(h: Harness, port: number, path: string, args: string[] = []): Promise<Visit> {
  visitSerial += 1;
  const headFile = h.path(`visit-${visitSerial}.head`);
  const bodyFile = h.path(`visit-${visitSerial}.body`);
  const r = await run(
    'curl',
    [
      '-sS',
      '--max-time',
      '10',
      '-H',
      'Host: app.test',
      '-D',
      headFile,
      '-o',
      bodyFile,
      ...args,
      `http://127.0.0.1:${port}${path}`,
    ],
    { timeoutMs: 15_000 },
  );
  const heads = await readFile(headFile, 'latin1').catch(() => '');
  const { status, statusLines, headers, bodyStart } = parseCurlHeads(heads);
  const trailers = heads.slice(bodyStart).split('\r\n').filter(Boolean);
  const body = await readFile(bodyFile).catch(() => Buffer.alloc(0));
  return { code: r.code, status, statusLines, headers, trailers, body, stderr: r.stderr };
}

interface RawResponse {
  status: number;
  head: Head;
  /** interim (1xx) heads before it */
  interim: Head[];
  body: Buffer;
  /** trailer lines after a chunked body */
  trailers: string[];
}

/** A visitor on one raw keep-alive connection, reading answers with the framing rules of RFC 9112. */
class RawVisitor {
  readonly reader: ByteReader;
  closed = false;

  private constructor(readonly socket: net.Socket) {
    this.reader = new ByteReader(socket);
    socket.on('close', () => {
      this.closed = true;
    });
  }

  static async open(h: Harness, port: number): Promise<RawVisitor> {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.setNoDelay(true);
    h.onCleanup(() => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawVisitor(socket);
  }

  async send(data: string | Buffer, piece?: number): Promise<void> {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
    await writeReply(this.socket, { bytes, ...(piece ? { piece, delayMs: 1 } : {}) });
  }

  /** The next answer; throws if the connection closes before it is complete. */
  response(method: string, what: string): Promise<RawResponse> {
    const read = async (): Promise<RawResponse> => {
      const interim: Head[] = [];
      for (;;) {
        const raw = await this.reader.until('\r\n\r\n');
        if (!raw) throw new Error(`${what}: connection closed before an answer (got ${this.leftover()})`);
        const head = parseHead(raw);
        const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head.line)?.[1] ?? 0);
        if (status === 0) throw new Error(`${what}: bad status line ${JSON.stringify(head.line)}`);
        if (status < 200) {
          interim.push(head);
          continue;
        }
        let body: Buffer = Buffer.alloc(0);
        let trailers: string[] = [];
        const te = headerOf(head, 'transfer-encoding');
        const cl = headerOf(head, 'content-length');
        if (method === 'HEAD' || status === 204 || status === 304) {
          // no body
        } else if (te !== undefined) {
          const chunked = await readChunked(this.reader);
          if (!chunked) throw new Error(`${what}: closed inside a chunked body (got ${this.leftover()})`);
          body = chunked.body;
          trailers = chunked.trailers;
        } else if (cl !== undefined) {
          const data = await this.reader.take(Number(cl));
          if (!data) throw new Error(`${what}: closed before ${cl} body bytes (got ${this.leftover()})`);
          body = data;
        } else {
          body = await this.reader.rest();
        }
        return { status, head, interim, body, trailers };
      }
    };
    return withTimeout(read(), 10_000, () => `${what}: no complete answer (have ${this.leftover()})`);
  }

  private leftover(): string {
    return JSON.stringify(this.reader.pending.toString('latin1').slice(0, 200));
  }

  close(): void {
    this.socket.destroy();
  }
}

// ---------------------------------------------------------------------------------------------------------

interface World {
  service: FakeService;
  server: RoutedServer;
  port: number;
}

/** `http`: keys of the server's [http] table. */
async function startWorld(h: Harness, http?: Record<string, string>): Promise<World> {
  const service = await startFakeService(script);
  h.onCleanup(() => service.close());
  const server = await startRoutedServer(h, http ? { http } : {});
  const token = await issueRoutedToken(server, { name: 'framing', hosts: ['app.test'] });
  await startRoutedClient(h, {
    server: server.url,
    token,
    proxies: [{ name: 'app', type: 'http', local: `127.0.0.1:${service.port}`, hosts: ['app.test'] }],
  });
  return { service, server, port: server.httpPort! };
}

/** The last request the service saw, which must be for `path`. */
function lastRequest(service: FakeService, path: string): SeenRequest {
  const last = service.requests.at(-1);
  assert.ok(last, `the service saw no request (expected ${path})`);
  assert.equal(last.path, path, `the service's last request was ${last.method} ${last.path}, not ${path}`);
  return last;
}

/** A plain GET that must succeed; returns the local connection that carried it. */
async function plainGet(h: Harness, world: World, path: string): Promise<number> {
  const r = await visit(h, world.port, path);
  assert.equal(r.code, 0, `${path}: curl failed: ${r.stderr}`);
  assert.equal(r.status, 200, `${path}: status ${r.status}`);
  const seen = lastRequest(world.service, path);
  assert.equal(r.body.toString(), `ok GET ${path} conn=${seen.conn}`);
  return seen.conn;
}

test(
  'response bodies: Content-Length, chunked and close-delimited; HEAD, 204, 304 and 1xx have none; local connections are reused',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const world = await startWorld(h);
      const { service, server, port } = world;
      const mark = server.proc.mark();
      const warm = await plainGet(h, world, '/warm-up');

      // 1. Content-Length, a byte at a time: exact body, and the local connection is used again.
      const cl = await visit(h, port, '/cl');
      assert.equal(cl.code, 0, cl.stderr);
      assert.equal(cl.status, 200);
      assert.equal(cl.body.toString('latin1'), ALPHABET);
      assert.equal(cl.headers.get('content-length'), '26');
      assert.equal(cl.headers.get('x-case'), 'cl');
      assert.equal(lastRequest(service, '/cl').conn, warm, '/cl rode the pooled local connection');
      assert.equal(await plainGet(h, world, '/after-cl'), warm, 'reused after a Content-Length answer');

      // 2. Chunked with extensions and a trailer, a byte at a time: the decoded body, exactly.
      const chunked = await visit(h, port, '/chunked');
      assert.equal(chunked.code, 0, chunked.stderr);
      assert.equal(chunked.status, 200);
      assert.equal(chunked.body.toString('latin1'), 'hello, chunked end');
      assert.deepEqual(chunked.trailers, ['X-Checksum: c0ffee'], 'the trailer reached curl');
      t.diagnostic(
        `chunked answer as the visitor got it: content-length=${chunked.headers.get('content-length')} ` +
          `transfer-encoding=${chunked.headers.get('transfer-encoding')} trailer=${chunked.headers.get('trailer')}`,
      );
      assert.equal(lastRequest(service, '/chunked').conn, warm);
      assert.equal(await plainGet(h, world, '/after-chunked'), warm, 'reused after a chunked answer');
      // The same through a raw visitor: whatever framing the proxy picks, the bytes decode to the body.
      const rawChunked = await RawVisitor.open(h, port);
      await rawChunked.send('GET /chunked HTTP/1.1\r\nHost: app.test\r\n\r\n');
      const rc = await rawChunked.response('GET', 'raw GET /chunked');
      assert.equal(rc.status, 200);
      assert.equal(rc.body.toString('latin1'), 'hello, chunked end');
      assert.equal(headerOf(rc.head, 'transfer-encoding'), 'chunked');
      assert.deepEqual(rc.trailers, ['X-Checksum: c0ffee']);
      // Only the trailer fields that may travel: framing fields and malformed lines stay behind, logged.
      const trailerMark = server.proc.mark();
      await rawChunked.send('GET /bad-trailers HTTP/1.1\r\nHost: app.test\r\n\r\n');
      const bad = await rawChunked.response('GET', 'raw GET /bad-trailers');
      assert.equal(bad.body.toString('latin1'), 'body');
      assert.deepEqual(bad.trailers, ['X-Digest: sha-256=abc', 'X-Late: \xe9t\xe9']);
      const dropped = await server.proc.waitForMsg(
        'http trailer fields not passed on (malformed, or framing fields)',
        5000,
        {
          from: trailerMark,
        },
      );
      assert.equal(dropped.dropped, 3);
      assert.equal(dropped.proxy, 'app');
      rawChunked.close();

      // 3. Close-delimited: the whole body; the closed local connection is not used again.
      const closeDelimited = await visit(h, port, '/close-delimited');
      assert.equal(closeDelimited.code, 0, closeDelimited.stderr);
      assert.equal(closeDelimited.status, 200);
      assert.ok(
        closeDelimited.body.equals(CLOSE_BODY),
        `close-delimited body: ${closeDelimited.body.length} bytes`,
      );
      const closedConn = lastRequest(service, '/close-delimited').conn;
      const before3 = service.connections;
      const next3 = await plainGet(h, world, '/after-close-delimited');
      assert.notEqual(next3, closedConn, 'the next request went on a new local connection');
      assert.equal(service.connections, before3 + 1);

      // 4. HEAD: Content-Length 1234 and no body, on a visitor connection that stays usable; the local
      // connection stays usable too (a proxy that waited for 1234 bytes would hang here).
      const visitor = await RawVisitor.open(h, port);
      const conns4 = service.connections;
      await visitor.send('HEAD /head HTTP/1.1\r\nHost: app.test\r\n\r\n');
      const head = await visitor.response('HEAD', 'HEAD /head');
      assert.equal(head.status, 200);
      assert.equal(headerOf(head.head, 'content-length'), '1234');
      assert.equal(lastRequest(service, '/head').method, 'HEAD');
      const headConn = lastRequest(service, '/head').conn;
      await visitor.send('GET /head HTTP/1.1\r\nHost: app.test\r\n\r\n');
      const get = await visitor.response('GET', 'GET /head after HEAD');
      assert.equal(get.status, 200);
      assert.ok(get.body.equals(HEAD_BODY), `GET /head after HEAD: ${get.body.length} bytes`);
      assert.equal(
        lastRequest(service, '/head').conn,
        headConn,
        'the GET after HEAD reused the local connection',
      );
      // A HEAD answer that announces a chunked body: nothing more follows, and nothing hangs.
      await visitor.send('HEAD /head-chunked HTTP/1.1\r\nHost: app.test\r\n\r\n');
      const headChunked = await visitor.response('HEAD', 'HEAD /head-chunked');
      assert.equal(headChunked.status, 200);
      assert.equal(lastRequest(service, '/head-chunked').conn, headConn);
      t.diagnostic(
        `HEAD of a chunked answer, as the visitor got it: ${JSON.stringify(headChunked.head.raw)}`,
      );

      // 5. 204 and 304 (with a Content-Length) have no body; both connections stay usable.
      await visitor.send('GET /204 HTTP/1.1\r\nHost: app.test\r\n\r\n');
      const noContent = await visitor.response('GET', 'GET /204');
      assert.equal(noContent.status, 204);
      assert.equal(headerOf(noContent.head, 'x-case'), '204');
      assert.equal(lastRequest(service, '/204').conn, headConn);
      await visitor.send('GET /304 HTTP/1.1\r\nHost: app.test\r\nIf-None-Match: "v1"\r\n\r\n');
      const notModified = await visitor.response('GET', 'GET /304');
      assert.equal(notModified.status, 304);
      assert.equal(headerOf(notModified.head, 'etag'), '"v1"');
      assert.equal(lastRequest(service, '/304').conn, headConn);
      await visitor.send('GET /after-304 HTTP/1.1\r\nHost: app.test\r\n\r\n');
      const after304 = await visitor.response('GET', 'GET /after-304');
      assert.equal(after304.status, 200);
      assert.equal(after304.body.toString(), `ok GET /after-304 conn=${headConn}`);
      assert.equal(visitor.closed, false, 'the visitor connection is still open');
      assert.equal(visitor.reader.pending.length, 0, 'no stray bytes after the answers');
      assert.equal(service.connections, conns4, 'HEAD, 204 and 304 opened no new local connection');
      // curl agrees on 204 and 304.
      const curl204 = await visit(h, port, '/204');
      assert.deepEqual([curl204.code, curl204.status, curl204.body.length], [0, 204, 0], curl204.stderr);
      const curl304 = await visit(h, port, '/304');
      assert.deepEqual([curl304.code, curl304.status, curl304.body.length], [0, 304, 0], curl304.stderr);
      visitor.close();

      // 6. 100 and 103 before the final 200: the visitor gets the 200 and its body.
      const interim = await visit(h, port, '/1xx');
      assert.equal(interim.code, 0, interim.stderr);
      assert.equal(interim.status, 200);
      assert.equal(interim.headers.get('x-case'), '1xx');
      assert.equal(interim.body.toString(), 'final');
      t.diagnostic(`1xx: curl saw ${JSON.stringify(interim.statusLines)}`);
      const rawInterim = await RawVisitor.open(h, port);
      await rawInterim.send('GET /1xx HTTP/1.1\r\nHost: app.test\r\n\r\n');
      const ri = await rawInterim.response('GET', 'raw GET /1xx');
      assert.equal(ri.status, 200);
      assert.equal(ri.body.toString(), 'final');
      for (const h103 of ri.interim.filter((x) => x.line.includes(' 103 '))) {
        assert.match(headerOf(h103, 'link') ?? '', /<\/style\.css>/, 'a forwarded 103 keeps its Link');
      }
      rawInterim.close();
      const interimConn = lastRequest(service, '/1xx').conn;
      assert.equal(await plainGet(h, world, '/after-1xx'), interimConn, 'reused after interim answers');

      assert.deepEqual(service.errors, []);
      assert.deepEqual(
        (await server.proc.settledLogsWithMsg('http forward failed', mark)).map((l) => l.reason),
        [],
        'no forward failed for answers that are fine',
      );
    }),
);

test(
  'answers that end the local connection (Connection: close, HTTP/1.0, truncated) or are malformed or oversized',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const world = await startWorld(h);
      const { service, server, port } = world;
      const mark = server.proc.mark();
      await plainGet(h, world, '/warm-up');

      // 7. Connection: close: delivered, and the next request goes on a new local connection.
      const close = await visit(h, port, '/conn-close');
      assert.equal(close.code, 0, close.stderr);
      assert.equal(close.status, 200);
      assert.equal(close.body.toString(), 'closing now');
      const closeConn = lastRequest(service, '/conn-close').conn;
      const after7 = await plainGet(h, world, '/after-conn-close');
      assert.notEqual(after7, closeConn, 'a connection the service is closing is not used again');

      // 8. HTTP/1.0 without keep-alive: the same.
      const old = await visit(h, port, '/http10');
      assert.equal(old.code, 0, old.stderr);
      assert.equal(old.status, 200);
      assert.equal(old.body.toString(), 'old-timer');
      const oldConn = lastRequest(service, '/http10').conn;
      const after8 = await plainGet(h, world, '/after-http10');
      assert.notEqual(after8, oldConn, 'an HTTP/1.0 connection without keep-alive is not used again');
      assert.deepEqual(
        (await server.proc.settledLogsWithMsg('http forward failed', mark)).map((l) => l.reason),
        [],
        'no forward failed for Connection: close or HTTP/1.0',
      );

      // 10. Truncated bodies never look complete to the visitor.
      const cut = await visit(h, port, '/cut');
      t.diagnostic(
        `cut at 100 of 1000: curl exit ${cut.code}, ${cut.body.length} bytes, ${cut.stderr.trim()}`,
      );
      assert.notEqual(cut.code, 0, 'curl must see the transfer cut short');
      assert.ok(cut.body.length < 1000);
      assert.ok(CUT_BODY.subarray(0, cut.body.length).equals(cut.body), 'what did arrive is the right bytes');
      const rawCut = await RawVisitor.open(h, port);
      await rawCut.send('GET /cut HTTP/1.1\r\nHost: app.test\r\n\r\n');
      await assert.rejects(rawCut.response('GET', 'raw GET /cut'), /closed|bad status/);
      const cutChunked = await visit(h, port, '/cut-chunked');
      t.diagnostic(
        `chunked cut before the last-chunk: curl exit ${cutChunked.code}, ${cutChunked.stderr.trim()}`,
      );
      assert.notEqual(cutChunked.code, 0, 'a chunked body without its last-chunk is not complete');
      assert.ok(cutChunked.body.length <= 100);
      const rawCutChunked = await RawVisitor.open(h, port);
      await rawCutChunked.send('GET /cut-chunked HTTP/1.1\r\nHost: app.test\r\n\r\n');
      await assert.rejects(rawCutChunked.response('GET', 'raw GET /cut-chunked'), /closed|bad status/);
      await plainGet(h, world, '/after-cut');

      // 9. Malformed answers: 502, the broken local connection is dropped, the port keeps serving.
      for (const path of ['/bad-status', '/garbage', '/bad-length', '/gzip-chunked', '/gzip-close']) {
        const from = server.proc.mark();
        const count = service.requests.length;
        const bad = await visit(h, port, path);
        assert.equal(bad.status, 502, `${path}: status ${bad.status} (curl exit ${bad.code}: ${bad.stderr})`);
        assert.equal(bad.code, 0, `${path}: the 502 is a complete answer: ${bad.stderr}`);
        const attempts = service.requests.slice(count).filter((r) => r.path === path);
        assert.ok(attempts.length >= 1, `${path} reached the service`);
        t.diagnostic(`${path}: 502 after ${attempts.length} attempt(s) at the service`);
        await server.proc.waitForMsg('http forward failed', 5000, { from });
        for (const a of attempts) {
          await waitFor(
            `${path}: local connection ${a.conn} closed`,
            () => service.closedConns.has(a.conn),
            5000,
          );
        }
        const next = await plainGet(h, world, `/after${path}`);
        assert.ok(!attempts.some((a) => a.conn === next), `${path}: its local connection was not used again`);
      }

      // 12. A ~100 KiB response head: refused (502), never passed on as a 200.
      const from12 = server.proc.mark();
      const count12 = service.requests.length;
      const big = await visit(h, port, '/big-head');
      t.diagnostic(`100 KiB response head: status ${big.status}, curl exit ${big.code}`);
      assert.notEqual(big.status, 200, 'the oversized head was passed on');
      assert.equal(big.headers.get('x-big'), undefined);
      assert.equal(big.status, 502);
      const bigAttempts = service.requests.slice(count12).filter((r) => r.path === '/big-head');
      t.diagnostic(`/big-head: 502 after ${bigAttempts.length} attempt(s) at the service`);
      await server.proc.waitForMsg('http forward failed', 5000, { from: from12 });
      const next12 = await plainGet(h, world, '/after-big-head');
      assert.ok(!bigAttempts.some((a) => a.conn === next12), 'the oversized answer’s connection was dropped');

      assert.deepEqual(service.errors, []);
      assert.ok(server.proc.alive && h.procs.every((p) => p.alive), 'server and client still run');
    }),
);

test(
  'request bodies reach the service correctly framed: chunked (re-framed or not), Content-Length, empty',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const world = await startWorld(h);
      const { service, server, port } = world;
      const mark = server.proc.mark();
      const payload = patternBytes(300 * 1024, 'upload');
      const file = h.path('upload.bin');
      await writeFile(file, payload);

      // 11a. A chunked upload (curl): the service decodes exactly what was sent.
      const up = await visit(h, port, '/upload', [
        '-H',
        'Transfer-Encoding: chunked',
        '-H',
        'Content-Type: application/octet-stream',
        '--data-binary',
        `@${file}`,
      ]);
      assert.equal(up.code, 0, up.stderr);
      assert.equal(up.status, 200);
      assert.equal(up.body.toString(), `got ${payload.length}`);
      const chunkedSeen = lastRequest(service, '/upload');
      assert.equal(chunkedSeen.method, 'POST');
      assert.ok(
        chunkedSeen.body.equals(payload),
        `chunked upload arrived as ${chunkedSeen.body.length} bytes`,
      );
      const te = headerOf(chunkedSeen.head, 'transfer-encoding');
      const cl = headerOf(chunkedSeen.head, 'content-length');
      t.diagnostic(`chunked upload reached the service with transfer-encoding=${te} content-length=${cl}`);
      assert.ok(
        (te === 'chunked' && cl === undefined) || (te === undefined && cl === String(payload.length)),
        `framing at the service: transfer-encoding=${te} content-length=${cl}`,
      );

      // 11b. Content-Length upload (with Expect: 100-continue): the same length arrives, no chunking.
      const upCl = await visit(h, port, '/upload', [
        '-H',
        'Expect: 100-continue',
        '-H',
        'Content-Type: application/octet-stream',
        '--data-binary',
        `@${file}`,
      ]);
      assert.equal(upCl.code, 0, upCl.stderr);
      assert.equal(upCl.status, 200);
      const clSeen = lastRequest(service, '/upload');
      assert.equal(headerOf(clSeen.head, 'content-length'), String(payload.length));
      assert.equal(headerOf(clSeen.head, 'transfer-encoding'), undefined);
      assert.ok(clSeen.body.equals(payload));

      // 11c. A raw chunked upload with extensions and a trailer, a byte at a time, then an empty POST and a
      // GET on the same visitor connection.
      const visitor = await RawVisitor.open(h, port);
      await visitor.send(
        'POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n' +
          '3;ext=1\r\nabc\r\n0004\r\ndefg\r\n0\r\nX-Sum: 7\r\n\r\n',
        1,
      );
      const rawUp = await visitor.response('POST', 'raw chunked POST');
      assert.equal(rawUp.status, 200);
      assert.equal(rawUp.body.toString(), 'got 7');
      const rawSeen = lastRequest(service, '/upload');
      assert.equal(rawSeen.body.toString(), 'abcdefg');
      assert.deepEqual(rawSeen.chunked?.trailers, ['X-Sum: 7'], "the visitor's trailer reached the service");
      t.diagnostic(
        `raw chunked upload at the service: chunk lines ${JSON.stringify(rawSeen.chunked?.sizeLines)} ` +
          `trailers ${JSON.stringify(rawSeen.chunked?.trailers)}`,
      );
      await visitor.send('POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\n\r\n');
      const empty = await visitor.response('POST', 'empty POST');
      assert.equal(empty.status, 200);
      assert.equal(empty.body.toString(), 'got 0');
      const emptySeen = lastRequest(service, '/upload');
      assert.equal(emptySeen.body.length, 0);
      assert.equal(emptySeen.chunked, undefined, 'an empty body is not sent chunked');
      await visitor.send('GET /after-uploads HTTP/1.1\r\nHost: app.test\r\n\r\n');
      const after = await visitor.response('GET', 'GET after the uploads');
      assert.equal(after.status, 200);
      assert.equal(
        after.body.toString(),
        `ok GET /after-uploads conn=${lastRequest(service, '/after-uploads').conn}`,
      );
      visitor.close();

      assert.deepEqual(service.errors, [], 'every request reached the service correctly framed');
      assert.ok(service.connections <= 2, `${service.connections} local connections for 5 requests`);
      assert.deepEqual(
        (await server.proc.settledLogsWithMsg('http forward failed', mark)).map((l) => l.reason),
        [],
      );
    }),
);

test(
  'framing tricks from either side stay inside one exchange: Connection naming Content-Length, a length beside chunks, chunks in HTTP/1.0, an upgrade the service ignores',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const world = await startWorld(h);
      const { service, port } = world;
      await plainGet(h, world, '/warm-up');

      // A visitor names Content-Length in Connection, hoping the proxy drops it and sends the body
      // unframed, where the service would read it as a second request that routing and auth never saw.
      const inner = 'GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n';
      const smuggler = await RawVisitor.open(h, port);
      await smuggler.send(
        `POST /smuggle HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, content-length\r\nContent-Length: ${inner.length}\r\n\r\n${inner}`,
      );
      const posted = await smuggler.response('POST', 'POST /smuggle');
      assert.equal(posted.status, 200);
      const seenPost = lastRequest(service, '/smuggle');
      assert.equal(seenPost.body.toString('latin1'), inner, 'the body reached the service as a body');
      assert.equal(headerOf(seenPost.head, 'content-length'), String(inner.length));
      smuggler.close();
      await plainGet(h, world, '/after-smuggle');
      assert.deepEqual(
        service.requests.filter((r) => r.path === '/smuggled').length,
        0,
        'the body was never read as a request',
      );

      // The service sends a Content-Length beside chunks: the visitor gets the decoded body whole, framed
      // one way only, and its next answer on the same connection is its own.
      const visitor = await RawVisitor.open(h, port);
      await visitor.send('GET /length-and-chunks HTTP/1.1\r\nHost: app.test\r\n\r\n');
      const both = await visitor.response('GET', 'GET /length-and-chunks');
      t.diagnostic(`a length beside chunks, as the visitor got it: ${JSON.stringify(both.head.raw)}`);
      assert.equal(headerOf(both.head, 'content-length'), undefined, 'the lying length is not passed on');
      assert.equal(both.body.toString('latin1'), FORGED_CHUNK);
      await visitor.send('GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n');
      const next = await visitor.response('GET', 'GET /next');
      assert.equal(next.body.toString(), `ok GET /next conn=${lastRequest(service, '/next').conn}`);
      visitor.close();

      // Chunks in an HTTP/1.0 answer: refused (502), not passed on with their sizes inside the body.
      const old = await visit(h, port, '/http10-chunked');
      assert.equal(old.status, 502, `status ${old.status}: ${old.body.toString('latin1')}`);

      // An upgrade the service does not take (a 200, keep-alive): the visitor gets that answer and the
      // connection closes; the request pipelined behind it never reaches the service.
      const conns = service.connections;
      const upgrader = await RawVisitor.open(h, port);
      await upgrader.send(
        'GET /plain HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: x-test\r\n\r\n' +
          'GET /pipelined HTTP/1.1\r\nHost: app.test\r\n\r\n',
      );
      const plain = await upgrader.response('GET', 'GET /plain with Upgrade');
      assert.equal(plain.status, 200);
      assert.equal(plain.body.toString(), `ok GET /plain conn=${lastRequest(service, '/plain').conn}`);
      assert.equal(headerOf(plain.head, 'connection'), 'close');
      // rest() returns once the proxy ended the connection: nothing came after the answer.
      const after = await withTimeout(upgrader.reader.rest(), 5000, () => 'the proxy to end the connection');
      assert.equal(after.length, 0);
      assert.equal(lastRequest(service, '/plain').head.line, 'GET /plain HTTP/1.1');
      assert.equal(
        headerOf(lastRequest(service, '/plain').head, 'upgrade'),
        'x-test',
        'Upgrade was passed on',
      );
      await plainGet(h, world, '/after-upgrade');
      assert.equal(service.requests.filter((r) => r.path === '/pipelined').length, 0);
      assert.ok(service.connections > conns, 'the upgrade had a local connection of its own');

      // One it takes (101): the bytes sent behind the request reach the service after the switch.
      const switcher = await RawVisitor.open(h, port);
      await switcher.send(
        'GET /upgrade-ok HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: x-test\r\n\r\n' +
          'ECHO /raw HTTP/1.1\r\n\r\n',
      );
      const switched = await switcher.response('GET', 'GET /upgrade-ok');
      assert.equal(switched.interim.length, 1);
      assert.match(switched.interim[0]!.line, /^HTTP\/1\.1 101 /);
      // The service's answer to the raw line it read after switching, passed back raw as well.
      assert.equal(switched.status, 200);
      assert.equal(switched.body.toString(), `ok ECHO /raw conn=${lastRequest(service, '/raw').conn}`);
      switcher.close();
      assert.deepEqual(service.errors, []);
    }),
);

test(
  'a body cut short never looks whole to a visitor who reads it to the close (HTTP/1.0, an upgrade the service turned down): its connection is reset, not ended',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const world = await startWorld(h, { idle_timeout: '2s' });
      await plainGet(h, world, '/warm-up');
      const upgrade = ['-H', 'Connection: Upgrade', '-H', 'Upgrade: x-test'];
      // The service's chunks reach these visitors without chunk framing, their end being the connection's.
      const cases: Array<[string, string, string[]]> = [
        ['HTTP/1.0, the service closed mid-body', '/cut-chunked', ['--http1.0']],
        ['upgrade turned down, the service closed mid-body', '/cut-chunked', upgrade],
        ['HTTP/1.0, the service stalled mid-body (cut at idle_timeout)', '/stall-chunked', ['--http1.0']],
        [
          'upgrade turned down, the service stalled mid-body (cut at idle_timeout)',
          '/stall-chunked',
          upgrade,
        ],
      ];
      const cuts = [];
      for (const [what, path, args] of cases) {
        const cut = await visit(h, world.port, path, args);
        t.diagnostic(
          `${what}: curl exit ${cut.code}, status ${cut.status}, ${cut.body.length} bytes, ${cut.stderr.trim()}`,
        );
        cuts.push({ what, cut });
      }
      for (const { what, cut } of cuts) {
        assert.equal(cut.status, 200, `${what}: status ${cut.status}`);
        assert.notEqual(cut.code, 0, `${what}: curl took ${cut.body.length} bytes for the whole body`);
        assert.ok(CUT_BODY.subarray(0, cut.body.length).equals(cut.body), `${what}: the bytes that came`);
      }
      await plainGet(h, world, '/after-cuts');
      assert.deepEqual(world.service.errors, []);
    }),
);

/**
 * A service that answers each request as soon as its head is in and closes without reading the body, as a
 * size or auth check does: with an upload still coming, the close is a reset. /silent: the reset alone.
 * On a TCP port, or on the Unix socket `socketPath`; gives the proxy's `local` for it.
 */
async function startEarlyAnswerService(h: Harness, socketPath?: string): Promise<string> {
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    const reader = new ByteReader(socket);
    void reader.until('\r\n\r\n').then((raw) => {
      if (!raw) return;
      const [, target = ''] = parseHead(raw).line.split(' ');
      if (target === '/silent') {
        // A Unix socket has no RST: closed with the upload unread, its peer's next read fails ECONNRESET.
        if (socketPath === undefined) socket.resetAndDestroy();
        else socket.destroy();
        return;
      }
      const status = target === '/auth' ? '401 Unauthorized' : '413 Content Too Large';
      const body = `refused ${target}\n`;
      socket.write(
        `HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
        () => socket.destroy(),
      );
    });
  });
  h.onCleanup(() => new Promise<void>((resolve) => server.close(() => resolve())));
  if (socketPath !== undefined) {
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    return `unix:${socketPath}`;
  }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

for (const over of ['a TCP port', 'a Unix socket'] as const)
  test(
    `an answer the service gave before it read the upload reaches the visitor though the service reset the connection under the rest; 502 only when no answer came (${over})`,
    { timeout: 120_000 },
    (t) =>
      withHarness(t, async (h) => {
        // A Unix socket's peer that closes with the upload unread fails the next write with EPIPE, not ECONNRESET.
        const local = await startEarlyAnswerService(
          h,
          over === 'a Unix socket' ? h.path('early.sock') : undefined,
        );
        const server = await startRoutedServer(h);
        const token = await issueRoutedToken(server, { name: 'early', hosts: ['app.test'] });
        await startRoutedClient(h, {
          server: server.url,
          token,
          proxies: [{ name: 'app', type: 'http', local, hosts: ['app.test'] }],
        });
        const port = server.httpPort!;
        // Far more than the socket buffers on the way hold: the upload is still being written when the reset
        // comes, so the next write to the service fails while its answer waits unread.
        const file = h.path('upload.bin');
        await writeFile(file, patternBytes(16 * 1024 * 1024, 'early'));
        const chunked = ['-H', 'Transfer-Encoding: chunked'];
        const statuses = new Map<string, number>();
        const tally = (key: string) => statuses.set(key, (statuses.get(key) ?? 0) + 1);
        // Before the fix about one try in five lost the answer (a 502): 24 tries miss that with p < 0.5 %.
        for (let i = 0; i < 12; i++) {
          for (const [path, expected, args] of [
            ['/size', 413, []],
            ['/size', 413, chunked],
            ['/auth', 401, chunked],
          ] as const) {
            const r = await visit(h, port, path, ['-T', file, ...args]);
            const framing = args.length > 0 ? 'chunked' : 'length';
            tally(`${path} ${framing}: ${r.status}`);
            assert.equal(
              r.status,
              expected,
              `try ${i}, ${path} (${framing}): status ${r.status}, ${r.stderr}`,
            );
            assert.equal(r.body.toString(), `refused ${path}\n`);
          }
        }
        // No answer at all: the reset is passed on as the 502 it is.
        for (const args of [[], chunked]) {
          const r = await visit(h, port, '/silent', ['-T', file, ...args]);
          tally(`/silent: ${r.status}`);
          assert.equal(r.status, 502, `/silent: status ${r.status}, ${r.stderr}`);
        }
        t.diagnostic(JSON.stringify(Object.fromEntries(statuses)));
      }),
  );
