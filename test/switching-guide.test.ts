// The README's "Coming from frp, rathole, chisel or ssh -R": its porthole-client one-liners (what `ssh -R` and
// chisel's `R:` remotes become) run as written against a real server on loopback, with only the server URL, the
// token file, the port numbers and the socket path made local, and curl and socat reach the services through
// them. (Its TOML blocks are checked by examples-check.test.ts.)
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { curl } from './lib/curl.js';
import { startTaggedHttp, startUdpEcho } from './lib/http-backend.js';
import { clientBin, eventually, freePorts, repoRoot, run, withHarness } from './lib/processes.js';
import { issueToken, startServer } from './lib/tunnel.js';

const SECTION = '## Coming from frp, rathole, chisel or ssh -R';
/** The server URL the README's lines dial; the test's server takes its place. */
const README_SERVER = 'wss://vps.example.com/_porthole';

/** The `porthole-client ...` lines of the section's ```sh blocks, each split into its words. */
function guideCommands(readme: string): string[][] {
  const start = readme.indexOf(SECTION);
  assert.ok(start >= 0, `the README has "${SECTION}"`);
  const end = readme.indexOf('\n## ', start + SECTION.length);
  const section = readme.slice(start, end === -1 ? undefined : end);
  return [...section.matchAll(/^```sh\n([\s\S]*?)^```$/gm)]
    .flatMap((m) => m[1]!.split('\n'))
    .filter((line) => line.startsWith('porthole-client '))
    .map((line) => line.trim().split(/\s+/).slice(1));
}

/** How a tunnelled service is reached once the client is up: which proxy, its public port, what answers. */
interface Visit {
  proxy: string;
  kind: 'http' | 'udp';
  /** 0: the one the server picks. */
  port: number;
  expect: string;
}

/** The local services the lines are pointed at: HTTP on a port and on a Unix socket, a UDP echo. */
interface Services {
  tcpPort: number;
  socketPath: string;
  udpPort: number;
}

/**
 * A README line's words made local: the server URL and token file, each REMOTE_PORT to a free port and each
 * service's port or socket path to the test's. Everything else (the flags, the rule forms, the host names)
 * stays as written, so a line the client would not take fails here too.
 */
function localized(
  words: string[],
  local: { server: string; tokenFile: string; ports: number[]; services: Services },
): { args: string[]; visits: Visit[] } {
  const args: string[] = [];
  const visits: Visit[] = [];
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    const value = words[i + 1];
    if (word === '--server') {
      assert.equal(value, README_SERVER, 'the README dials the server every example names');
      args.push(word, local.server);
      i++;
    } else if (word === '--token-file') {
      args.push(word, local.tokenFile);
      i++;
    } else if ((word === '--tcp' || word === '--udp') && value !== undefined) {
      // A rule this does not read is passed on as written, for the client to judge.
      // [tcp:][BIND_ADDRESS:]REMOTE_PORT:TARGET; the address stays as written (the test's server allows it).
      const rule = /^(tcp:)?((?:\[[^\]]+\]|\d+\.\d+\.\d+\.\d+):)?(\d+):(.+)$/.exec(value);
      const target = rule?.[4] ?? '';
      const hostPort = /^(.+):(\d+)$/.exec(target);
      const unix = target.startsWith('unix:');
      const udp = word === '--udp';
      if (!rule || !(unix || hostPort)) {
        args.push(word, value);
      } else {
        // Remote port 0 stays 0: the server picks the port, and the client's log line says which.
        const port = rule[3] === '0' ? 0 : local.ports.shift()!;
        const localTarget = unix
          ? `unix:${local.services.socketPath}`
          : `${hostPort![1]}:${udp ? local.services.udpPort : local.services.tcpPort}`;
        args.push(word, `${rule[1] ?? ''}${rule[2] ?? ''}${port}:${localTarget}`);
        visits.push({
          proxy: `${udp ? 'udp' : 'tcp'}-${port}`,
          kind: udp ? 'udp' : 'http',
          port,
          expect: unix
            ? 'unix-socket GET / xff=undefined\n'
            : udp
              ? 'guide|ping\n'
              : 'tcp-port GET / xff=undefined\n',
        });
      }
      i++;
    } else {
      args.push(word);
    }
  }
  return { args, visits };
}

test(
  "the switching guide's porthole-client lines run as written: curl and socat reach the services through them",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const commands = guideCommands(await readFile(path.join(repoRoot, 'README.md'), 'utf8'));
      assert.ok(commands.length >= 3, `the guide has its ssh -R and chisel lines (${commands.length})`);

      const tcp = await startTaggedHttp(h, 'tcp-port', 0);
      const socketPath = h.path('app.sock');
      await startTaggedHttp(h, 'unix-socket', socketPath);
      const udp = await startUdpEcho('guide');
      h.onCleanup(() => udp.close());
      const services = { tcpPort: (tcp.address() as { port: number }).port, socketPath, udpPort: udp.port };

      const ports = await freePorts(commands.length * 2);
      // Taken one by one by the named ports below; a port the server picks is one of those it allows.
      const allowed = [...ports];
      const server = await startServer(h, { allowPorts: allowed.map(String) });
      const tokenFile = await h.file('token', `${await issueToken(server.config, { name: 'guide' })}\n`);

      const kinds = new Set<string>();
      for (const [i, words] of commands.entries()) {
        const line = `porthole-client ${words.join(' ')}`;
        const { args, visits } = localized(words, { server: server.url, tokenFile, ports, services });
        const client = h.spawn(`client-${i}`, clientBin, args);
        // The client's own verdict first: one that refuses the line exits, and this fails with its stderr.
        await client.waitForMsg('session established', 15_000);
        assert.ok(visits.length > 0, `${line}: exposes a service`);
        for (const visit of visits) {
          const registered = await client.waitForMsg('proxy registered', 15_000, {
            fields: { proxy: visit.proxy },
          });
          const port = visit.port || Number(registered.remote_port);
          assert.ok(allowed.includes(port), `${line}: port ${port} is one the server allows`);
          kinds.add(visit.expect);
          if (visit.kind === 'http') {
            const r = await curl([], `http://127.0.0.1:${port}/`);
            assert.equal(r.status, 200, `${line}: curl through it: ${r.stderr}`);
            assert.equal(r.body, visit.expect, line);
          } else {
            // A datagram may be lost as UDP allows: a few tries, each bounded.
            await eventually(
              `${line}: socat's datagram echoed through it`,
              async () => {
                const r = await run('socat', ['-T', '1', '-', `UDP:127.0.0.1:${port}`], {
                  input: 'ping\n',
                  timeoutMs: 5000,
                });
                return r.stdout === visit.expect;
              },
              10_000,
            );
          }
        }
        await client.stop();
      }
      assert.equal(kinds.size, 3, 'a tcp port, a Unix socket and a udp service were each reached');
    }),
);
