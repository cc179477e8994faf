// What the real CLIs say to a user who mistypes: an option, a config key, or token ports the server
// will refuse. Each names the likely intent and exits 2, or (for the token) warns and still issues it.
import assert from 'node:assert/strict';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { clientBin, run, runOk, serverBin, withHarness } from './lib/processes.js';
import { makeCa, makeCert } from './lib/routing.js';

/**
 * `check` and a start both refuse `args` (a --config and maybe flags): exit 2 and `problem` on stderr
 * (the whole of it, or matching it), so a start never gets as far as listening or dialling.
 */
async function assertRefusedByCheckAndStart(
  bin: string,
  args: string[],
  problem: string | RegExp,
  opts: { cwd?: string } = {},
): Promise<void> {
  for (const command of [['check'], []]) {
    const r = await run(bin, [...command, ...args], { timeoutMs: 20_000, ...opts });
    const what = [...command, ...args].join(' ');
    assert.equal(r.code, 2, `${what}: exit ${r.code}\n${r.stdout}${r.stderr}`);
    if (typeof problem === 'string') assert.equal(r.stderr, problem, what);
    else assert.match(r.stderr, problem, what);
  }
}

test('a mistyped option or config key is named with the one meant; exit status 2', { timeout: 30_000 }, (t) =>
  withHarness(t, async (h) => {
    const secret = await h.file('secret', `${'s'.repeat(40)}\n`);
    const serverToml = await h.file(
      'server.toml',
      `listen = "127.0.0.1:0"\nalow_ports = ["2222"]\n[auth]\nsecret_file = "${secret}"\n`,
    );
    const badKey = await run(serverBin, ['check', '--config', serverToml]);
    assert.equal(badKey.code, 2);
    assert.match(badKey.stderr, /server\.toml: alow_ports: unknown key \(did you mean "allow_ports"\?\)/);
    // Two listeners on one port: refused by check, not left for the start to fail on.
    const samePort = await h.file(
      'same-port.toml',
      `listen = "127.0.0.1:7000"\n[auth]\nsecret_file = "${secret}"\n[http]\nlisten = "0.0.0.0:7000"\n`,
    );
    const collision = await run(serverBin, ['check', '--config', samePort]);
    assert.equal(collision.code, 2, collision.stdout);
    assert.match(
      collision.stderr,
      /same-port\.toml: http\.listen: port 7000 is listen's too; each listener needs a port of its own/,
    );

    const clientToml = await h.file(
      'client.toml',
      [
        'server = "ws://127.0.0.1:1/_porthole"',
        'token = "x"',
        '[[proxies]]',
        'name = "ssh"',
        'type = "tcp"',
        'local = "127.0.0.1:22"',
        'remote_port = 2222',
        'proxy_protocl = "v2"',
        '',
      ].join('\n'),
    );
    const badProxyKey = await run(clientBin, ['check', '--config', clientToml]);
    assert.equal(badProxyKey.code, 2);
    assert.match(
      badProxyKey.stderr,
      /client\.toml: proxies\[0\] \("ssh"\)\.proxy_protocl: unknown key \(did you mean "proxy_protocol"\?\)/,
    );

    // A table array named in the singular.
    const singular = await h.file(
      'singular.toml',
      'server = "ws://127.0.0.1:1/_porthole"\ntoken = "x"\n[[proxy]]\nname = "ssh"\n',
    );
    const singularTable = await run(clientBin, ['check', '--config', singular]);
    assert.equal(singularTable.code, 2);
    // `proxy` is a key of its own (the proxy to dial through), which says so.
    assert.match(
      singularTable.stderr,
      /singular\.toml: proxy: a table here: tunnels are \[\[proxies\]\] tables \(did you mean "proxies"\?\)/,
    );
    // Flags only, no token: the flag is named, not the file's key.
    const noToken = await run(clientBin, [
      '--server',
      'ws://127.0.0.1:1/_porthole',
      '--tcp',
      '2222:127.0.0.1:22',
    ]);
    assert.equal(noToken.code, 2);
    assert.match(noToken.stderr, /^command line: --token-file: the client token is needed/m);
    // A rule's own type prefix does not quietly turn a --tcp proxy into a udp one.
    const crossed = await run(clientBin, [
      '--server',
      'ws://127.0.0.1:1/_porthole',
      '--token',
      'x',
      '--tcp',
      'udp:5353:127.0.0.1:53',
    ]);
    assert.equal(crossed.code, 2);
    assert.match(
      crossed.stderr,
      /^command line: --tcp: "udp:5353:127\.0\.0\.1:53" is a udp rule: give it to --udp$/m,
    );

    const cases: [bin: string, args: string[], message: RegExp][] = [
      [
        serverBin,
        ['check', '--confg', serverToml],
        /^porthole-server: unknown option --confg \(did you mean --config\?\)$/m,
      ],
      [serverBin, ['check', '--config'], /^porthole-server: --config needs a value$/m],
      [serverBin, ['--version=2'], /^porthole-server: --version takes no value$/m],
      [
        clientBin,
        ['--tokn-file', 'x'],
        /^porthole-client: unknown option --tokn-file \(did you mean --token-file\?\)$/m,
      ],
      [clientBin, ['--frobnicate'], /^porthole-client: unknown option --frobnicate$/m],
      // status reads only [admin] listen; before, a run option beside it was taken and ignored.
      [
        clientBin,
        ['status', '--admin', '127.0.0.1:1', '--tcp', '2222:127.0.0.1:22'],
        /^porthole-client: --tcp is not for "status" \(it asks the running client\)$/m,
      ],
      [
        serverBin,
        ['token', '--config', serverToml, '--name', 'x'],
        /^porthole-server: "token" needs a subcommand: "token issue", "token show"$/m,
      ],
      // A secret given in the wrong place is not echoed back: the mistyped command word is.
      [
        serverBin,
        ['tokn', 'show', 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl', '--config', serverToml],
        /^porthole-server: unknown command "tokn show <a word of 49 characters>"$/m,
      ],
      [clientBin, ['stauts'], /^porthole-client: unknown command "stauts"$/m],
      // parseArgs kept the last: a token for 8080 alone was issued without a word.
      [
        serverBin,
        ['token', 'issue', '--config', serverToml, '--name', 'x', '--ports', '2222', '--ports', '8080'],
        /^porthole-server: --ports is given twice, and only the second would count: give it once$/m,
      ],
      [
        clientBin,
        ['check', '-c', 'a.toml', '--config', 'b.toml'],
        /^porthole-client: --config is given twice, and only the second would count: give it once$/m,
      ],
    ];
    for (const [bin, args, message] of cases) {
      const r = await run(bin, args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message, args.join(' '));
      assert.match(r.stderr, /\(see porthole-(server|client) --help\)/);
    }
  }),
);

test(
  "a key spelt right but written below a table (TOML gives it to that table) is named as the outer table's, with where to move it",
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const secret = await h.file('secret', `${'s'.repeat(40)}\n`);
      // What a user appending to the end of the example files writes: subdomain_host after [http], and
      // default_host (an [https] key) after [[https.certs]].
      const serverToml = await h.file(
        'server.toml',
        [
          'listen = "127.0.0.1:0"',
          '[auth]',
          `secret_file = "${secret}"`,
          '[http]',
          'listen = "127.0.0.1:0"',
          'subdomain_host = "example.com"',
          '[https]',
          'listen = "127.0.0.1:0"',
          '[[https.certs]]',
          'cert_file = "cert.pem"',
          'key_file = "key.pem"',
          'default_host = "vps.example.com"',
          '',
        ].join('\n'),
      );
      const server = await run(serverBin, ['check', '--config', serverToml]);
      assert.equal(server.code, 2, server.stdout);
      assert.match(
        server.stderr,
        /server\.toml: http\.subdomain_host: unknown key \(a top-level key, but TOML puts every key below the \[http\] line into \[http\]: move it above the first table\)$/m,
      );
      assert.match(
        server.stderr,
        /server\.toml: https\.certs\[0\]\.default_host: unknown key \(a key of \[https\], but TOML puts every key below the \[\[https\.certs\]\] line into \[\[https\.certs\]\]: move it up, under \[https\]\)$/m,
      );

      const clientToml = await h.file(
        'client.toml',
        [
          'server = "ws://127.0.0.1:1/_porthole"',
          'token = "x"',
          '[[proxies]]',
          'name = "ssh"',
          'type = "tcp"',
          'local = "127.0.0.1:22"',
          'remote_port = 2222',
          'log_level = "debug"',
          '',
        ].join('\n'),
      );
      const client = await run(clientBin, ['check', '--config', clientToml]);
      assert.equal(client.code, 2, client.stdout);
      assert.match(
        client.stderr,
        /client\.toml: proxies\[0\] \("ssh"\)\.log_level: unknown key \(a top-level key, but TOML puts every key below the \[\[proxies\]\] line into \[\[proxies\]\]: move it above the first table\)$/m,
      );
    }),
);

