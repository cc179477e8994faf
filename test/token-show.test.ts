// `porthole-server token show` with the real CLI and real config files: what a token grants, and whether
// the server would accept it, in the words a running server's sign-in uses (checked against one: curl's
// upgrade with each refused token gets a 401 naming the same reason). The token never appears in what it
// prints, nor do the claims of a token signed with another secret.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { curl } from './lib/curl.js';
import { type RunResult, run, serverBin, sleep, withHarness } from './lib/processes.js';
import {
  issueToken,
  jwtClaims,
  type ServerConfigFile,
  startServer,
  writeServerConfig,
} from './lib/tunnel.js';

const show = (config: ServerConfigFile, args: string[], input?: string) =>
  run(serverBin, ['token', 'show', '--config', config.configPath, ...args], {
    timeoutMs: 20_000,
    ...(input === undefined ? {} : { input }),
  });

/** The token is a secret: not a line of what token show prints may hold it (or its signature alone). */
function assertNotLeaked(r: RunResult, token: string, what: string): void {
  const signature = token.split('.')[2]!;
  for (const [stream, text] of [
    ['stdout', r.stdout],
    ['stderr', r.stderr],
  ] as const) {
    assert.ok(!text.includes(token), `${what}: the token is on ${stream}`);
    assert.ok(!text.includes(signature), `${what}: the token's signature is on ${stream}`);
  }
}

/** What a running server answers a WebSocket upgrade carrying `token`: its status and reason. */
async function signInAnswer(url: string, token: string): Promise<{ status: number; body: string }> {
  const r = await curl(
    [
      '-H',
      'Connection: Upgrade',
      '-H',
      'Upgrade: websocket',
      '-H',
      'Sec-WebSocket-Version: 13',
      '-H',
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
      '-H',
      `Authorization: Bearer ${token}`,
    ],
    url.replace(/^ws/, 'http'),
    10_000,
  );
  return { status: r.status, body: r.body };
}

test(
  'token show prints a fresh token’s claims and what allow_ports and client_bandwidth_limit make of them, exit 0; from a file, stdin or --token; --json for scripts',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const config = await writeServerConfig(h, { allowPorts: ['2222', '8000-8099'] });
      const issued = await run(
        serverBin,
        [
          'token',
          'issue',
          '--config',
          config.configPath,
          '--name',
          'homelab',
          '--ports',
          '2222,8050-8120',
          '--hosts',
          'app.example.com,*.home.example.com',
          '--visit',
          'nas/*',
          '--expires',
          '30d',
          '--bandwidth-limit',
          '10MB',
        ],
        { timeoutMs: 20_000 },
      );
      assert.equal(issued.code, 0, issued.stderr);
      const token = issued.stdout.trim();
      const { jti, iat, exp } = jwtClaims(token) as { jti: string; iat: number; exp: number };
      const tokenFile = await h.file('homelab.token', `${token}\n`);

      const fromFile = await show(config, ['--token-file', tokenFile]);
      assert.equal(fromFile.code, 0, fromFile.stdout + fromFile.stderr);
      assert.equal(fromFile.stderr, '');
      const lines = fromFile.stdout.split('\n');
      assert.equal(lines[0], 'accepted: this server would accept it');
      assert.equal(lines[1], 'client:    homelab');
      assert.equal(lines[2], `id:        ${jti} (what [auth] revoked_tokens lists to revoke it)`);
      assert.equal(lines[3], `issued:    ${new Date(iat * 1000).toISOString()}`);
      // 30 days from now, give or take the second the test took to get here.
      assert.match(
        lines[4]!,
        new RegExp(`^expires:   ${new Date(exp * 1000).toISOString()} \\(in (29d 23h|30d 0h)\\)$`),
      );
      assert.equal(
        lines[5],
        'ports:     2222,8050-8120; allow_ports refuses 8100-8120, which leaves 2222,8050-8099',
      );
      assert.equal(
        lines[6],
        'hosts:     app.example.com, *.home.example.com (this server has no [http] or [https] port to route them on)',
      );
      assert.equal(lines[7], 'visit:     nas/*');
      assert.equal(lines[8], "bandwidth: 10MB/s each way, all proxies together (the token's)");
      assertNotLeaked(fromFile, token, '--token-file');

      const fromStdin = await show(config, ['--token-file', '-'], `${token}\n`);
      assert.equal(fromStdin.code, 0, fromStdin.stderr);
      assert.equal(fromStdin.stdout.split('\n')[1], 'client:    homelab');
      assertNotLeaked(fromStdin, token, '--token-file -');
      const fromArgument = await show(config, ['--token', token]);
      assert.equal(fromArgument.code, 0, fromArgument.stderr);
      assertNotLeaked(fromArgument, token, '--token');

      const json = await show(config, ['--token-file', tokenFile, '--json']);
      assert.equal(json.code, 0, json.stderr);
      assertNotLeaked(json, token, '--json');
      const report = JSON.parse(json.stdout);
      assert.ok(report.expires_in_seconds > 29 * 86_400 && report.expires_in_seconds <= 30 * 86_400);
      delete report.expires_in_seconds;
      assert.deepEqual(report, {
        accepted: true,
        reason: null,
        verified: true,
        client: 'homelab',
        id: jti,
        issued_at: new Date(iat * 1000).toISOString(),
        expires_at: new Date(exp * 1000).toISOString(),
        ports: '2222,8050-8120',
        hosts: ['app.example.com', '*.home.example.com'],
        visit: ['nas/*'],
        bandwidth_limit: '10MB',
        server: {
          ports: '2222,8050-8099',
          ports_refused: '8100-8120',
          vhost_ports: false,
          bandwidth_limit: { rate: '10MB', source: 'token' },
        },
      });

      // A token without grants: what the server allows it, and the server's default cap.
      const plain = await issueToken(config, { name: 'plain', expires: 'never' });
      const plainShown = await show(config, ['--token', plain]);
      assert.equal(plainShown.code, 0, plainShown.stderr);
      assert.match(plainShown.stdout, /^expires: {3}never$/m);
      assert.match(plainShown.stdout, /^ports: {5}any port allow_ports permits \(2222,8000-8099\)$/m);
      assert.match(plainShown.stdout, /^hosts: {5}any name /m);
      assert.match(plainShown.stdout, /^visit: {5}none$/m);
      assert.match(plainShown.stdout, /^bandwidth: none$/m);
      const text = await readFile(config.configPath, 'utf8');
      await writeFile(config.configPath, `client_bandwidth_limit = "5MB"\n${text}`);
      const capped = await show(config, ['--token', plain]);
      assert.match(
        capped.stdout,
        /^bandwidth: 5MB\/s each way, all proxies together \(the server's client_bandwidth_limit; the token sets none\)$/m,
      );

      // A token given as a word of the command is refused without being echoed (startCli would name it).
      const positional = await run(serverBin, ['token', 'show', '--config', config.configPath, token]);
      assert.equal(positional.code, 2);
      assert.match(
        positional.stderr,
        /token show: give the token with --token-file FILE, --token-file - \(stdin\) or --token JWT/,
      );
      assertNotLeaked(positional, token, 'a positional token');
    }),
);

