#!/usr/bin/env node
// npm run bundle: one self-contained ES module per program (pino, jose, zod and smol-toml inside), for
// installing on a machine with nothing but Node 20 (README "Run it as a service", step 1: the files keep their
// .mjs name, which makes Node load them as ES modules, and /usr/local/bin gets symlinks). bufferutil (a native addon that speeds up WebSocket masking) stays
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
  const outfile = `${values.outdir}/${name}.mjs`;
  const result = await build({
    entryPoints: [`${root}${pkg}/dist/src/main.js`],
    outfile,
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
  // Runnable as it is, through its interpreter line, like the bin scripts (`install -m 755` sets it too).
  chmodSync(outfile, 0o755);
  const bytes = Object.values(result.metafile.outputs)[0].bytes;
  process.stdout.write(`${outfile}  ${(bytes / 1024).toFixed(0)} KiB\n`);
}
