// The npm registry mirror of this workplace serves only linux packages, so npm writes a lockfile without the
// other platforms' optional binaries (biome, turbo, esbuild) and `npm ci` then refuses it as out of sync.
// This adds those entries with their os/cpu constraints, as a lockfile made elsewhere has them; npm never
// fetches them on linux. Run it after changing dependencies: node scripts/complete-lockfile.mjs
import { readFileSync, writeFileSync } from 'node:fs';

const lockPath = process.argv[2] ?? 'package-lock.json';
const lock = JSON.parse(readFileSync(lockPath, 'utf8'));
let added = 0;
for (const [path, entry] of Object.entries(lock.packages)) {
  if (!entry.optionalDependencies || !path.startsWith('node_modules/')) continue;
  for (const [name, version] of Object.entries(entry.optionalDependencies)) {
    const key = `node_modules/${name}`;
    if (lock.packages[key]) continue;
    // os/cpu from the package name convention (e.g. @biomejs/cli-darwin-arm64, @turbo/windows-64)
    const meta = guess(name);
    lock.packages[key] = { version, dev: entry.dev, optional: true, ...meta };
    added++;
  }
}
function guess(name) {
  const n = name.split('/').pop();
  const os = /darwin/.test(n)
    ? 'darwin'
    : /win32|windows/.test(n)
      ? 'win32'
      : /android/.test(n)
        ? 'android'
        : /freebsd/.test(n)
          ? 'freebsd'
          : /openbsd/.test(n)
            ? 'openbsd'
            : /netbsd/.test(n)
              ? 'netbsd'
              : /sunos/.test(n)
                ? 'sunos'
                : /aix/.test(n)
                  ? 'aix'
                  : /openharmony/.test(n)
                    ? 'openharmony'
                    : 'linux';
  const cpu = /arm64|aarch64/.test(n)
    ? 'arm64'
    : /arm/.test(n)
      ? 'arm'
      : /ia32|386/.test(n)
        ? 'ia32'
        : /loong64/.test(n)
          ? 'loong64'
          : /mips64el/.test(n)
            ? 'mips64el'
            : /ppc64/.test(n)
              ? 'ppc64'
              : /riscv64/.test(n)
                ? 'riscv64'
                : /s390x/.test(n)
                  ? 's390x'
                  : 'x64';
  const out = { os: [os], cpu: [cpu] };
  if (/musl/.test(n)) out.libc = ['musl'];
  return out;
}
const sorted = Object.fromEntries(
  Object.entries(lock.packages).sort(([a], [b]) => (a === '' ? -1 : b === '' ? 1 : a.localeCompare(b))),
);
lock.packages = sorted;
writeFileSync(lockPath, JSON.stringify(lock, null, 2) + '\n');
console.log(`added ${added} optional platform entries`);