test(
  'a misspelt key inside local_tls = { ... } or health_check = { ... } is named with the one meant, and one written beside them with the table it belongs in',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      // What a user copying the README's Proxmox proxy writes: a key mistyped between the braces, and
      // ca_file on a line of its own below local_tls (the client's own ca_file is a top-level key).
      const clientToml = await h.file(
        'client.toml',
        [
          'server = "ws://127.0.0.1:1/_porthole"',
          'token = "x"',
          '[[proxies]]',
          'name = "pve"',
          'type = "http"',
          'local = "192.168.1.10:8006"',
          'hosts = ["pve.example.com"]',
          'local_tls = { server_nme = "pve.lan" }',
          'ca_file = "pve-root-ca.pem"',
          'health_check = { type = "tcp", intervall = "10s" }',
          '',
        ].join('\n'),
      );
      const client = await run(clientBin, ['check', '--config', clientToml]);
      assert.equal(client.code, 2, client.stdout);
      assert.match(
        client.stderr,
        /client\.toml: proxies\[0\] \("pve"\)\.local_tls\.server_nme: unknown key \(did you mean "server_name"\?\)$/m,
      );
      assert.match(
        client.stderr,
        /client\.toml: proxies\[0\] \("pve"\)\.ca_file: unknown key \(did you mean local_tls = \{ ca_file = \.\.\. \}\?\)$/m,
      );
      assert.match(
        client.stderr,
        /client\.toml: proxies\[0\] \("pve"\)\.health_check\.intervall: unknown key \(did you mean "interval"\?\)$/m,
      );
    }),
);