test(
  'token show refuses, exit 1, what the server refuses, with its sign-in’s reason: revoked (claims shown), expired (claims shown), another secret ("bad signature", no claims), not a JWT',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const initial = await writeServerConfig(h, { allowPorts: ['2222'] });
      const revokedToken = await issueToken(initial, { name: 'revoked', ports: '2222' });
      const expiredToken = await issueToken(initial, { name: 'expired', expires: '1s' });
      const foreign = await writeServerConfig(h, { allowPorts: ['2222'] });
      const foreignToken = await issueToken(foreign, { name: 'forged', ports: '2222' });
      const revokedId = String(jwtClaims(revokedToken).jti);
      const config = await writeServerConfig(h, {
        ...initial.options,
        secretFile: initial.secretFile,
        revokedTokens: [revokedId],
      });
      const expiresAt = Number(jwtClaims(expiredToken).exp) * 1000;
      // `exp` is in whole seconds: past it by a margin, so the token is expired for both checks below.
      await sleep(Math.max(0, expiresAt - Date.now()) + 1100);

      const revoked = await show(config, ['--token', revokedToken]);
      assert.equal(revoked.code, 1, revoked.stdout + revoked.stderr);
      assert.equal(revoked.stdout.split('\n')[0], 'refused: token revoked');
      // Its signature checked out: whose it is can be trusted.
      assert.match(revoked.stdout, /^client: {4}revoked$/m);
      assert.match(
        revoked.stdout,
        new RegExp(`^id: {8}${revokedId} \\(listed in \\[auth\\] revoked_tokens\\)$`, 'm'),
      );
      assertNotLeaked(revoked, revokedToken, 'revoked');
      const revokedJson = JSON.parse((await show(config, ['--token', revokedToken, '--json'])).stdout);
      assert.equal(revokedJson.accepted, false);
      assert.equal(revokedJson.reason, 'token revoked');
      assert.equal(revokedJson.id, revokedId);

      const expired = await show(config, ['--token', expiredToken]);
      assert.equal(expired.code, 1, expired.stdout + expired.stderr);
      assert.equal(expired.stdout.split('\n')[0], 'refused: token expired');
      assert.match(expired.stdout, /^client: {4}expired$/m);
      assert.match(expired.stdout, /^expires: {3}\S+Z \(\d+s ago\)$/m);
      assertNotLeaked(expired, expiredToken, 'expired');

      const forged = await show(config, ['--token', foreignToken]);
      assert.equal(forged.code, 1, forged.stdout + forged.stderr);
      assert.equal(
        forged.stdout,
        "refused: bad signature\n(not signed with this server's secret: its claims are unverified and not shown)\n",
      );
      assert.doesNotMatch(forged.stdout + forged.stderr, /forged/);
      assertNotLeaked(forged, foreignToken, 'bad signature');
      const forgedJson = await show(config, ['--token', foreignToken, '--json']);
      assert.equal(forgedJson.code, 1);
      assert.deepEqual(JSON.parse(forgedJson.stdout), {
        accepted: false,
        reason: 'bad signature',
        verified: false,
      });

      const garbage = await show(config, ['--token-file', '-'], 'not a token\n');
      assert.equal(garbage.code, 1);
      assert.equal(garbage.stdout, 'refused: malformed token\n');

      // The same words as the running server's refusals, token by token.
      const server = await startServer(h, config);
      for (const [token, reason] of [
        [revokedToken, 'token revoked'],
        [expiredToken, 'token expired'],
        [foreignToken, 'bad signature'],
      ] as const) {
        const answer = await signInAnswer(server.url, token);
        assert.equal(answer.status, 401, `${reason}: ${answer.body}`);
        assert.match(
          answer.body,
          new RegExp(reason),
          `the server's own reason for a token show calls "${reason}"`,
        );
      }
      const unread = await show(config, ['--token-file', '/nonexistent/token']);
      assert.equal(unread.code, 2);
      assert.match(unread.stderr, /token show: cannot read \/nonexistent\/token: ENOENT/);
    }),
);
