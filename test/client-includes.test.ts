// client.toml's `includes` (frpc's, for one file per service in a conf.d directory): the real CLIs with a
// client.toml whose proxies sit in included files, reached through the server's public ports by socat; a
// file dropped into conf.d and taken out again by reloads; `check` naming an included file's mistakes.
import assert from 'node:assert/strict';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { issueToken } from '@porthole/protocol';
import { clientBin, freePorts, type Harness, run, withHarness } from './lib/processes.js';
import { issueRoutedToken, startRoutedServer, tomlLines } from './lib/routing.js';
import { tryConnect, waitUntilAccepting } from './lib/services.js';

/** A [[proxies]] table of a tcp proxy. */
function tcpProxy(name: string, local: string, remotePort: number): string {
  return `[[proxies]]\n${tomlLines({ name, type: 'tcp', local, remote_port: remotePort })}\n`;
}

/**
 * socat answering each connection at `address` (a socat address: TCP-LISTEN:..., UNIX-LISTEN:...) with `tag`,
 * read from a file: with `SYSTEM:echo` the echo could exit before its socat's transfer loop began, and
 * that socat then exited with nothing sent (a visit read '' in 6 of 12 runs on a loaded machine).
 */
async function startTaggedSocat(
  h: Harness,
  address: string,
  tag: string,
  target: Parameters<typeof waitUntilAccepting>[0],
) {
  const tagFile = h.path(`${tag}.txt`);
  await writeFile(tagFile, `${tag}\n`);
  h.spawn(`socat ${tag}`, 'socat', ['-U', `${address},fork`, `OPEN:${tagFile},rdonly`]);
  await waitUntilAccepting(target, `socat ${tag}`);
}

/** What a visitor reads from the server's public `port`, by socat: the tag of the service behind it. */
async function visit(port: number): Promise<string> {
  const r = await run('socat', ['-T', '5', '-', `TCP:127.0.0.1:${port}`], { timeoutMs: 10_000 });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

/** client.toml in `dir`, its token beside it; `top` is written above its tables. */
async function writeClientToml(
  dir: string,
  token: string,
  top: Record<string, string | string[]>,
  tables = '',
) {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'token'), `${token}\n`, { mode: 0o600 });
  const file = path.join(dir, 'client.toml');
  await writeFile(file, `${tomlLines({ token_file: 'token', ...top })}\n${tables}`, { mode: 0o600 });
  return file;
}

