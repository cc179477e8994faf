// The local services every peer forwards to, in their own process (so neither the load generators nor
// the bench's log reading share their event loop): a small HTTP service with a fixed body, and an echo.
// Prints one JSON line {"msg":"targets listening","http":PORT,"echo":PORT}, then serves until SIGTERM.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { startEchoServer } from '@porthole/e2e/lib/services';

/** A small fixed body (128 bytes), as a health check or a small JSON API answer would be. */
const HTTP_BODY = Buffer.from(`${'porthole bench: a small fixed body '.repeat(4).slice(0, 127)}\n`);

async function main(): Promise<void> {
  const web = http.createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': HTTP_BODY.length });
    res.end(HTTP_BODY);
  });
  // Load generators hold keep-alive connections idle between runs; Node's 5 s default would cut them.
  web.keepAliveTimeout = 120_000;
  web.maxRequestsPerSocket = 0;
  await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', 4096, resolve));
  const echo = await startEchoServer('127.0.0.1', 0);
  const httpPort = (web.address() as AddressInfo).port;
  process.stdout.write(`${JSON.stringify({ msg: 'targets listening', http: httpPort, echo: echo.port })}\n`);
  const stop = () => {
    web.closeAllConnections();
    web.close();
    echo.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`targets failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
