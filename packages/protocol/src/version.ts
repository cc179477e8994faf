import { readFileSync } from 'node:fs';

/** Version of the control protocol spoken on stream 1; bumped on any incompatible change. */
export const PROTOCOL_VERSION = 1;

/** Set by scripts/bundle.mjs (esbuild `define`): a bundled program has no package.json beside it. */
declare const PORTHOLE_BUNDLE_VERSION: string | undefined;

/**
 * The `version` field of the package.json next to a module's package, for `--version` and the hello
 * messages. `moduleUrl` is `import.meta.url` of a file in `<pkg>/dist/src/`. In a bundle, the version
 * the bundler baked in.
 */
export function packageVersion(moduleUrl: string): string {
  if (typeof PORTHOLE_BUNDLE_VERSION === 'string') return PORTHOLE_BUNDLE_VERSION;
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', moduleUrl), 'utf8')) as {
    version?: unknown;
  };
  return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
}

export const PROTOCOL_PACKAGE_VERSION = packageVersion(import.meta.url);
