import { once } from 'node:events';
import net from 'node:net';
import { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer } from 'ws';
import { Session, type SessionOptions, webSocketDuplex } from '../src/index.js';
import { withTimeout } from './timeouts.js';

/** A connected pair of loopback TCP sockets: [dialer, acceptor]. */
export async function tcpPair(): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const dialer = net.connect(port, '127.0.0.1');
  const [[acceptor]] = await withTimeout(Promise.all([accepted, once(dialer, 'connect')]), 5000, 'tcp pair');
  server.close();
  dialer.setNoDelay(true);
  acceptor.setNoDelay(true);
  return [dialer, acceptor];
}

export interface WsPair {
  client: WebSocket;
  server: WebSocket;
  /** webSocketDuplex of each side, attached as soon as the socket opened. */
  clientConn: Duplex;
  serverConn: Duplex;
  /** The raw TCP socket under the server side (bytesRead counts what it pulled off the wire). */
  serverSocket: net.Socket;
  close(): void;
}

/** A connected pair of loopback `ws` WebSockets (perMessageDeflate off, as porthole runs them). */
export async function wsPair(): Promise<WsPair> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  await once(wss, 'listening');
  const { port } = wss.address() as net.AddressInfo;
  const accepted = new Promise<[WebSocket, Duplex, net.Socket]>((resolve) =>
    wss.once('connection', (ws, req) => resolve([ws, webSocketDuplex(ws), req.socket as net.Socket])),
  );
  const [[server, serverConn, serverSocket], { ws: client, conn: clientConn }] = await withTimeout(
    Promise.all([accepted, dialWebSocket(`ws://127.0.0.1:${port}/`)]),
    5000,
    'websocket pair',
  );
  wss.close();
  return {
    client,
    server,
    clientConn,
    serverConn,
    serverSocket,
    close() {
      client.terminate();
      server.terminate();
    },
  };
}

/**
 * Two in-process Duplex ends: what one end writes, the other end reads, chunk for chunk (no merging or
 * splitting), so a test controls exactly how the bytes are chunked.
 */
export function memoryPair(): [MemoryEnd, MemoryEnd] {
  const a = new MemoryEnd();
  const b = new MemoryEnd();
  a.other = b;
  b.other = a;
  return [a, b];
}

export class MemoryEnd extends Duplex {
  other!: MemoryEnd;
  constructor() {
    super({ allowHalfOpen: false });
  }
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (!this.other.destroyed) this.other.push(chunk);
    callback();
  }
  override _final(callback: (err?: Error | null) => void): void {
    if (!this.other.destroyed) this.other.push(null);
    callback();
  }
  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    if (!this.other.destroyed) this.other.destroy();
    callback(err);
  }
}

export interface SessionPair {
  client: Session;
  server: Session;
  /** The transport under the server session (a socket, or the raw socket under the WebSocket). */
  serverSocket: net.Socket;
  close(): void;
}

/** Two of our sessions, client and server, over loopback TCP or a loopback WebSocket. */
export async function sessionPair(
  transport: 'tcp' | 'ws',
  clientOpts: Partial<SessionOptions> = {},
  serverOpts: Partial<SessionOptions> = {},
): Promise<SessionPair> {
  let clientConn: Duplex;
  let serverConn: Duplex;
  let serverSocket: net.Socket;
  let closeTransport: () => void;
  if (transport === 'tcp') {
    const [a, b] = await tcpPair();
    clientConn = a;
    serverConn = b;
    serverSocket = b;
    closeTransport = () => {
      a.destroy();
      b.destroy();
    };
  } else {
    const pair = await wsPair();
    clientConn = pair.clientConn;
    serverConn = pair.serverConn;
    serverSocket = pair.serverSocket;
    closeTransport = () => pair.close();
  }
  const client = new Session(clientConn, { keepAliveInterval: 0, ...clientOpts, client: true });
  const server = new Session(serverConn, { keepAliveInterval: 0, ...serverOpts, client: false });
  return {
    client,
    server,
    serverSocket,
    close() {
      client.close();
      server.close();
      closeTransport();
    },
  };
}

/**
 * Dials a WebSocket and wraps it with webSocketDuplex inside the 'open' handler itself. Attaching later
 * (after `await once(ws, 'open')`) loses any message that arrived together with the 101 response: ws
 * starts emitting 'message' on the next tick, before a promise continuation runs.
 */
export function dialWebSocket(url: string, timeoutMs = 10_000): Promise<{ ws: WebSocket; conn: Duplex }> {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  return withTimeout(
    new Promise((resolve, reject) => {
      ws.once('open', () => resolve({ ws, conn: webSocketDuplex(ws) }));
      ws.once('error', reject);
    }),
    timeoutMs,
    `websocket open to ${url}`,
  );
}
