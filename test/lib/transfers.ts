// Timed transfers through a public port to a service that checks or makes the bytes: what the bandwidth
// caps (a proxy's bandwidth_limit, the operator's per-client cap) are measured with.
import net from 'node:net';
import type { Harness } from './processes.js';
import { HashSink, PatternSource, patternBytes, sha256Hex } from './sha-stream.js';

export const MIB = 1024 * 1024;

/**
 * The service behind the proxies. The first line says what a connection is for: "up\n", then bytes until the
 * visitor's FIN, answered with their sha256 in hex; "down BYTES SEED\n", answered with BYTES pattern bytes;
 * "file NAME\n", answered with `files[NAME]` (text, say, where pattern bytes do not compress); or "echo\n",
 * answered with every byte that follows, for as long as the connection lasts.
 */
export async function startTransferService(h: Harness, files: Record<string, Buffer> = {}): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    sock.on('error', () => {});
    let head = Buffer.alloc(0);
    const onHead = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const newline = head.indexOf('\n');
      if (newline < 0) return;
      sock.off('data', onHead);
      const [command, bytes, seed] = head.subarray(0, newline).toString().split(' ');
      const rest = head.subarray(newline + 1);
      if (command === 'up') {
        const sink = new HashSink();
        sink.write(rest);
        sock.pipe(sink);
        sink.on('finish', () => sock.end(`${sink.digest()}\n`));
      } else if (command === 'echo') {
        sock.write(rest);
        sock.pipe(sock);
      } else if (command === 'file') {
        sock.resume();
        sock.end(files[bytes ?? ''] ?? Buffer.alloc(0));
      } else {
        sock.resume();
        new PatternSource(Number(bytes), seed ?? '').pipe(sock);
      }
    };
    sock.on('data', onHead);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  h.onCleanup(() => server.close());
  return (server.address() as net.AddressInfo).port;
}

export interface Transfer {
  ms: number;
  /** sha256 of the bytes sent and of what arrived at the other end */
  sent: string;
  received: string;
}

export function connected(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true }, () => resolve(sock));
    sock.once('error', reject);
  });
}

/**
 * `bytes` pattern bytes of `seed` (or the bytes given) to the service through the public `port`, timed from
 * the connect to the service's digest.
 */
export async function upload(port: number, bytes: number | Buffer, seed = ''): Promise<Transfer> {
  const started = performance.now();
  const sock = await connected(port);
  sock.write('up\n');
  const source = typeof bytes === 'number' ? new PatternSource(bytes, seed) : undefined;
  if (source) source.pipe(sock);
  else sock.end(bytes as Buffer);
  let reply = '';
  sock.setEncoding('utf8');
  sock.on('data', (text: string) => {
    reply += text;
  });
  await new Promise<void>((resolve, reject) => {
    sock.on('end', resolve);
    sock.on('error', reject);
  });
  sock.destroy();
  const sent = source ? source.digest() : sha256Hex(bytes as Buffer);
  return { ms: performance.now() - started, sent, received: reply.trim() };
}

/** `bytes` from the service through the public `port`, timed from the connect to the service's FIN. */
export function download(port: number, bytes: number, seed: string): Promise<Transfer> {
  return fetch(port, `down ${bytes} ${seed}\n`, sha256Hex(patternBytes(bytes, seed)));
}

/** The service's file `name` (whose sha256 is `sent`) through the public `port`, timed likewise. */
export function downloadFile(port: number, name: string, sent: string): Promise<Transfer> {
  return fetch(port, `file ${name}\n`, sent);
}

async function fetch(port: number, request: string, sent: string): Promise<Transfer> {
  const started = performance.now();
  const sock = await connected(port);
  sock.end(request);
  const sink = new HashSink();
  sock.pipe(sink);
  await new Promise<void>((resolve, reject) => {
    sink.on('finish', resolve);
    sock.on('error', reject);
  });
  return { ms: performance.now() - started, sent, received: sink.digest() };
}
