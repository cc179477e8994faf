// The installation story, for real: `scripts/bundle.mjs` builds a few files per program, installed the way the
// README says (.mjs files under lib/, a symlink in bin/); the bundled server and client carry a tunnel while
// reading their secrets from $CREDENTIALS_DIRECTORY as under systemd's LoadCredential=; and both example
// units pass `systemd-analyze verify` without a word and score well in `systemd-analyze security`.
import assert from 'node:assert/strict';
import { chmod, copyFile, mkdir, readdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { issueToken } from '@porthole/protocol';
import { clientBin, freePort, repoRoot, run, runOk, serverBin, withHarness } from './lib/processes.js';
import { echoRoundTrip, startEchoServer } from './lib/services.js';
import { portOf } from './lib/tunnel.js';

const unitsDir = path.join(repoRoot, 'examples', 'systemd');
/** The reference a config makes to systemd's credentials directory (spelled out for the linter). */
const CREDENTIALS = '$' + '{CREDENTIALS_DIRECTORY}';

test(
  'npm run bundle: self-contained programs that run from a bin/ symlink and carry a tunnel with credentials from $CREDENTIALS_DIRECTORY',
  {
    timeout: 120_000,
  },
  (t) =>
    withHarness(t, async (h) => {
      const lib = h.path('lib');
      const bin = h.path('bin');
      await mkdir(bin);
      const out = await runOk('node', [path.join(repoRoot, 'scripts', 'bundle.mjs'), '--outdir', lib], {
        timeoutMs: 60_000,
      });
      assert.match(out, /porthole-server\.mjs +\d+ KiB/);
      const programs: Record<string, string> = {};
      for (const name of ['porthole-server', 'porthole-client']) {
        const file = path.join(lib, `${name}.mjs`);
        assert.equal((await stat(file)).mode & 0o777, 0o755, `${name}.mjs is executable as built`);
        programs[name] = path.join(bin, name);
        await symlink(file, programs[name]);
        const text = await readFile(file, 'utf8');
        assert.ok(
          text.startsWith('#!/usr/bin/env -S MALLOC_TRIM_THRESHOLD_=268435456 node --single-threaded-gc\n'),
          `${name} starts with the bin scripts' shebang`,
        );
        // Node parses the entry and all it imports statically before running its first line, which installs
        // the SIGHUP listener: that must be a few KiB, not the program (a SIGHUP during the ~30 ms it took to
        // parse 1.3 MiB ended the program).
        const parsedFirst = [`${name}.mjs`, ...[...text.matchAll(/\bfrom "\.\/([^"]+)"/g)].map((m) => m[1]!)];
        let parsedBytes = 0;
        for (const file of parsedFirst) parsedBytes += (await stat(path.join(lib, file))).size;
        assert.ok(parsedBytes < 16 * 1024, `${name}: ${parsedFirst.join(', ')} are ${parsedBytes} bytes`);
        // Self-contained: nothing is imported from the repository or a node_modules beside it.
        for (const file of (await readdir(lib)).filter((f) => f.startsWith(name))) {
          const code = await readFile(path.join(lib, file), 'utf8');
          assert.doesNotMatch(code, /from ["']@porthole\//, file);
          assert.doesNotMatch(code, /from ["'](ws|pino|jose|zod|smol-toml)["']/, file);
        }
        const version = await runOk(programs[name], ['--version'], { cwd: h.dir });
        assert.equal(version, `${name} 0.1.0 (protocol 1)\n`);
      }

      // A credentials directory as systemd makes it, and configs that point there (the example unit's way).
      const creds = h.path('credentials');
      await mkdir(creds, { mode: 0o700 });
      await writeFile(path.join(creds, 'secret'), `${'k'.repeat(48)}\n`, { mode: 0o400 });
      const env = { CREDENTIALS_DIRECTORY: creds };
      const echo = await startEchoServer('127.0.0.1', 0);
      h.onCleanup(() => echo.close());
      const remotePort = await freePort();
      const serverToml = await h.file(
        'server.toml',
        [
          'listen = "127.0.0.1:0"',
          'proxy_bind = "127.0.0.1"',
          `allow_ports = ["${remotePort}"]`,
          '[auth]',
          `secret_file = "${CREDENTIALS}/secret"`,
          '',
        ].join('\n'),
      );
      const missing = await run(programs['porthole-server']!, ['check', '--config', serverToml]);
      assert.equal(missing.code, 2, 'outside systemd the reference is reported, not guessed');
      assert.match(
        missing.stderr,
        /server\.toml: auth\.secret_file: \$\{CREDENTIALS_DIRECTORY\} .* is not set/,
      );
      const server = h.spawn('server', programs['porthole-server']!, ['--config', serverToml], { env });
      const listening = await server.waitForMsg('server listening', 15_000);
      const environ = await readFile(`/proc/${server.pid}/environ`, 'utf8');
      assert.ok(
        environ.split('\0').includes('MALLOC_TRIM_THRESHOLD_=268435456'),
        'the shebang set the malloc tuning',
      );
      const cmdline = await readFile(`/proc/${server.pid}/cmdline`, 'utf8');
      assert.ok(cmdline.split('\0').includes('--single-threaded-gc'), 'the shebang passed the GC flag');
      const jwt = (
        await runOk(
          programs['porthole-server']!,
          ['token', 'issue', '--config', serverToml, '--name', 'bundled'],
          {
            env,
          },
        )
      ).trim();
      await writeFile(path.join(creds, 'token'), `${jwt}\n`, { mode: 0o400 });
      const clientToml = await h.file(
        'client.toml',
        [
          `server = "ws://127.0.0.1:${portOf(listening.addr)}/_porthole"`,
          `token_file = "${CREDENTIALS}/token"`,
          '[[proxies]]',
          'name = "echo"',
          'type = "tcp"',
          `local = "127.0.0.1:${echo.port}"`,
          `remote_port = ${remotePort}`,
          '',
        ].join('\n'),
      );
      const client = h.spawn('client', programs['porthole-client']!, ['--config', clientToml], { env });
      await client.waitForMsg('proxy registered', 15_000, { fields: { proxy: 'echo' } });
      const roundTrip = await echoRoundTrip('127.0.0.1', remotePort, 4 * 1024 * 1024, { timeoutMs: 20_000 });
      assert.ok(roundTrip.ok, roundTrip.error);
      assert.ok(!server.outputContains(jwt) && !client.outputContains(jwt), 'the token is never logged');
      client.kill('SIGTERM');
      server.kill('SIGTERM');
      assert.deepEqual(await client.exited, { code: 0, signal: null });
      assert.deepEqual(await server.exited, { code: 0, signal: null });
    }),
);

test(
  'examples/systemd units: systemd-analyze verify is silent, the exposure score is low, the hardening is there',
  {
    timeout: 60_000,
  },
  (t) =>
    withHarness(t, async (h) => {
      // verify checks that ExecStart's program exists; point a copy of each unit at a real executable.
      const fakeBin = await h.file('porthole-program', '#!/bin/sh\nexit 0\n', 0o755);
      const units: Record<string, string> = {};
      for (const name of ['porthole-server.service', 'porthole-client.service']) {
        const text = await readFile(path.join(unitsDir, name), 'utf8');
        units[name] = text;
        const program = name.replace('.service', '');
        assert.match(text, new RegExp(`^ExecStart=/usr/local/bin/${program} --config /etc/porthole/`, 'm'));
        await writeFile(h.path(name), text.replaceAll(`/usr/local/bin/${program}`, fakeBin));
      }
      const verify = await run(
        'systemd-analyze',
        ['verify', 'porthole-server.service', 'porthole-client.service'],
        {
          cwd: h.dir,
          timeoutMs: 30_000,
        },
      );
      assert.equal(verify.code, 0, verify.stderr);
      assert.equal(`${verify.stdout}${verify.stderr}`, '', 'systemd-analyze verify has nothing to say');

      for (const name of Object.keys(units)) {
        const security = await run('systemd-analyze', ['security', '--offline=true', name], {
          cwd: h.dir,
          timeoutMs: 30_000,
        });
        assert.equal(security.code, 0, security.stderr);
        const score = /Overall exposure level for [\w.-]+: (\d+\.\d+) (\w+)/.exec(security.stdout);
        assert.ok(score, security.stdout.slice(-500));
        assert.ok(Number(score[1]) <= 2.0, `${name}: exposure ${score[1]} ${score[2]}`);
        t.diagnostic(`${name}: exposure ${score[1]} ${score[2]}`);
      }

      const server = units['porthole-server.service']!;
      const client = units['porthole-client.service']!;
      for (const [name, text] of Object.entries(units)) {
        for (const line of [
          'Type=exec',
          'Restart=always',
          'ExecReload=/bin/kill -HUP $MAINPID',
          'DynamicUser=yes',
          'NoNewPrivileges=yes',
          'ProtectSystem=strict',
          'ProtectHome=yes',
          'PrivateTmp=yes',
          'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX',
          'SystemCallFilter=@system-service',
        ]) {
          assert.ok(text.split('\n').includes(line), `${name} has ${line}`);
        }
      }
      assert.match(server, /^LoadCredential=secret:\/etc\/porthole\/secret$/m);
      assert.match(server, /^AmbientCapabilities=CAP_NET_BIND_SERVICE$/m);
      assert.match(server, /^CapabilityBoundingSet=CAP_NET_BIND_SERVICE$/m);
      assert.match(client, /^LoadCredential=token:\/etc\/porthole\/token$/m);
      assert.match(client, /^CapabilityBoundingSet=$/m, 'the client keeps no capability');
      assert.doesNotMatch(client, /CAP_NET_BIND_SERVICE/);

      // The example configs the units read are valid once the credentials are there.
      const creds = h.path('creds');
      await mkdir(creds);
      await writeFile(path.join(creds, 'secret'), `${'s'.repeat(40)}\n`);
      await writeFile(path.join(creds, 'admin-token'), `${'a'.repeat(32)}\n`);
      await writeFile(
        path.join(creds, 'token'),
        `${await issueToken('s'.repeat(40), { name: 'lab', expiresInMs: null })}\n`,
      );
      await copyFile(path.join(unitsDir, 'server.toml'), h.path('server.toml'));
      const check = await run(serverBin, ['check', '--config', h.path('server.toml')], {
        env: { CREDENTIALS_DIRECTORY: creds },
      });
      assert.equal(check.code, 0, check.stderr);
      const clientCheck = await run(
        path.join(repoRoot, 'node_modules', '.bin', 'porthole-client'),
        ['check', '--config', path.join(unitsDir, 'client.toml')],
        { env: { CREDENTIALS_DIRECTORY: creds } },
      );
      assert.equal(clientCheck.code, 0, clientCheck.stderr);
    }),
);

test(
  "check with CREDENTIALS_DIRECTORY=/etc/porthole, as the README's setup runs it, warns about a secret others can read; systemd's own copies are not flagged",
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      // /etc/porthole as the README fills it, before the chmod 600 / install -m 600 steps.
      const etc = h.path('etc-porthole');
      await mkdir(etc);
      const secrets = {
        secret: `${'s'.repeat(64)}\n`,
        'admin-token': `${'a'.repeat(48)}\n`,
        token: `${await issueToken('s'.repeat(64), { name: 'lab', expiresInMs: null })}\n`,
      };
      for (const [name, text] of Object.entries(secrets))
        await writeFile(path.join(etc, name), text, { mode: 0o644 });
      const serverToml = path.join(etc, 'server.toml');
      const clientToml = path.join(etc, 'client.toml');
      await copyFile(path.join(unitsDir, 'server.toml'), serverToml);
      await copyFile(path.join(unitsDir, 'client.toml'), clientToml);
      const env = { CREDENTIALS_DIRECTORY: etc };
      const check = async () => ({
        server: await run(serverBin, ['check', '--config', serverToml], { env }),
        client: await run(clientBin, ['check', '--config', clientToml], { env }),
      });
      const open = (key: string, file: string) =>
        `warning: ${key}: ${path.join(etc, file)} is open to other users (mode 644); chmod 600 it\n`;
      const shared = await check();
      assert.equal(shared.server.code, 0, shared.server.stderr);
      assert.equal(
        shared.server.stderr,
        open('auth.secret_file', 'secret') + open('admin.token_file', 'admin-token'),
      );
      assert.equal(shared.client.code, 0, shared.client.stderr);
      assert.equal(shared.client.stderr, open('token_file', 'token'));

      // As systemd leaves its copies: root's, 0400 and an ACL for the service's user, which stat shows as 0440.
      for (const name of Object.keys(secrets)) await chmod(path.join(etc, name), 0o440);
      const copies = await check();
      assert.equal(copies.server.code, 0, copies.server.stderr);
      assert.equal(copies.server.stderr, '', 'no warning for the group bits of an ACL');
      assert.equal(copies.client.code, 0, copies.client.stderr);
      assert.equal(copies.client.stderr, '');
    }),
);
