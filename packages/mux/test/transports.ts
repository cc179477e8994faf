import { once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import net from 'node:net';
import { Duplex } from 'node:stream';
import {
  acceptWebSocket,
  checkUpgradeRequest,
  openWebSocket,
  Session,
  type SessionOptions,
  type WebSocketStream,
} from '../src/index.js';
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
  /** Our WebSocketStream on each side. */
  clientConn: WebSocketStream;
  serverConn: WebSocketStream;
  /** The raw TCP socket under the server side (bytesRead counts what it pulled off the wire). */
  serverSocket: net.Socket;
  close(): void;
}

export interface WebSocketListener {
  port: number;
  /** Drops every accepted connection and stops listening. */
  close(): void;
}

/** A raw TCP client that has sent an upgrade request (its 101 and what follows are left to the caller). */
export async function rawUpgrade(port: number): Promise<net.Socket> {
  const client = net.connect({ host: '127.0.0.1', port });
  await once(client, 'connect');
  client.write(
    'GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
  );
  return client;
}

/** A loopback HTTP server that accepts WebSocket upgrades on any path with our own handshake. */
export async function listenWebSocket(
  onConn: (conn: WebSocketStream, socket: net.Socket) => void,
): Promise<WebSocketListener> {
  const sockets = new Set<net.Socket>();
  const server = createHttpServer();
  server.on('upgrade', (req, socket: net.Socket, head: Buffer) => {
    const check = checkUpgradeRequest(req);
    if (!check.ok) {
      socket.end(`HTTP/1.1 ${check.status} Bad Request\r\nConnection: close\r\n\r\n`);
      return;
    }
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    onConn(acceptWebSocket(socket, head, check.key), socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    close() {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

/** A connected pair of our WebSocketStreams over loopback. */
export async function wsPair(): Promise<WsPair> {
  let onAccepted!: (value: [WebSocketStream, net.Socket]) => void;
  const accepted = new Promise<[WebSocketStream, net.Socket]>((resolve) => {
    onAccepted = resolve;
  });
  const listener = await listenWebSocket((conn, socket) => onAccepted([conn, socket]));
  const [[serverConn, serverSocket], clientConn] = await withTimeout(
    Promise.all([accepted, dialWebSocket(`ws://127.0.0.1:${listener.port}/`)]),
    5000,
    'websocket pair',
  );
  return {
    clientConn,
    serverConn,
    serverSocket,
    close() {
      clientConn.destroy();
      serverConn.destroy();
      listener.close();
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

/** Dials a WebSocket with our own client handshake. */
export function dialWebSocket(url: string, timeoutMs = 10_000): Promise<WebSocketStream> {
  return openWebSocket(url, { timeoutMs });
}