test(
  'token issue warns about --ports the server refuses, and issues the token all the same; not one that expires at once',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const secret = await h.file('secret', `${'s'.repeat(40)}\n`);
      const serverToml = await h.file(
        'server.toml',
        `listen = "127.0.0.1:0"\nallow_ports = ["2222", "8000-8099"]\n[auth]\nsecret_file = "${secret}"\n`,
      );
      const inside = await run(serverBin, [
        'token',
        'issue',
        '--config',
        serverToml,
        '--name',
        'a',
        '--ports',
        '2222,8000-8010',
      ]);
      assert.equal(inside.code, 0, inside.stderr);
      // What revoking it takes and when it ends, beside the token: its id is the token's own jti.
      const insideId = JSON.parse(
        Buffer.from(inside.stdout.trim().split('.')[1]!, 'base64url').toString(),
      ).jti;
      assert.match(
        inside.stderr,
        new RegExp(
          `^token for "a": id ${insideId} \\(what \\[auth\\] revoked_tokens lists to revoke it\\), expires 20\\d\\d-[\\d-]+T[\\d:.]+Z\\n$`,
        ),
      );
      const outside = await run(serverBin, [
        'token',
        'issue',
        '--config',
        serverToml,
        '--name',
        'b',
        '--ports',
        '2222,8050-8120,9000',
      ]);
      assert.equal(outside.code, 0, outside.stderr);
      assert.match(outside.stdout, /^[\w-]+\.[\w-]+\.[\w-]+\n$/, 'the token is printed');
      assert.equal(
        outside.stderr.split('\n')[1],
        "warning: ports 8100-8120,9000 of --ports are outside this server's allow_ports (2222,8000-8099): proxies on them will be refused",
      );
      // A token dead on arrival is not issued.
      const dead = await run(serverBin, [
        'token',
        'issue',
        '--config',
        serverToml,
        '--name',
        'c',
        '--expires',
        '0s',
      ]);
      assert.equal(dead.code, 2);
      assert.equal(dead.stdout, '');
      assert.match(dead.stderr, /token issue: --expires must be longer than 0/);
      // Host grants are checked as the server will read them: a token no name could ever match is not issued.
      for (const [hosts, message] of [
        ['bad host', /token issue: invalid hostname "bad host"/],
        ['*', /token issue: invalid hostname "\*"/],
        ['http://app.example.com', /token issue: invalid hostname "http:\/\/app\.example\.com"/],
        ['', /token issue: --hosts needs at least one name \(leave it out to allow any name\)/],
      ] as const) {
        const r = await run(serverBin, [
          'token',
          'issue',
          '--config',
          serverToml,
          '--name',
          'd',
          '--hosts',
          hosts,
        ]);
        assert.equal(r.code, 2, `--hosts '${hosts}': ${r.stdout}`);
        assert.equal(r.stdout, '');
        assert.match(r.stderr, message);
      }
      const fine = await run(serverBin, [
        'token',
        'issue',
        '--config',
        serverToml,
        '--name',
        'e',
        '--hosts',
        'App.Example.com, *.home.example.com',
      ]);
      assert.equal(fine.code, 0, fine.stderr);
      const claims = JSON.parse(Buffer.from(fine.stdout.trim().split('.')[1]!, 'base64url').toString());
      assert.deepEqual(
        claims.hosts,
        ['app.example.com', '*.home.example.com'],
        'normalized as the server compares them',
      );
    }),
);

