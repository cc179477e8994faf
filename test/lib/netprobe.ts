// A small CLI run inside network namespaces (`ip netns exec NS node netprobe.js ...`), where the test
// process itself cannot go. Prints one JSON object per line.
//   echo-server --host H --port P [--banner TEXT]     serve echo; prints {"msg":"listening"} and {"msg":"accepted"}
//   connect --host H --port P --timeout MS             prints {"result":"connected"|"refused"|"timeout"|...}
//   echo --host H --port P --bytes N [--banner] [--timeout MS]   one verified echo round trip (EchoResult)
//   udp-echo-server --host H --port P                  serve a UDP echo; prints {"msg":"listening"}
//   udp-send --bind B --host H --port P --count N [--interval MS] [--timeout MS]   send N datagrams (MS
//                      apart) from an ephemeral port of B, then wait MS for replies; prints {sent, replies}
//   source-server --host H --port P                   sends endless data on every connection, as fast as it is read
//   sink --host H --port P --seconds S [--count N]     reads from N connections (1) for S s; prints
//                      {bytes, seconds, least} (least: the fewest bytes one connection got)
//   udp-stream --bind B --host H --port P --interval MS --seconds S   a datagram every MS for S s, each
//                      carrying when it was sent, then MS*10 for late replies; prints {sent, replies: [[sentAt,
//                      arrivedAt], ...]} (Date.now() times, comparable across namespaces of one machine)
//   udp-talker --host H --port P --count N --interval MS   to each sender of a datagram: N datagrams MS apart
//                      and nothing else (a metrics stream); prints {"msg":"listening"}
//   rtt --proto tcp|udp --host H --port P --count N --interval MS [--timeout MS]   N small probes MS apart
//                      through an echo service, each answered or given up MS after the last; prints
//                      {sent, answered, max_ms, median_ms, first_ms} (first_ms: tcp connect + first echo)
import { createSocket } from 'node:dgram';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { startUdpEcho, udpClient } from './http-backend.js';
import { echoRoundTrip, startEchoServer, startEndlessDownload, tryConnect } from './services.js';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    banner: { type: 'string' },
    'expect-banner': { type: 'boolean', default: false },
    bytes: { type: 'string', default: '0' },
    timeout: { type: 'string', default: '5000' },
    seed: { type: 'string' },
    bind: { type: 'string', default: '127.0.0.1' },
    count: { type: 'string', default: '1' },
    interval: { type: 'string', default: '0' },
    seconds: { type: 'string', default: '10' },
    proto: { type: 'string', default: 'tcp' },
  },
});

