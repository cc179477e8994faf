// One side of the mux benchmark, in its own process (forked by mux.ts, results over IPC):
//   node mux-peer.js receiver '<json config>'   listens on 127.0.0.1:0, counts what arrives, reports when done
//   node mux-peer.js sender '<json config>'     connects, sends for `seconds`, ends, reports what it sent
// Raw mode sends payload-sized messages with the `ws` library, backpressure from ws.bufferedAmount; mux mode
// writes the same payload to `streams` streams of one Session over our WebSocketStream (what porthole runs).
// Each process reports its own peak RSS.

import { createServer } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { acceptWebSocket, checkUpgradeRequest, openWebSocket, Session, type Stream } from '@porthole/mux';
import { WebSocket, WebSocketServer } from 'ws';

export interface PeerConfig {
  mode: 'raw' | 'mux';
  streams: number;
  seconds: number;
  payload: number;
  /** Bytes queued in the WebSocket before the sender waits (raw: bufferedAmount; mux: WebSocketStream). */
  highWaterMark: number;
  /** maxStreamWindow on both sessions; absent = the implementation's default. */
  window?: number;
  port?: number;
}

export type PeerMessage =
  | { type: 'listening'; port: number }
  | { type: 'result'; role: 'sender'; sent: number; maxRss: number; cpuSeconds: number; errors: string[] }
  | {
      type: 'result';
      role: 'receiver';
      received: number;
      seconds: number;
      maxRss: number;
      cpuSeconds: number;
      errors: string[];
    };

function send(message: PeerMessage): Promise<void> {
  return new Promise((resolve) => process.send!(message, () => resolve()));
}

function usage(): { maxRss: number; cpuSeconds: number } {
  const u = process.resourceUsage();
  return { maxRss: u.maxRSS * 1024, cpuSeconds: (u.userCPUTime + u.systemCPUTime) / 1e6 };
}

function sessionOptions(cfg: PeerConfig, client: boolean) {
  return { client, keepAliveInterval: 0, ...(cfg.window !== undefined && { maxStreamWindow: cfg.window }) };
}

async function receiver(cfg: PeerConfig): Promise<void> {
  const http = createServer();
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1 << 30 });
  http.listen(0, '127.0.0.1');
  await new Promise<void>((resolve) => http.once('listening', () => resolve()));
  let received = 0;
  let firstAt = 0;
  let lastAt = 0;
  const errors: string[] = [];
  const count = (n: number) => {
    const now = performance.now();
    if (firstAt === 0) firstAt = now;
    lastAt = now;
    received += n;
  };
  const done = new Promise<void>((resolve) => {
    http.once('upgrade', (req, socket: Duplex, head: Buffer) => {
      if (cfg.mode === 'raw') {
        wss.handleUpgrade(req, socket, head, (ws) => {
          ws.on('error', (err) => errors.push(`ws: ${err.message}`));
          ws.on('message', (data: Buffer) => count(data.length));
          ws.once('close', () => resolve());
        });
        return;
      }
      const check = checkUpgradeRequest(req);
      if (!check.ok) throw new Error(`bad upgrade: ${check.reason}`);
      const session = new Session(acceptWebSocket(socket, head, check.key), sessionOptions(cfg, false));
      session.on('error', (err: Error) => errors.push(`session: ${err.message}`));
      session.on('stream', (s: Stream) => {
        s.on('data', (chunk: Buffer) => count(chunk.length));
        s.on('end', () => s.end()); // our FIN tells the sender everything arrived
        s.on('error', (err: Error) => errors.push(`stream ${s.id}: ${err.message}`));
      });
      session.once('close', () => resolve());
    });
  });
  await send({ type: 'listening', port: (http.address() as { port: number }).port });
  await done;
  http.close();
  await send({
    type: 'result',
    role: 'receiver',
    received,
    seconds: (lastAt - firstAt) / 1000,
    ...usage(),
    errors,
  });
}

async function sender(cfg: PeerConfig): Promise<void> {
  const payload = Buffer.alloc(cfg.payload);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 131 + 7) & 0xff;
  const errors: string[] = [];
  let sent = 0;
  let stopped = false;
  const url = `ws://127.0.0.1:${cfg.port}/`;

  if (cfg.mode === 'raw') {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.on('error', (err) => errors.push(`ws: ${err.message}`));
    const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
    await new Promise<void>((resolve) => ws.once('open', () => resolve()));
    setTimeout(() => {
      stopped = true;
    }, cfg.seconds * 1000);
    await new Promise<void>((resolve) => {
      let pending = 0;
      const onSent = (err?: Error) => {
        pending--;
        if (err) errors.push(`send: ${err.message}`);
        if (!stopped) pump();
        else if (pending === 0) resolve();
      };
      const pump = () => {
        while (!stopped && ws.bufferedAmount < cfg.highWaterMark) {
          pending++;
          sent += payload.length;
          ws.send(payload, { binary: true, compress: false }, onSent);
        }
      };
      pump();
    });
    ws.close(1000);
    await closed;
  } else {
    const conn = await openWebSocket(url, { timeoutMs: 10_000, highWaterMark: cfg.highWaterMark });
    const closed = new Promise<void>((resolve) => conn.once('close', () => resolve()));
    const session = new Session(conn, sessionOptions(cfg, true));
    session.on('error', (err: Error) => errors.push(`session: ${err.message}`));
    setTimeout(() => {
      stopped = true;
    }, cfg.seconds * 1000);
    const pumpStream = async (s: Stream) => {
      s.on('error', (err: Error) => errors.push(`stream ${s.id}: ${err.message}`));
      const peerDone = new Promise<void>((resolve) => {
        s.once('end', () => resolve());
        s.once('close', () => resolve());
      });
      s.resume(); // the receiver sends nothing but its FIN
      while (!stopped && !s.destroyed) {
        sent += payload.length;
        if (!s.write(payload)) {
          await new Promise<void>((resolve) => {
            const go = () => {
              s.off('drain', go);
              s.off('close', go);
              resolve();
            };
            s.on('drain', go);
            s.on('close', go);
          });
        }
      }
      s.end();
      await peerDone;
    };
    await Promise.all(Array.from({ length: cfg.streams }, () => pumpStream(session.open())));
    session.close();
    await closed;
  }
  await send({ type: 'result', role: 'sender', sent, ...usage(), errors });
}

const [role, json] = process.argv.slice(2);
const cfg = JSON.parse(json ?? '{}') as PeerConfig;
(role === 'receiver' ? receiver(cfg) : sender(cfg)).then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`mux-peer ${role} failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