test(
  'client check warns, exit 0, about a token the server will refuse or end soon: not a JWT, near its expiry, a port outside its grant',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const secret = await h.file('secret', `${'s'.repeat(40)}\n`);
      const serverToml = await h.file(
        'server.toml',
        `listen = "127.0.0.1:0"\nallow_ports = ["2222-2230"]\n[auth]\nsecret_file = "${secret}"\n`,
      );
      const issue = ['token', 'issue', '--config', serverToml, '--name', 'lab', '--ports', '2222'];
      const token = (await runOk(serverBin, [...issue, '--expires', '1d'])).trim();
      await h.file('token', `${token}\n`);
      const clientToml = await h.file(
        'client.toml',
        [
          'server = "ws://127.0.0.1:1/_porthole"',
          'token_file = "token"',
          '[[proxies]]',
          'name = "ssh"',
          'type = "tcp"',
          'local = "127.0.0.1:22"',
          'remote_port = 2222',
          '[[proxies]]',
          'name = "web"',
          'type = "tcp"',
          'local = "127.0.0.1:80"',
          'remote_port = 2223',
          '',
        ].join('\n'),
      );
      const check = await run(clientBin, ['check', '--config', clientToml]);
      assert.equal(check.code, 0, check.stderr);
      assert.match(check.stdout, /client\.toml: ok \(2 proxies\)/);
      const lines = check.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 2, check.stderr);
      assert.match(
        lines[0]!,
        /^warning: token_file: the token expires at \S+Z, in (23h 59m|24h 0m), and the server ends the session then: issue a new one/,
      );
      assert.equal(
        lines[1],
        'warning: proxies[1] ("web").remote_port: port 2223 is outside the token\'s grant (2222); the server will refuse this proxy',
      );
      assert.ok(!check.stderr.includes(token), 'the token is never printed');

      // What a user pastes by mistake: the command, not the token it prints.
      await h.file('token', 'porthole-server token issue --name lab\n');
      const pasted = await run(clientBin, ['check', '--config', clientToml]);
      assert.equal(pasted.code, 0, pasted.stderr);
      assert.match(
        pasted.stderr,
        /^warning: token_file: the token is not a porthole token \(a JWT: three base64url parts joined by dots, as "porthole-server token issue" prints it\); the server will refuse it as "malformed token"\n$/,
      );
    }),
);

