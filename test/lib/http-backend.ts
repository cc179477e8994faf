// Local services behind http/udp proxies: an HTTP server that reports what it received (and hashes
// uploads, streams downloads, echoes WebSocket messages), and a UDP echo that tags each reply.
import { createHash } from 'node:crypto';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { type AddressInfo, isIPv6 } from 'node:net';
import { WebSocketServer } from 'ws';
import { curl } from './curl.js';
import type { Harness } from './processes.js';
import { patternBytes } from './sha-stream.js';

export interface SeenRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  /** Which TCP connection (1, 2, ...) of this backend carried it. */
  conn: number;
  /** The backend's own name, so a test can tell which proxy answered. */
  backend: string;
}

export interface HttpBackend {
  server: Server;
  port: number;
  /** TCP connections accepted so far. */
  connections: number;
  requests: SeenRequest[];
  /** /stream downloads whose connection closed before the last byte. */
  cutStreams: number;
  close(): Promise<void>;
}

/**
 * GET /anything: JSON of what arrived (SeenRequest). POST /sha256: {bytes, sha256} of the body.
 * GET /stream?bytes=N&chunks=K: N pattern bytes ("stream" seed) in K chunks, 20 ms apart, chunked.
 * GET /fields?status=N&field=Name:value&field=...: an answer of that status (200) with those header fields.
 * Upgrade on /ws: a WebSocket echo that prefixes "echo:".
 */
export async function startHttpBackend(name: string): Promise<HttpBackend> {
  let connections = 0;
  let cutStreams = 0;
  const requests: SeenRequest[] = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const conn = (req.socket as unknown as { backendConn: number }).backendConn;
    const seen: SeenRequest = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      conn,
      backend: name,
    };
    requests.push(seen);
    if (req.method === 'POST' && url.pathname === '/sha256') {
      const hash = createHash('sha256');
      let bytes = 0;
      req.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        bytes += chunk.length;
      });
      req.on('end', () => {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ bytes, sha256: hash.digest('hex'), backend: name }));
      });
      return;
    }
    if (url.pathname === '/fields') {
      // As many fields of one name as asked, spelt as asked: what a proxy setting fields must replace.
      const fields = url.searchParams.getAll('field').flatMap((field) => {
        const colon = field.indexOf(':');
        return [field.slice(0, colon), field.slice(colon + 1)];
      });
      const status = Number(url.searchParams.get('status') ?? 200);
      req.resume();
      res.writeHead(status, [...fields, 'Content-Type', 'text/plain']);
      res.end(status === 304 ? undefined : `fields of ${name}\n`);
      return;
    }
    if (url.pathname === '/stream') {
      const total = Number(url.searchParams.get('bytes') ?? 1024);
      const chunks = Number(url.searchParams.get('chunks') ?? 4);
      const data = patternBytes(total, 'stream');
      res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
      let sent = 0;
      let i = 0;
      const step = Math.ceil(total / chunks);
      const timer = setInterval(() => {
        const piece = data.subarray(sent, Math.min(total, sent + step));
        sent += piece.length;
        i += 1;
        if (sent >= total || i >= chunks) {
          clearInterval(timer);
          res.end(piece);
        } else res.write(piece);
      }, 20);
      res.on('close', () => {
        clearInterval(timer);
        if (sent < total) cutStreams += 1;
      });
      return;
    }
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'Content-Type': 'application/json', 'X-Backend': name });
      res.end(JSON.stringify(seen));
    });
  });
  server.on('connection', (socket) => {
    connections += 1;
    (socket as unknown as { backendConn: number }).backendConn = connections;
  });
  const wss = new WebSocketServer({ server, path: '/ws' });
  wss.on('connection', (ws, req) => {
    ws.send(`hello from ${name} xff=${req.headers['x-forwarded-for']}`);
    ws.on('message', (data, isBinary) => {
      if (isBinary) ws.send(data, { binary: true });
      else ws.send(`echo:${data.toString()}`);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const state: HttpBackend = {
    server,
    port: (server.address() as AddressInfo).port,
    get connections() {
      return connections;
    },
    get cutStreams() {
      return cutStreams;
    },
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        for (const client of wss.clients) client.terminate();
        wss.close();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  return state;
}

/**
 * Which startHttpBackend served `GET path` for `host` through the http vhost port `httpPort`, curl as the
 * visitor: its name, or "HTTP <status>" when none did (404: no route, 502: offline...).
 */
export async function backendServing(
  httpPort: number | undefined,
  host: string,
  path = '/',
): Promise<string> {
  const r = await curl(['-H', `Host: ${host}`], `http://127.0.0.1:${httpPort}${path}`);
  return r.status === 200 ? String(JSON.parse(r.body).backend) : `HTTP ${r.status}`;
}

export interface UdpEcho {
  socket: UdpSocket;
  port: number;
  /** Distinct sender address:port pairs seen. */
  senders: Set<string>;
  received: number;
  close(): Promise<void>;
}

/** A UDP echo: replies `${tag}|${payload}` to whoever sent the datagram. */
export async function startUdpEcho(tag = 'echo', host = '127.0.0.1', port = 0): Promise<UdpEcho> {
  const socket = createSocket(isIPv6(host) ? 'udp6' : 'udp4');
  const state: UdpEcho = {
    socket,
    port: 0,
    senders: new Set(),
    received: 0,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
  socket.on('message', (msg, rinfo) => {
    state.received += 1;
    state.senders.add(`${rinfo.address}:${rinfo.port}`);
    socket.send(Buffer.concat([Buffer.from(`${tag}|`), msg]), rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => socket.bind(port, host, resolve));
  state.port = socket.address().port;
  return state;
}

/** A UDP visitor on an ephemeral port of `host`, keeping every reply it gets. */
export function udpClient(host = '127.0.0.1'): Promise<{ socket: UdpSocket; replies: Buffer[] }> {
  const socket = createSocket('udp4');
  const replies: Buffer[] = [];
  socket.on('message', (msg) => replies.push(msg));
  return new Promise((resolve) => socket.bind(0, host, () => resolve({ socket, replies })));
}

/** The raw bytes of a WebSocket upgrade request for `path` on `host`; `extra`: more header lines, CRLF-ended. */
export function rawUpgradeRequest(path: string, host: string, extra = ''): string {
  return (
    `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
    `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${extra}\r\n`
  );
}

/** A Node HTTP server that says which listener served it, on `where` (a socket path or a TCP port). */
export async function startTaggedHttp(h: Harness, tag: string, where: string | number): Promise<Server> {
  const server = createServer((req, res) => {
    res.end(`${tag} ${req.method} ${req.url} xff=${req.headers['x-forwarded-for']}\n`);
  });
  await new Promise<void>((resolve) =>
    typeof where === 'number' ? server.listen(where, '127.0.0.1', resolve) : server.listen(where, resolve),
  );
  h.onCleanup(() => {
    server.closeAllConnections();
    server.close();
  });
  return server;
}
