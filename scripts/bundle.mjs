#!/usr/bin/env node
// npm run bundle: self-contained ES modules per program (pino, jose, zod and smol-toml inside), for
// installing on a machine with nothing but Node 20 (README "Run it as a service", step 1: the files keep their
// .mjs name, which makes Node load them as ES modules, and /usr/local/bin gets symlinks).
// Each program is a tiny entry, porthole-server.mjs, and the files it imports, porthole-server-*.mjs: Node
// parses a module and everything it imports statically before running a line of it, and parsing the whole
// program as one 1.3 MiB file took ~30 ms on a busy 2-core machine, during which a SIGHUP (a `systemctl reload`
// right after the start) ended the program. The entry installs the SIGHUP listener and then imports the rest. bufferutil (a native addon that speeds up WebSocket masking) stays
// outside: it is used when require() can find it next to the bundle; the mux masks in JavaScript otherwise.
// Usage: node scripts/bundle.mjs [--outdir DIR]   (after `tsc -b packages/server packages/client`)
import { chmodSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
const { values } = parseArgs({ options: { outdir: { type: 'string', default: `${root}dist-bundle` } } });

const programs = [
  { name: 'porthole-server', pkg: 'packages/server' },
  { name: 'porthole-client', pkg: 'packages/client' },
];

for (const { name, pkg } of programs) {
  const version = JSON.parse(readFileSync(`${root}${pkg}/package.json`, 'utf8')).version;
  // The same interpreter line as the package's bin script (it carries the malloc and GC settings explained there).
  const shebang = readFileSync(`${root}${pkg}/bin/${name}.js`, 'utf8').split('\n')[0];
  const result = await build({
    entryPoints: { [name]: `${root}${pkg}/dist/src/main.js` },
    outdir: values.outdir,
    outExtension: { '.js': '.mjs' },
    // main.js's dynamic import('./cli.js') becomes porthole-server-cli.mjs; what both share, a -chunk.mjs.
    // No content hash in the names: an upgrade overwrites the same files instead of leaving old ones behind.
    splitting: true,
    chunkNames: `${name}-[name]`,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    // Optional native speed-up of WebSocket masking: required at run time if present, skipped if not.
    external: ['bufferutil', 'utf-8-validate'],
    // packageVersion() reads package.json next to the module; a bundle has none, so the version is baked in.
    define: { PORTHOLE_BUNDLE_VERSION: JSON.stringify(version) },
    // CommonJS dependencies (pino) call require() for Node built-ins; give the ES module a real one.
    banner: {
      js: [
        shebang,
        `// ${name} ${version}: bundled by scripts/bundle.mjs; source: packages/ in the porthole repository`,
        "import { createRequire as __portholeCreateRequire } from 'node:module';",
        'const require = __portholeCreateRequire(import.meta.url);',
      ].join('\n'),
    },
    legalComments: 'eof',
    logLevel: 'warning',
    metafile: true,
  });
  for (const [outfile, { bytes }] of Object.entries(result.metafile.outputs)) {
    // Runnable as it is, through its interpreter line, like the bin scripts (`install -m 755` sets it too).
    if (outfile.endsWith(`/${name}.mjs`)) chmodSync(outfile, 0o755);
    process.stdout.write(`${outfile}  ${(bytes / 1024).toFixed(0)} KiB\n`);
  }
}