test(
  "a [tls] key that is not its certificate's, or the two files swapped, fails check and the start with exit 2 naming the key; an expired certificate is a warning",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const secret = await h.file('secret', `${'s'.repeat(40)}\n`);
      const ca = await makeCa(h);
      const one = await makeCert(h, ca, 'vps.test', ['vps.test']);
      const other = await makeCert(h, ca, 'other.test', ['other.test']);
      // No [https] table: before, only one of those had the pair checked, so check said ok and the start
      // failed with exit 1 and OpenSSL's bare "key values mismatch" / "no start line".
      const withTls = (name: string, cert: string, key: string) =>
        h.file(
          name,
          `listen = "127.0.0.1:0"\n[auth]\nsecret_file = "${secret}"\n[tls]\ncert_file = "${cert}"\nkey_file = "${key}"\n`,
        );
      const cases: [toml: string, message: RegExp][] = [
        [
          await withTls('mismatched.toml', one.cert, other.key),
          /^\S+mismatched\.toml: tls\.key_file: the key in \S+ does not match the certificate in \S+ \(tls\.cert_file\)$/m,
        ],
        [
          await withTls('swapped.toml', one.key, one.cert),
          /^\S+swapped\.toml: tls\.cert_file: \S+ is not a PEM certificate \(it holds a private key: are cert_file and key_file swapped\?\)$/m,
        ],
      ];
      for (const [toml, message] of cases) {
        await assertRefusedByCheckAndStart(serverBin, ['--config', toml], message);
      }

      // Expired: still a certificate the server can serve (a renewal may be on its way), so only a warning.
      const csr = h.path('expired.csr');
      const expired = h.path('expired.pem');
      await runOk('openssl', ['req', '-new', '-key', one.key, '-subj', '/CN=vps.test', '-out', csr]);
      await runOk('openssl', [
        'x509',
        '-req',
        '-in',
        csr,
        '-signkey',
        one.key,
        '-days',
        '-1',
        '-out',
        expired,
      ]);
      const expiredToml = await withTls('expired.toml', expired, one.key);
      const warning =
        /tls\.cert_file: the certificate in \S+expired\.pem expired on \w{3} +\d+ [\d:]+ \d{4} GMT/;
      const check = await run(serverBin, ['check', '--config', expiredToml]);
      assert.equal(check.code, 0, check.stderr);
      assert.match(check.stderr, new RegExp(`^warning: ${warning.source}`, 'm'));
      const server = h.spawn('server', serverBin, ['--config', expiredToml]);
      const logged = await server.waitForLog((l) => l.msg === 'config warning', 15_000);
      assert.match(String(logged.reason), warning);
      await server.waitForLog((l) => l.msg === 'server listening', 15_000);
    }),
);

