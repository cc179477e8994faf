import { readFileSync } from 'node:fs';

/** Version of the control protocol spoken on stream 1; bumped on any incompatible change. */
export const PROTOCOL_VERSION = 1;

/**
 * The `version` field of the package.json next to a module's package, for `--version` and the hello
 * messages. `moduleUrl` is `import.meta.url` of a file in `<pkg>/dist/src/`.
 */
export function packageVersion(moduleUrl: string): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', moduleUrl), 'utf8')) as {
    version?: unknown;
  };
  return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
}

export const PROTOCOL_PACKAGE_VERSION = packageVersion(import.meta.url);
