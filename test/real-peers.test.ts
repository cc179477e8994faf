// Peers nobody here wrote, through the tunnel: iperf3 (forward and reverse) and an ssh login.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runIperfClient, startIperfServer } from './lib/iperf3.js';
import { freePort, withHarness, withTimeout } from './lib/processes.js';
import { patternBytes, sha256Hex } from './lib/sha-stream.js';
import { sshRun, startSshd } from './lib/sshd.js';
import { issueToken, type RunningClient, startClient, startServer } from './lib/tunnel.js';

const SECONDS = 3;

test('iperf3 forward and reverse through the tunnel, beside direct loopback', { timeout: 110_000 }, (t) =>
  withHarness(t, async (h) => {
    // One server for both tunnel runs. Each iperf3 server serves one test (-1) on a new local port, so
    // each tunnel run has its own client (started for it, stopped after it, so it costs no CPU later).
    const runs = ['direct', 'direct -R', 'tunnel', 'tunnel -R'] as const;
    const remotePorts = [await freePort(), await freePort()];
    const server = await startServer(h, { allowPorts: remotePorts.map(String) });
    const token = await issueToken(server.config, { name: 'iperf', ports: remotePorts.join(',') });
    const results: Record<string, number> = {};
    let tunnelIndex = 0;
    for (const run of runs) {
      const reverse = run.endsWith('-R');
      const iperf = await startIperfServer(h, `iperf3-server ${run}`);
      let port = iperf.port;
      let client: RunningClient | undefined;
      if (run.startsWith('tunnel')) {
        const remotePort = remotePorts[tunnelIndex]!;
        tunnelIndex += 1;
        client = await startClient(
          h,
          {
            server: server.url,
            token,
            proxies: [{ name: 'iperf', local: `127.0.0.1:${iperf.port}`, remotePort }],
          },
          { name: `client ${run}` },
        );
        port = client.ports.get('iperf')!;
      }
      const r = await runIperfClient(port, { seconds: SECONDS, reverse });
      assert.ok(r.bitsPerSecond > 0, `${run}: iperf3 measured ${r.bitsPerSecond} bit/s`);
      assert.ok(r.bytes > 0, `${run}: iperf3 moved ${r.bytes} bytes`);
      results[run] = r.gbits;
      t.diagnostic(
        `iperf3 ${run.padEnd(10)} ${r.gbits.toFixed(2)} Gbit/s (${(r.bytes / 1048576).toFixed(0)} MiB in ${r.seconds.toFixed(1)} s)`,
      );
      await withTimeout(iperf.proc.exited, 10_000, () => `iperf3 -s -1 did not exit after the ${run} test`);
      await client?.proc.stop();
    }
    t.diagnostic(
      `iperf3 summary: forward tunnel ${results.tunnel?.toFixed(2)} vs direct ${results.direct?.toFixed(2)} Gbit/s; ` +
        `reverse tunnel ${results['tunnel -R']?.toFixed(2)} vs direct ${results['direct -R']?.toFixed(2)} Gbit/s`,
    );
  }),
);

test('ssh login through the tunnel to a private sshd runs a command', { timeout: 60_000 }, (t) =>
  withHarness(t, async (h) => {
    const sshd = await startSshd(h);
    const remotePort = await freePort();
    const server = await startServer(h, { allowPorts: [String(remotePort)] });
    const token = await issueToken(server.config, { name: 'ssh', ports: String(remotePort) });
    const client = await startClient(h, {
      server: server.url,
      token,
      proxies: [{ name: 'ssh', local: `127.0.0.1:${sshd.port}`, remotePort }],
    });
    const port = client.ports.get('ssh')!;

    // A command whose output the shell computes, so an echo of the command line cannot pass.
    const r = await sshRun(sshd, port, 'echo "login-ok $((6*7)) $(id -un)"');
    assert.equal(r.code, 0, `ssh exited ${r.code}: ${r.stderr}`);
    assert.equal(r.stdout.trim(), 'login-ok 42 root');

    // And bytes through the session: 8 MiB on stdin, hashed by the remote shell.
    const data = patternBytes(8 * 1024 * 1024, 'ssh-stdin');
    const started = Date.now();
    const hashed = await sshRun(sshd, port, 'sha256sum', data);
    assert.equal(hashed.code, 0, `ssh sha256sum exited ${hashed.code}: ${hashed.stderr}`);
    assert.equal(
      hashed.stdout.split(' ')[0],
      sha256Hex(data),
      'sha256 of 8 MiB piped through ssh through the tunnel',
    );
    t.diagnostic(
      `ssh: login ok; 8 MiB through ssh over the tunnel in ${Date.now() - started} ms (incl. handshake)`,
    );

    // sshd saw the login come from the tunnel client's local connection.
    await sshd.proc.waitForOutput(/Accepted publickey for root from 127\.0\.0\.1/, 5000);
    await server.proc.waitForMsg('connection closed', 10_000, { fields: { proxy: 'ssh' } });
  }),
);