test(
  'a user or password in the server URL is refused by check and at the start, exit 2, and never printed',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      // Before, the URL was taken, the user and password never sent, and the whole URL printed in the
      // `server` field of every log line and in `status`.
      const token = await h.file('token', 'a.b.c\n');
      const refusal =
        'must not hold a user or password ("user:password@"): the client signs in with its token alone, which goes in token_file';
      for (const url of ['ws://u:PWSECRET@[::1]:1/_porthole', 'wss://PWSECRET@vps.example.com/_porthole']) {
        const clientToml = await h.file('client.toml', `server = "${url}"\ntoken_file = "${token}"\n`);
        const flags = ['--server', url, '--token-file', token, '--tcp', '2222:127.0.0.1:22'];
        const cases: [args: string[], where: string][] = [
          [['check', '--config', clientToml], `${clientToml}: server`],
          [['--config', clientToml], `${clientToml}: server`],
          [['check', ...flags], 'command line: --server'],
          [flags, 'command line: --server'],
        ];
        for (const [args, where] of cases) {
          const r = await run(clientBin, args, { timeoutMs: 5000 });
          assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}\n${r.stdout}${r.stderr}`);
          assert.equal(r.stderr, `${where}: ${refusal}\n`, args.join(' '));
          assert.ok(!`${r.stdout}${r.stderr}`.includes('PWSECRET'), 'the password is not printed');
        }
      }
    }),
);

test(
  "check names a proxy by its name, says '1 proxy', and a --tcp rule on a taken port is one line naming both",
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const token = await h.file('token', 'a.b.c\n');
      const proxy = (name: string, remotePort: number) =>
        `[[proxies]]\nname = "${name}"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nremote_port = ${remotePort}\n`;
      const head = `server = "ws://127.0.0.1:1/_porthole"\ntoken_file = "${token}"\n`;
      const one = await h.file('one.toml', `${head}${proxy('ssh', 2222)}`);
      const ok = await run(clientBin, ['check', '--config', one]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(ok.stdout, `${one}: ok (1 proxy)\n`);
      assert.equal(
        (await run(clientBin, ['check', '--config', one, '--tcp', '2223:127.0.0.1:22'])).stdout,
        `${one}: ok (2 proxies)\n`,
      );

      // Before, "proxies[3].remote_port": the user had to count tables to find which.
      const four = await h.file(
        'four.toml',
        `${head}${proxy('ssh', 2222)}${proxy('dns', 2223)}${proxy('git', 2224)}${proxy('web', 70000)}`,
      );
      const bad = await run(clientBin, ['check', '--config', four]);
      assert.equal(bad.code, 2);
      assert.equal(bad.stderr, `${four}: proxies[3] ("web").remote_port: must be at most 65535\n`);

      // Before, two lines about a proxies[1] the user never wrote (its name "tcp-2222", then its remote_port).
      for (const [args, taken] of [
        [['--tcp', '2222:127.0.0.1:22', '--tcp', '2222:127.0.0.1:23'], '--tcp "2222:127.0.0.1:22"'],
        [['--config', one, '--tcp', '2222:127.0.0.1:23'], `proxies[0] ("ssh") in ${one}`],
      ] as const) {
        const r = await run(clientBin, [
          'check',
          '--server',
          'ws://127.0.0.1:1/_porthole',
          '--token-file',
          token,
          ...args,
        ]);
        assert.equal(r.code, 2, r.stdout);
        assert.equal(
          r.stderr,
          `command line: --tcp: "2222:127.0.0.1:23": tcp port 2222 is already taken by ${taken}\n`,
        );
      }
    }),
);

test(
  'a Node.js older than 20 is refused before anything else loads: one line naming both versions, exit 2',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      // No old Node here: a preload makes this one say it is Debian 12's 18.20.4 before the program starts.
      const preload = await h.file(
        'node-18.mjs',
        "Object.defineProperty(process, 'versions', { value: { ...process.versions, node: '18.20.4' } });\n",
      );
      for (const [program, bin] of [
        ['porthole-server', serverBin],
        ['porthole-client', clientBin],
      ] as const) {
        // --version needs nothing but the program's own modules: had they loaded first, it would answer.
        const r = await run(process.execPath, ['--import', preload, bin, '--version']);
        assert.equal(r.code, 2, `${program}: ${r.stdout}${r.stderr}`);
        assert.equal(r.stdout, '');
        assert.equal(
          r.stderr,
          `${program}: Node.js 18.20.4 (${process.execPath}) is too old: it needs Node.js 20 or later\n`,
        );
      }
    }),
);

test(
  "a udp_idle_timeout the other end cannot take is refused by check and at the start, exit 2: a client proxy's over 1d, a server's under 100ms",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      // Before, both passed check. The server closed the whole session at each registration of a client
      // whose udp proxy asked for 2d (its other proxies down too, the client saying only "connection closed
      // by peer"); a server set to 0s ended each flow at once, and the client refused its stream header.
      const token = await h.file('token', 'a.b.c\n');
      const client = await h.file(
        'client.toml',
        [
          'server = "ws://127.0.0.1:1/_porthole"',
          `token_file = "${token}"`,
          '[[proxies]]',
          'name = "wg"',
          'type = "udp"',
          'local = "127.0.0.1:51820"',
          'remote_port = 51820',
          'udp_idle_timeout = "2d"',
          '',
        ].join('\n'),
      );
      const clientProblem = `${client}: proxies[0] ("wg").udp_idle_timeout: must be at most 1d\n`;
      await assertRefusedByCheckAndStart(clientBin, ['--config', client], clientProblem);
      const longest = await h.file('longest.toml', (await readFile(client, 'utf8')).replace('"2d"', '"24h"'));
      assert.equal((await run(clientBin, ['check', '--config', longest])).code, 0);

      const secret = await h.file('secret', `${'s'.repeat(40)}\n`);
      for (const value of ['0s', '50ms']) {
        const server = await h.file(
          `server-${value}.toml`,
          `listen = "127.0.0.1:0"\nudp_idle_timeout = "${value}"\n[auth]\nsecret_file = "${secret}"\n`,
        );
        await assertRefusedByCheckAndStart(
          serverBin,
          ['--config', server],
          /server-\w+\.toml: udp_idle_timeout: must be at least 100ms\n$/,
        );
      }
    }),
);

test(
  'an [https] handshake_timeout of 0 is refused by check and at the start, exit 2, naming the key and what 0 would do',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      // Before, "0s" passed check, and the TLS port then gave each visitor's ClientHello 1 ms: with it 5 or
      // 50 ms late every connection was closed ("no complete ClientHello within 0 ms").
      const secret = await h.file('secret', `${'s'.repeat(40)}\n`);
      const server = await h.file(
        'server.toml',
        `listen = "127.0.0.1:0"\n[auth]\nsecret_file = "${secret}"\n[https]\nlisten = "127.0.0.1:0"\nhandshake_timeout = "0s"\n`,
      );
      await assertRefusedByCheckAndStart(
        serverBin,
        ['--config', server],
        `${server}: https.handshake_timeout: must be longer than 0 ("0s" would close every connection whose ClientHello is not there within 1 ms)\n`,
      );
      const shortest = await h.file(
        'shortest.toml',
        (await readFile(server, 'utf8')).replace('"0s"', '"1ms"'),
      );
      assert.equal((await run(serverBin, ['check', '--config', shortest])).code, 0);
    }),
);

test(
  "a flag's bad value is named as the flag, also beside --config; a flag's path is the working directory's, as with any command",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      // Before, flags were merged into the file's keys and checked as them: `--config conf/client.toml
      // --log-level loud` said "conf/client.toml: log_level", and `--token-file token` was read from
      // conf/token ("conf/client.toml: token_file: cannot read .../conf/token: ENOENT").
      await mkdir(h.path('conf'));
      const clientToml = await h.file(
        'conf/client.toml',
        'server = "ws://127.0.0.1:1/_porthole"\ntoken = "a.b.c"\n',
      );
      await h.file('token', 'd.e.f\n');
      const relative = path.relative(h.dir, clientToml);
      const ok = await run(clientBin, ['check', '--config', relative, '--token-file', 'token'], {
        cwd: h.dir,
      });
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(ok.stdout, `${relative}: ok (0 proxies)\n`);
      // ca_file must hold a certificate: a key or any other file failed every dial as "not signed by the CA".
      const ca = await makeCa(h);
      const withCa = await run(clientBin, ['check', '--config', relative, '--ca-file', ca.cert], {
        cwd: h.dir,
      });
      assert.equal(withCa.code, 0, withCa.stderr);
      await h.file('secret.hex', 'aa'.repeat(32));
      const cases: [flags: string[], line: string][] = [
        [
          ['--ca-file', ca.key],
          `command line: --ca-file: ${ca.key} is not a PEM certificate (it holds a private key: ca_file is the certificate of the CA that signed the server's)`,
        ],
        [
          ['--ca-file', 'secret.hex'],
          `command line: --ca-file: ${h.path('secret.hex')} is not a PEM certificate`,
        ],
        [
          ['--log-level', 'loud'],
          'command line: --log-level: expected one of trace, debug, info, warn, error, fatal, silent',
        ],
        [['--server', 'http://vps.example.com/'], 'command line: --server: must be a ws:// or wss:// URL'],
        [['--token-file', 'nope'], `command line: --token-file: cannot read ${h.path('nope')}: ENOENT`],
        [['--ca-file', 'ca.pem'], `command line: --ca-file: cannot read ${h.path('ca.pem')}: ENOENT`],
      ];
      for (const [flags, line] of cases)
        await assertRefusedByCheckAndStart(clientBin, ['--config', relative, ...flags], `${line}\n`, {
          cwd: h.dir,
        });
    }),
);

