// Local TCP services that stand behind the tunnel, and clients that talk to them through it.
import net from 'node:net';
import { patternBytes, sha256Hex } from './sha-stream.js';

export interface EchoServer {
  server: net.Server;
  port: number;
  host: string;
  /** connections accepted so far */
  accepted: number;
  /** remote addresses of accepted connections */
  peers: string[];
  close(): Promise<void>;
}

/**
 * Echo with half-close: bytes go back as they come; the peer's FIN ends our write side after the last
 * byte. With `banner`, the line `${banner}\n` is written first (proves which service answered).
 */
export async function startEchoServer(host = '127.0.0.1', port = 0, banner?: string): Promise<EchoServer> {
  const sockets = new Set<net.Socket>();
  const state: EchoServer = {
    server: net.createServer({ allowHalfOpen: true }, (sock) => {
      state.accepted += 1;
      state.peers.push(`${sock.remoteAddress}:${sock.remotePort}`);
      sockets.add(sock);
      sock.on('close', () => sockets.delete(sock));
      sock.on('error', () => {});
      if (banner !== undefined) sock.write(`${banner}\n`);
      sock.pipe(sock);
    }),
    port: 0,
    host,
    accepted: 0,
    peers: [],
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        state.server.close(() => resolve());
      }),
  };
  await new Promise<void>((resolve, reject) => {
    state.server.once('error', reject);
    state.server.listen(port, host, () => resolve());
  });
  state.port = (state.server.address() as net.AddressInfo).port;
  return state;
}

export type ConnectResult = 'connected' | 'refused' | 'timeout' | 'unreachable' | `error:${string}`;

/** Try a TCP connect; never throws. */
export function tryConnect(host: string, port: number, timeoutMs: number): Promise<ConnectResult> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const timer = setTimeout(() => {
      sock.destroy();
      resolve('timeout');
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.destroy();
      resolve('connected');
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (err.code === 'ECONNREFUSED') resolve('refused');
      else if (err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH') resolve('unreachable');
      else resolve(`error:${err.code ?? err.message}`);
    });
  });
}

export interface EchoResult {
  ok: boolean;
  ms: number;
  sent: number;
  received: number;
  banner?: string;
  error?: string;
}

/**
 * Connect, send `bytes` pattern bytes, shut the write side, read until the peer's FIN and check the
 * echo byte for byte (after the optional banner line). Never throws; bounded by timeoutMs.
 */
export function echoRoundTrip(
  host: string,
  port: number,
  bytes: number,
  opts: { seed?: string; timeoutMs?: number; banner?: boolean } = {},
): Promise<EchoResult> {
  const payload = patternBytes(bytes, opts.seed ?? `echo-${bytes}`);
  const started = Date.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let received = 0;
    let settled = false;
    const sock = net.connect({ host, port, allowHalfOpen: true });
    const finish = (r: Omit<EchoResult, 'ms' | 'sent'>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ ...r, ms: Date.now() - started, sent: bytes });
    };
    const timer = setTimeout(
      () => finish({ ok: false, received, error: `timeout after ${opts.timeoutMs ?? 10_000} ms` }),
      opts.timeoutMs ?? 10_000,
    );
    sock.on('connect', () => sock.end(payload));
    sock.on('data', (d: Buffer) => {
      chunks.push(d);
      received += d.length;
    });
    sock.on('error', (err: NodeJS.ErrnoException) =>
      finish({ ok: false, received, error: err.code ?? err.message }),
    );
    sock.on('end', () => {
      let reply = Buffer.concat(chunks);
      let banner: string | undefined;
      if (opts.banner) {
        const nl = reply.indexOf(10);
        if (nl < 0) return finish({ ok: false, received, error: 'no banner line in the reply' });
        banner = reply.subarray(0, nl).toString('utf8');
        reply = reply.subarray(nl + 1);
      }
      const same = reply.length === payload.length && sha256Hex(reply) === sha256Hex(payload);
      finish({
        ok: same,
        received,
        banner,
        error: same ? undefined : `echo mismatch: sent ${payload.length} bytes, got ${reply.length} back`,
      });
    });
  });
}

/** A connection kept open to send small echo pings, to prove a tunnel keeps working over time. */
export class EchoPinger {
  private readonly sock: net.Socket;
  private buffer = '';
  private pending: { expect: string; resolve: (ok: boolean) => void; timer: NodeJS.Timeout } | undefined;
  sent = 0;
  failures: string[] = [];

  private constructor(sock: net.Socket) {
    this.sock = sock;
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buffer += d;
      if (this.pending && this.buffer.includes(this.pending.expect)) {
        const p = this.pending;
        this.pending = undefined;
        clearTimeout(p.timer);
        this.buffer = '';
        p.resolve(true);
      }
    });
    sock.on('error', (err) => this.failures.push(`socket error: ${err.message}`));
    sock.on('close', () => this.failures.push('socket closed'));
  }

  static connect(host: string, port: number, timeoutMs = 5000): Promise<EchoPinger> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host, port });
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error(`connect to ${host}:${port} timed out`));
      }, timeoutMs);
      sock.once('connect', () => {
        clearTimeout(timer);
        resolve(new EchoPinger(sock));
      });
      sock.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  /** Send one line and wait for its echo; records a failure instead of throwing. */
  ping(timeoutMs = 3000): Promise<boolean> {
    this.sent += 1;
    const expect = `ping-${this.sent}-${Date.now()}\n`;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pending = undefined;
        this.failures.push(`ping ${this.sent} not echoed within ${timeoutMs} ms`);
        resolve(false);
      }, timeoutMs);
      this.pending = { expect, resolve, timer };
      this.sock.write(expect);
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

/** Waits (10 s at most) until something accepts connections at `target`: a TCP port or a Unix socket's path. */
export async function waitUntilAccepting(
  target: { host: string; port: number } | { path: string },
  what: string,
): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const accepted = await new Promise<boolean>((resolve) => {
      const sock = net.connect(target, () => {
        sock.destroy();
        resolve(true);
      });
      sock.once('error', () => resolve(false));
    });
    if (accepted) return;
    if (Date.now() > deadline) throw new Error(`${what} did not listen on ${JSON.stringify(target)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A download that never ends: writes while the socket takes it, counting what it handed over. */
export function startEndlessDownload() {
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  const stats = { written: 0, connections: 0 };
  const server = net.createServer((sock) => {
    stats.connections += 1;
    sock.on('error', () => {});
    const pump = () => {
      while (!sock.destroyed) {
        const more = sock.write(chunk);
        stats.written += chunk.length;
        if (!more) return;
      }
    };
    sock.on('drain', pump);
    pump();
  });
  return { server, stats };
}
