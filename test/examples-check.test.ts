// What a new user copies passes `check`: examples/server.toml and client.toml with /etc/porthole's files in
// place, the README's walk-through (server.toml without [http], [https] and [admin], and the token it issues),
// and every TOML block of the README, added to the keys it says it goes with. (examples/systemd/'s
// configs are checked by ops-systemd.test.ts.)
import assert from 'node:assert/strict';
import { chmod, copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { issueToken } from '@porthole/protocol';
import { clientBin, type Harness, repoRoot, run, serverBin, withHarness } from './lib/processes.js';
import { makeCa, makeCert } from './lib/routing.js';

const EXAMPLES = path.join(repoRoot, 'examples');

/**
 * /etc/porthole as the README fills it (secret, admin-token, token, laptop-token, socks-password,
 * http-proxy-password, error pages, certificates for
 * example.com, a local service's certificate), in the
 * harness dir, each file 0600. Returns the directory.
 */
async function etcPorthole(h: Harness): Promise<string> {
  const etc = h.path('etc-porthole');
  await mkdir(path.join(etc, 'example.com'), { recursive: true });
  const ca = await makeCa(h);
  const pair = await makeCert(h, ca, 'example.com', ['example.com', '*.example.com']);
  const files: [name: string, from: string | { text: string }][] = [
    ['secret', { text: `${'s'.repeat(64)}\n` }],
    ['admin-token', { text: `${'a'.repeat(48)}\n` }],
    ['token', { text: `${await issueToken('s'.repeat(64), { name: 'homelab', expiresInMs: null })}\n` }],
    // The laptop's, in "Private services and visitors" and the switching guide: it visits homelab's services.
    [
      'laptop-token',
      {
        text: `${await issueToken('s'.repeat(64), { name: 'laptop', visit: ['homelab/*'], expiresInMs: null })}\n`,
      },
    ],
    ['socks-password', { text: 'a long random password\n' }],
    ['http-proxy-password', { text: 'another long random password\n' }],
    ['fullchain.pem', pair.cert],
    ['privkey.pem', pair.key],
    ['example.com/fullchain.pem', pair.cert],
    ['example.com/privkey.pem', pair.key],
    // "A local service that speaks only HTTPS": the service's own certificate, its local_tls.ca_file.
    ['unifi.pem', pair.cert],
    // The [http] error pages (not_found_page, unavailable_page).
    ['404.html', { text: '<h1>This name is not served here</h1>\n' }],
    ['503.html', { text: '<h1>Back soon</h1>\n' }],
  ];
  for (const [name, from] of files) {
    const to = path.join(etc, name);
    if (typeof from === 'string') await copyFile(from, to);
    else await writeFile(to, from.text);
    await chmod(to, 0o600);
  }
  return etc;
}

/** `check` passes on `file`, with nothing to warn about. */
async function assertChecks(bin: string, file: string, what: string): Promise<void> {
  const r = await run(bin, ['check', '--config', file], { timeoutMs: 15_000 });
  assert.equal(r.code, 0, `${what}: ${r.stderr}`);
  assert.match(r.stdout, /: ok/, what);
  assert.equal(r.stderr, '', `${what}: no warning`);
}

/** The tables (and the keys under them) a config text has, dropped: `names` are their header lines. */
function withoutTables(text: string, names: string[]): string {
  let dropping = false;
  return text
    .split('\n')
    .filter((line) => {
      const header = /^\[\[?([\w.]+)\]\]?/.exec(line)?.[1];
      if (header !== undefined) dropping = names.includes(header);
      return !dropping;
    })
    .join('\n');
}

/**
 * The files of another tool that "Coming from frp, rathole, chisel or ssh -R" shows beside porthole's: the
 * columns under them are read past (there is no frp or rathole here to check them).
 */
const OTHER_TOOLS_FILES = new Set(['frps.toml', 'frpc.toml', 'rathole server.toml', 'rathole client.toml']);

/** The names of the tables a config text has ("auth", "https.certs"). */
function tableNames(text: string): string[] {
  return [...text.matchAll(/^\[\[?([\w.]+)\]\]?/gm)].map((m) => m[1]!);
}

/** The `key = value` lines of `text` without those whose key `other` sets too. */
function withoutKeys(text: string, other: string): string {
  const keys = new Set([...other.matchAll(/^([\w.-]+)\s*=/gm)].map((m) => m[1]!));
  return text
    .split('\n')
    .filter((line) => !keys.has(/^([\w.-]+)\s*=/.exec(line)?.[1] ?? ''))
    .join('\n');
}

/** A block headed "# conf.d/wiki.toml": a file client.toml's `includes` reads, not a config of its own. */
const INCLUDED_FILE_HEADER = /^# (conf\.d\/[\w-]+\.toml)$/;

/**
 * The README's ```toml blocks, each as the porthole files it shows: a block whose first line names two files
 * ("# server.toml    # client.toml", or "# frpc.toml    # client.toml") holds them side by side, the second
 * one commented out; one headed "# conf.d/NAME.toml" is a file for client.toml's `includes`.
 */
function readmeTomlBlocks(readme: string): { file: string; text: string }[] {
  const blocks = [...readme.matchAll(/^```toml\n([\s\S]*?)^```$/gm)].map((m) => m[1]!);
  const files: { file: string; text: string }[] = [];
  for (const block of blocks) {
    const lines = block.split('\n');
    const included = INCLUDED_FILE_HEADER.exec(lines[0]!)?.[1];
    if (included !== undefined) {
      files.push({ file: included, text: lines.slice(1).join('\n') });
      continue;
    }
    const names = [...lines[0]!.matchAll(/# ((?:rathole )?[\w-]+\.toml)/g)];
    assert.ok(names.length > 0, `a README toml block says which file it is: ${lines[0]}`);
    const columns = names.map((name) => name.index!);
    names.forEach((name, i) => {
      if (OTHER_TOOLS_FILES.has(name[1]!)) return;
      const text = lines
        .slice(1)
        .map((line) => line.slice(columns[i], columns[i + 1]).trimEnd())
        .map((line) => (i > 0 ? line.replace(/^# ?/, '') : line))
        .join('\n');
      files.push({ file: name[1]!, text });
    });
  }
  return files;
}

test(
  'examples/server.toml, examples/client.toml, the walk-through and the README blocks pass check, without a warning',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const etc = await etcPorthole(h);
      const atEtc = (text: string) => text.replaceAll('/etc/porthole', etc);

      const serverExample = atEtc(await readFile(path.join(EXAMPLES, 'server.toml'), 'utf8'));
      const clientExample = atEtc(await readFile(path.join(EXAMPLES, 'client.toml'), 'utf8'));
      await assertChecks(serverBin, await h.file('server.toml', serverExample), 'examples/server.toml');
      await assertChecks(clientBin, await h.file('client.toml', clientExample), 'examples/client.toml');

      // "A real VPS and a homelab box": the example without its [http], [https] and [admin] tables, and the
      // token the README issues from it (no warning: its --ports are inside the example's allow_ports).
      const walkThrough = await h.file(
        'walk-through.toml',
        withoutTables(serverExample, ['http', 'https', 'https.certs', 'https.acme', 'admin']),
      );
      await assertChecks(serverBin, walkThrough, 'examples/server.toml without [http], [https] and [admin]');
      const issued = await run(serverBin, [
        'token',
        'issue',
        '--config',
        walkThrough,
        '--name',
        'homelab',
        '--ports',
        '2222,5353,8000-8099',
        '--expires',
        '90d',
      ]);
      assert.equal(issued.code, 0, issued.stderr);
      assert.match(
        issued.stderr,
        /^token for "homelab": id [\w-]+ \(what \[auth\] revoked_tokens lists to revoke it\), expires \S+Z\n$/,
        "the README's --ports are inside the example's allow_ports: no warning",
      );

      // Each README block goes with the keys the walk-through's files already have (it says so).
      const base: Record<string, { top: string; tables: string; bin: string }> = {
        'server.toml': { top: '', tables: `[auth]\nsecret_file = "${etc}/secret"\n`, bin: serverBin },
        'client.toml': {
          top: `server = "wss://vps.example.com/_porthole"\ntoken_file = "${etc}/token"\n`,
          tables: '',
          bin: clientBin,
        },
      };
      const blocks = readmeTomlBlocks(await readFile(path.join(repoRoot, 'README.md'), 'utf8'));
      assert.ok(blocks.length >= 2, 'the README has its toml blocks');
      // The included files first, in /etc/porthole/conf.d, where the blocks' `includes` read them.
      await mkdir(path.join(etc, 'conf.d'));
      for (const { file, text } of blocks)
        if (INCLUDED_FILE_HEADER.test(`# ${file}`)) await writeFile(path.join(etc, file), atEtc(text));
      for (const [i, { file, text }] of blocks.entries()) {
        if (INCLUDED_FILE_HEADER.test(`# ${file}`)) continue;
        const with_ = base[file];
        assert.ok(with_, `README block ${i} is a ${file}, one of ${Object.keys(base)}`);
        // Its own top-level keys before its tables, and the base's tables after them all.
        const firstTable = text.search(/^\[/m);
        const [top, tables] =
          firstTable === -1 ? [text, ''] : [text.slice(0, firstTable), text.slice(firstTable)];
        // A block that writes a key or table of the base itself (the switching guide's server and token_file)
        // keeps its own.
        const whole = `${withoutKeys(with_.top, top)}${top}\n${withoutTables(with_.tables, tableNames(tables))}${tables}\n`;
        await assertChecks(
          with_.bin,
          await h.file(`readme-${i}-${file}`, atEtc(whole)),
          `README block ${i} (${file})`,
        );
      }
    }),
);