test('--help names every option the parser takes, short forms too, and no option it refuses', {
  timeout: 60_000,
}, async () => {
  // Before, -h and -V were taken but --help named only --help and --version.
  for (const bin of [serverBin, clientBin]) {
    const help = await run(bin, ['-h']);
    assert.equal(help.code, 0, help.stderr);
    assert.equal((await run(bin, ['--help'])).stdout, help.stdout);
    assert.match(help.stdout, /-h, --help \| -V, --version/);
    assert.match(
      (await run(bin, ['-V'])).stdout,
      /^porthole-(server|client) \d+\.\d+\.\d+ \(protocol \d+\)\n$/,
    );
    // Each option the help text names parses: "--help" after it is answered, or it is a switch that takes
    // no value. An option the parser does not know would be "unknown option".
    const options = new Set(help.stdout.match(/(?<![\w-])--?[a-zA-Z][\w-]*/g));
    assert.ok(options.size >= 8, [...options].join(' '));
    for (const option of options) {
      // A short option cannot take "=x"; a switch before "x" leaves it a word, which --help outranks.
      const r = await run(bin, option.startsWith('--') ? [`${option}=x`, '--help'] : [option, 'x', '--help']);
      const takesNoValue = new RegExp(`^porthole-\\w+: ${option} takes no value$`, 'm');
      assert.ok(r.code === 0 || takesNoValue.test(r.stderr), `${option}: ${r.stderr}`);
    }
  }
});

