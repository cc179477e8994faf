// A small CLI run inside network namespaces (`ip netns exec NS node netprobe.js ...`), where the test
// process itself cannot go. Prints one JSON object per line.
//   echo-server --host H --port P [--banner TEXT]     serve echo; prints {"msg":"listening"} and {"msg":"accepted"}
//   connect --host H --port P --timeout MS             prints {"result":"connected"|"refused"|"timeout"|...}
//   echo --host H --port P --bytes N [--banner] [--timeout MS]   one verified echo round trip (EchoResult)
//   udp-echo-server --host H --port P                  serve a UDP echo; prints {"msg":"listening"}
//   udp-send --bind B --host H --port P --count N [--interval MS] [--timeout MS]   send N datagrams (MS
//                      apart) from an ephemeral port of B, then wait MS for replies; prints {sent, replies}
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { startUdpEcho, udpClient } from './http-backend.js';
import { echoRoundTrip, startEchoServer, tryConnect } from './services.js';

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
} else {
  process.stderr.write(`netprobe: unknown mode ${mode}\n`);
  process.exit(2);
}