test(
  "an included file's proxies run as client.toml's (a Unix socket next to it); a file dropped into conf.d and removed again is added and removed by reloads",
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const [webLocal, extraLocal, webPort, appPort, extraPort, adminPort] = (await freePorts(6)) as number[];
      const dir = h.path('etc-porthole');
      const confd = path.join(dir, 'conf.d');
      await mkdir(confd, { recursive: true });
      await startTaggedSocat(h, `TCP-LISTEN:${webLocal},bind=127.0.0.1,reuseaddr`, 'web-service', {
        host: '127.0.0.1',
        port: webLocal!,
      });
      await startTaggedSocat(h, `TCP-LISTEN:${extraLocal},bind=127.0.0.1,reuseaddr`, 'extra-service', {
        host: '127.0.0.1',
        port: extraLocal!,
      });
      const socket = path.join(confd, 'app.sock');
      await startTaggedSocat(h, `UNIX-LISTEN:${socket}`, 'unix-service', { path: socket });

      const server = await startRoutedServer(h, { http: false });
      const token = await issueRoutedToken(server, {
        name: 'homelab',
        ports: `${webPort},${appPort},${extraPort}`,
      });
      await writeFile(path.join(confd, 'web.toml'), tcpProxy('web', `127.0.0.1:${webLocal}`, webPort!));
      // Relative: next to app.toml, in conf.d, not next to client.toml.
      await writeFile(path.join(confd, 'app.toml'), tcpProxy('app', 'unix:app.sock', appPort!));
      const config = await writeClientToml(
        dir,
        token,
        { server: server.url, reconnect_initial: '200ms', includes: ['conf.d/*.toml'] },
        `[admin]\n${tomlLines({ listen: `127.0.0.1:${adminPort}` })}\n`,
      );

      const checked = await run(clientBin, ['check', '--config', config], { timeoutMs: 15_000 });
      assert.equal(checked.code, 0, checked.stderr);
      assert.equal(
        checked.stdout,
        `${config}: ok (2 proxies)\nincluded: ${path.join(confd, 'app.toml')}, ${path.join(confd, 'web.toml')}\n`,
      );

      const client = h.spawn('client', clientBin, ['--config', config]);
      for (const proxy of ['web', 'app'])
        await client.waitForMsg('proxy registered', 15_000, { fields: { proxy } });
      assert.equal(await visit(webPort!), 'web-service\n');
      assert.equal(await visit(appPort!), 'unix-service\n');

      const reload = () => run(clientBin, ['reload', '--config', config], { timeoutMs: 15_000 });
      await writeFile(
        path.join(confd, 'extra.toml'),
        tcpProxy('extra', `127.0.0.1:${extraLocal}`, extraPort!),
      );
      const added = await reload();
      assert.equal(added.code, 0, added.stderr);
      assert.equal(added.stdout, 'reloaded:\n  proxies added: extra\n');
      await client.waitForMsg('proxy registered', 10_000, { fields: { proxy: 'extra' } });
      assert.equal(await visit(extraPort!), 'extra-service\n');

      // A broken included file: the reload names it and its key, and the running proxies stay.
      const broken = path.join(confd, 'broken.toml');
      await writeFile(broken, tcpProxy('broken', `127.0.0.1:${extraLocal}`, 70000));
      const refused = await reload();
      assert.equal(refused.code, 2, refused.stdout);
      assert.match(
        refused.stderr,
        new RegExp(`${broken}: proxies\\[0\\] \\("broken"\\)\\.remote_port: must be at most 65535`),
      );
      assert.match(refused.stderr, /\nthe running configuration is kept\n$/);
      await rm(broken);

      // Taken out of conf.d, and SIGHUP: its proxy goes, and its port with it.
      const mark = client.mark();
      await rm(path.join(confd, 'extra.toml'));
      client.child.kill('SIGHUP');
      const reloaded = await client.waitForMsg('config reloaded', 10_000, { from: mark });
      assert.deepEqual(reloaded.removed, ['extra']);
      await server.proc.waitForMsg('proxy closed', 10_000, { fields: { proxy: 'extra' } });
      assert.equal(await tryConnect('127.0.0.1', extraPort!, 2_000), 'refused');
      assert.equal(await visit(webPort!), 'web-service\n', 'the others stay');
    }),
);

test(
  "check names an included file's mistakes by that file and its key, a clash across files by both files",
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const dir = h.path('etc-porthole');
      const confd = path.join(dir, 'conf.d');
      await mkdir(confd, { recursive: true });
      const token = await issueToken('s'.repeat(32), { name: 'homelab', expiresInMs: null });
      const config = await writeClientToml(dir, token, {
        server: 'wss://vps.example.com/_porthole',
        includes: ['conf.d/*.toml'],
      });
      const check = () => run(clientBin, ['check', '--config', config], { timeoutMs: 15_000 });
      const [a, b] = [path.join(confd, 'a.toml'), path.join(confd, 'b.toml')];

      const empty = await check();
      assert.equal(empty.code, 0, empty.stderr);
      assert.equal(empty.stderr, 'warning: includes[0]: "conf.d/*.toml" matches no file\n');
      assert.equal(empty.stdout, `${config}: ok (0 proxies)\nincluded: no file\n`);

      await writeFile(a, tcpProxy('web', '127.0.0.1:8080', 8080));
      await writeFile(
        b,
        `${tcpProxy('ssh', '127.0.0.1:22', 2222)}\n${tcpProxy('web', '127.0.0.1:8081', 8081)}`.replace(
          'remote_port = 2222',
          'remote_prot = 2222',
        ),
      );
      const mistakes = await check();
      assert.equal(mistakes.code, 2, mistakes.stdout);
      assert.equal(
        mistakes.stderr,
        [
          `${b}: proxies[0] ("ssh").remote_prot: unknown key (did you mean "remote_port"?)`,
          `${b}: proxies[0] ("ssh").remote_port: required for a tcp proxy: its port on the server, or 0 for one the server picks (or private = true for one only visitors reach)`,
          `${b}: proxies[1] ("web").name: "web" is already the name of proxies[0] in ${a}`,
          '',
        ].join('\n'),
      );

      await writeFile(b, `log_level = "debug"\n${tcpProxy('ssh', '127.0.0.1:22', 2222)}`);
      const topLevel = await check();
      assert.equal(topLevel.code, 2, topLevel.stdout);
      assert.equal(
        topLevel.stderr,
        `${b}: log_level: only [[proxies]] and [[visitors]] belong in an included file; log_level goes in ${config}\n`,
      );
    }),
);
