// One side of the mux benchmark, in its own process (forked by mux.ts, results over IPC):
//   node mux-peer.js receiver '<json config>'   listens on 127.0.0.1:0, counts what arrives, reports when done
//   node mux-peer.js sender '<json config>'     connects, sends for `seconds`, ends, reports what it sent
// Raw mode sends payload-sized ws messages, backpressure from ws.bufferedAmount; mux mode writes the same
// payload to `streams` streams of one Session over webSocketDuplex. Each process reports its own peak RSS.
import { performance } from 'node:perf_hooks';
import { Session, type Stream, webSocketDuplex } from '@porthole/mux';
import { WebSocket, WebSocketServer } from 'ws';

export interface PeerConfig {
  mode: 'raw' | 'mux';
  streams: number;
  seconds: number;
  payload: number;
  /** Bytes queued in the WebSocket before the sender waits (raw: bufferedAmount; mux: webSocketDuplex). */
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
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    perMessageDeflate: false,
    maxPayload: 1 << 30,
  });
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
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
    wss.once('connection', (ws) => {
      ws.on('error', (err) => errors.push(`ws: ${err.message}`));
      if (cfg.mode === 'raw') {
        ws.on('message', (data: Buffer) => count(data.length));
        ws.once('close', () => resolve());
        return;
      }
      const session = new Session(webSocketDuplex(ws), sessionOptions(cfg, false));
      session.on('error', (err: Error) => errors.push(`session: ${err.message}`));
      session.on('stream', (s: Stream) => {
        s.on('data', (chunk: Buffer) => count(chunk.length));
        s.on('end', () => s.end()); // our FIN tells the sender everything arrived
        s.on('error', (err: Error) => errors.push(`stream ${s.id}: ${err.message}`));
      });
      session.once('close', () => resolve());
    });
  });
  await send({ type: 'listening', port: (wss.address() as { port: number }).port });
  await done;
  wss.close();
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
  const ws = new WebSocket(`ws://127.0.0.1:${cfg.port}/`, { perMessageDeflate: false });
  ws.on('error', (err) => errors.push(`ws: ${err.message}`));
  const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));

  if (cfg.mode === 'raw') {
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
  } else {
    // Wrap inside 'open' itself: a message arriving with the 101 would otherwise be lost.
    const session = await new Promise<Session>((resolve) =>
      ws.once('open', () =>
        resolve(
          new Session(webSocketDuplex(ws, { highWaterMark: cfg.highWaterMark }), sessionOptions(cfg, true)),
        ),
      ),
    );
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
  }
  await closed;
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