const print = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(o)}\n`);
const mode = positionals[0];
const host = values.host;
const port = Number(values.port);
const timeoutMs = Number(values.timeout);

if (mode === 'echo-server') {
  const srv = await startEchoServer(host, port, values.banner);
  srv.server.on('connection', (sock) =>
    print({ msg: 'accepted', remote: `${sock.remoteAddress}:${sock.remotePort}` }),
  );
  print({ msg: 'listening', addr: `${host}:${srv.port}`, port: srv.port });
  process.on('SIGTERM', () => srv.close().then(() => process.exit(0)));
} else if (mode === 'connect') {
  print({ result: await tryConnect(host, port, timeoutMs) });
} else if (mode === 'echo') {
  const r = await echoRoundTrip(host, port, Number(values.bytes), {
    timeoutMs,
    banner: values['expect-banner'],
    seed: values.seed,
  });
  print({ ...r });
} else if (mode === 'udp-echo-server') {
  const echo = await startUdpEcho('echo', host, port);
  print({ msg: 'listening', addr: `${host}:${echo.port}`, port: echo.port });
  process.on('SIGTERM', () => echo.close().then(() => process.exit(0)));
} else if (mode === 'udp-send') {
  const { socket, replies } = await udpClient(values.bind);
  const count = Number(values.count);
  for (let i = 0; i < count; i++) {
    if (i > 0 && Number(values.interval) > 0) await sleep(Number(values.interval));
    socket.send(`datagram ${i}`, port, host);
  }
  await sleep(timeoutMs);
  const from = socket.address();
  socket.close();
  print({ sent: count, replies: replies.length, from: `${from.address}:${from.port}` });
} else if (mode === 'udp-stream') {
  const { socket } = await udpClient(values.bind);
  const replies: [number, number][] = [];
  socket.on('message', (msg) => {
    const sentAt = Number(/(\d+)$/.exec(msg.toString())?.[1]);
    replies.push([sentAt, Date.now()]);
  });
  const interval = Number(values.interval);
  const until = Date.now() + Number(values.seconds) * 1000;
  let sent = 0;
  while (Date.now() < until) {
    socket.send(`${sent++} ${Date.now()}`, port, host);
    await sleep(interval);
  }
  await sleep(interval * 10);
  socket.close();
  print({ sent, replies });
} else if (mode === 'udp-talker') {
  const socket = createSocket('udp4');
  const talkingTo = new Set<string>();
  socket.on('message', async (_msg, from) => {
    const key = `${from.address}:${from.port}`;
    if (talkingTo.has(key)) return;
    talkingTo.add(key);
    for (let i = 0; i < Number(values.count); i++) {
      socket.send(`sample ${i}`, from.port, from.address);
      await sleep(Number(values.interval));
    }
  });
  await new Promise<void>((resolve) => socket.bind(port, host, resolve));
  print({ msg: 'listening', addr: `${host}:${socket.address().port}` });
  process.on('SIGTERM', () => process.exit(0));
} else if (mode === 'source-server') {
  const { server } = startEndlessDownload();
  server.listen(port, host, () => print({ msg: 'listening', addr: `${host}:${port}` }));
  process.on('SIGTERM', () => process.exit(0));
} else if (mode === 'sink') {
  const seconds = Number(values.seconds);
  const received = Array.from({ length: Number(values.count) }, () => 0);
  const socks = received.map((_, i) => {
    const sock = net.connect(port, host);
    sock.on('data', (d: Buffer) => {
      received[i]! += d.length;
    });
    sock.on('error', () => {});
    return sock;
  });
  await sleep(seconds * 1000);
  for (const sock of socks) sock.destroy();
  print({ bytes: received.reduce((a, b) => a + b, 0), seconds, least: Math.min(...received) });
} else if (mode === 'rtt') {
  print(
    await probeRtt(values.proto === 'udp' ? 'udp' : 'tcp', Number(values.count), Number(values.interval)),
  );
} else {
  process.stderr.write(`netprobe: unknown mode ${mode}\n`);
  process.exit(2);
}

/** Probes carry their number; an echo service sends them back (the udp one with a prefix). */
async function probeRtt(proto: 'tcp' | 'udp', count: number, intervalMs: number) {
  const sentAt = new Map<number, number>();
  const rtts: number[] = [];
  const answer = (text: string) => {
    for (const m of text.matchAll(/<(\d+)>/g)) {
      const at = sentAt.get(Number(m[1]));
      if (at === undefined) continue;
      sentAt.delete(Number(m[1]));
      rtts.push(performance.now() - at);
    }
  };
  let send: (probe: string) => void;
  let close: () => void;
  let firstMs: number | undefined;
  if (proto === 'udp') {
    const socket = createSocket('udp4');
    socket.on('message', (msg) => answer(msg.toString()));
    send = (probe) => socket.send(probe, port, host);
    close = () => socket.close();
  } else {
    const started = performance.now();
    const sock = net.connect(port, host);
    sock.setNoDelay(true);
    sock.on('error', () => {});
    let pending = '';
    sock.on('data', (d: Buffer) => {
      if (firstMs === undefined) firstMs = performance.now() - started;
      pending += d.toString();
      answer(pending);
      pending = pending.slice(pending.lastIndexOf('>') + 1);
    });
    send = (probe) => sock.write(probe);
    close = () => sock.destroy();
  }
  for (let i = 0; i < count; i++) {
    if (i > 0) await sleep(intervalMs);
    sentAt.set(i, performance.now());
    send(`<${i}>`);
  }
  const deadline = performance.now() + timeoutMs;
  while (sentAt.size > 0 && performance.now() < deadline) await sleep(20);
  close();
  const sorted = [...rtts].sort((a, b) => a - b);
  const round = (n: number | undefined) => (n === undefined ? null : Math.round(n));
  return {
    sent: count,
    answered: rtts.length,
    max_ms: round(sorted.at(-1)),
    median_ms: round(sorted[Math.floor(sorted.length / 2)]),
    first_ms: round(firstMs),
  };
}
