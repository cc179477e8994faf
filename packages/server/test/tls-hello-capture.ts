// Captures real ClientHellos: a plain net.Server on loopback records what a real TLS client (openssl
// s_client, Node's tls.connect) sends first. Completeness is judged by an independent record walk (not by
// the parser under test), so a parser bug cannot hide behind its own capture.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';

const CAPTURE_TIMEOUT_MS = 5000;

/** True once `buf` holds TLS records whose handshake payload covers the first handshake message. */
export function holdsWholeFirstHandshake(buf: Buffer): boolean {
  let offset = 0;
  let payload = 0;
  let messageLength = -1;
  const head: number[] = [];
  while (offset + 5 <= buf.length) {
    const length = buf.readUInt16BE(offset + 3);
    const end = Math.min(buf.length, offset + 5 + length);
    for (let i = offset + 5; i < end && head.length < 4; i++) head.push(buf[i]!);
    payload += end - (offset + 5);
    if (messageLength < 0 && head.length === 4)
      messageLength = 4 + ((head[1]! << 16) | (head[2]! << 8) | head[3]!);
    if (messageLength >= 0 && payload >= messageLength) return true;
    offset += 5 + length;
  }
  return false;
}

/**
 * Listens on 127.0.0.1:0, runs `startClient(port)`, and resolves with the first handshake bytes the client
 * sent (whole records). The client is stopped by `stop` afterwards.
 */
export async function captureClientHello<C>(
  startClient: (port: number) => C,
  stop: (client: C) => Promise<void> | void,
): Promise<Buffer> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  let client: C | undefined;
  try {
    const captured = new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error('no whole ClientHello captured in time')),
        CAPTURE_TIMEOUT_MS,
      );
      server.once('connection', (socket) => {
        const chunks: Buffer[] = [];
        socket.on('data', (chunk: Buffer) => {
          chunks.push(chunk);
          const all = Buffer.concat(chunks);
          if (holdsWholeFirstHandshake(all)) {
            clearTimeout(timer);
            socket.destroy();
            resolve(all);
          }
        });
        socket.on('error', () => {});
      });
    });
    client = startClient(port);
    return await captured;
  } finally {
    if (client !== undefined) await stop(client);
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** A ClientHello from `openssl s_client` with extra arguments (e.g. -servername, -alpn, -noservername). */
export function captureFromOpenssl(args: string[]): Promise<Buffer> {
  return captureClientHello(
    (port) =>
      spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, ...args], {
        stdio: ['pipe', 'ignore', 'pipe'],
      }),
    (child: ChildProcess) => stopChild(child),
  );
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
  await exited;
  clearTimeout(timer);
}

/** A ClientHello from Node's own TLS client. */
export function captureFromNode(options: tls.ConnectionOptions): Promise<Buffer> {
  return captureClientHello(
    (port) => {
      const socket = tls.connect({ host: '127.0.0.1', port, ...options });
      socket.on('error', () => {});
      return socket;
    },
    (socket: tls.TLSSocket) => {
      socket.destroy();
    },
  );
}

/** Splits `buf` (whole TLS records) into [recordType, payloadLength] pairs, for asserting record layouts. */
export function recordLengths(buf: Buffer): number[] {
  const lengths: number[] = [];
  for (let offset = 0; offset + 5 <= buf.length; offset += 5 + buf.readUInt16BE(offset + 3)) {
    lengths.push(buf.readUInt16BE(offset + 3));
  }
  return lengths;
}

export interface TestCertificate {
  cert: Buffer;
  key: Buffer;
}

/** A throwaway self-signed certificate for `commonName`, made by the real openssl CLI. */
export async function makeCertificate(commonName: string): Promise<TestCertificate> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'porthole-tls-'));
  try {
    const certPath = path.join(dir, 'cert.pem');
    const keyPath = path.join(dir, 'key.pem');
    await promisify(execFile)('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '2',
      '-subj',
      `/CN=${commonName}`,
      '-addext',
      `subjectAltName=DNS:${commonName}`,
      '-keyout',
      keyPath,
      '-out',
      certPath,
    ]);
    return { cert: await readFile(certPath), key: await readFile(keyPath) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