test(
  "a proxy URL's slips are named (the password never): bad percent-encoding, port 0, a scheme without its colon",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const clientToml = await h.file(
        'client.toml',
        'server = "ws://127.0.0.1:1/_porthole"\ntoken = "a.b.c"\n',
      );
      const password = 'pw%zz-7c1e';
      // Before: "URI malformed", "ok" (every dial then "ECONNREFUSED proxy 127.0.0.1:0"), and for the
      // environment's "http//..." (read as http://http//...) "must not have a path or query".
      const cases: [flags: string[], env: Record<string, string>, line: string][] = [
        [
          ['--proxy', `http://me:${password}@127.0.0.1:3128`],
          {},
          'command line: --proxy: its user or password is not valid percent-encoding: write a "%" in it as %25',
        ],
        [
          ['--proxy', 'socks5://127.0.0.1:0'],
          {},
          'command line: --proxy: names port 0: give the port the proxy listens on ("socks5://proxy.corp:1080")',
        ],
        [
          ['--proxy', 'http//127.0.0.1:3128'],
          {},
          'command line: --proxy: "http//" lacks its colon: write "http://"',
        ],
        [
          [],
          { http_proxy: 'http//127.0.0.1:3128' },
          'environment: http_proxy: "http//" lacks its colon: write "http://"; proxy = "none" in the config (or --proxy none) ignores it',
        ],
      ];
      for (const [flags, env, line] of cases)
        for (const command of [['check'], []]) {
          const r = await run(clientBin, [...command, '--config', clientToml, ...flags], {
            env,
            timeoutMs: 20_000,
          });
          const what = `${JSON.stringify(env)} ${[...command, ...flags].join(' ')}`;
          assert.equal(r.code, 2, `${what}: exit ${r.code}\n${r.stdout}${r.stderr}`);
          assert.equal(r.stderr, `${line}\n`, what);
          assert.ok(!r.stderr.includes(password), what);
        }
    }),
);

test('a tcp proxy without remote_port is told 0 lets the server pick one', { timeout: 30_000 }, (t) =>
  withHarness(t, async (h) => {
    const clientToml = await h.file(
      'client.toml',
      'server = "ws://127.0.0.1:1/_porthole"\ntoken = "a.b.c"\n[[proxies]]\nname = "web"\ntype = "tcp"\nlocal = "127.0.0.1:80"\n',
    );
    // Before: "remote_port: required", with nothing of the choice remote_port = 0 gives.
    await assertRefusedByCheckAndStart(
      clientBin,
      ['--config', clientToml],
      `${clientToml}: proxies[0] ("web").remote_port: required for a tcp proxy: its port on the server, or 0 for one the server picks (or private = true for one only visitors reach)\n`,
    );
  }),
);
