// Timed transfers through a public port to a service that checks or makes the bytes: what the bandwidth
// caps (a proxy's bandwidth_limit, the operator's per-client cap) are measured with.
import net from 'node:net';
import type { Harness } from './processes.js';
import { HashSink, PatternSource, patternBytes, sha256Hex } from './sha-stream.js';

export const MIB = 1024 * 1024;

/**
 * The service behind the proxies. The first line says what a connection is for: "up\n", then bytes until the
 * visitor's FIN, answered with their sha256 in hex; or "down BYTES SEED\n", answered with BYTES pattern bytes.
 */
export async function startTransferService(h: Harness): Promise<number> {
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

/** `bytes` to the service through the public `port`, timed from the connect to the service's digest. */
export async function upload(port: number, bytes: number, seed: string): Promise<Transfer> {
  const started = performance.now();
  const sock = await connected(port);
  sock.write('up\n');
  const source = new PatternSource(bytes, seed);
  source.pipe(sock);
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
  return { ms: performance.now() - started, sent: source.digest(), received: reply.trim() };
}

/** `bytes` from the service through the public `port`, timed from the connect to the service's FIN. */
export async function download(port: number, bytes: number, seed: string): Promise<Transfer> {
  const started = performance.now();
  const sock = await connected(port);
  sock.end(`down ${bytes} ${seed}\n`);
  const sink = new HashSink();
  sock.pipe(sink);
  await new Promise<void>((resolve, reject) => {
    sink.on('finish', resolve);
    sock.on('error', reject);
  });
  return {
    ms: performance.now() - started,
    sent: sha256Hex(patternBytes(bytes, seed)),
    received: sink.digest(),
  };
}
