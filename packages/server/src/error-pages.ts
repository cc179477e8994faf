// [http] not_found_page and unavailable_page: the operator's own bodies for the answers the vhost ports give
// themselves (frps's custom404Page, and its companion for "cannot be served now"). Read with the config (start,
// `check`, reload), held in memory: answering a request never touches the disk.
import { type Stats, statSync } from 'node:fs';
import { ConfigError, readConfigFile, resolveConfigPath } from '@porthole/protocol';

/**
 * An error page is a page, not a site: every one is held in memory for the server's life, and larger is
 * more likely a wrong path (an image, a log) than a page.
 */
export const MAX_ERROR_PAGE_BYTES = 256 * 1024;

export interface ErrorPages {
  /** The body of the server's own 404s (no proxy serves the name, or its path); undefined: the plain text one. */
  notFound?: Buffer;
  /** The body of the server's own 502, 503 and 504s (the name is known but cannot be served now). */
  unavailable?: Buffer;
}

export const NO_ERROR_PAGES: ErrorPages = {};

/** The operator's page for a status the server answers itself, or undefined for the built-in text. */
export function errorPageFor(pages: ErrorPages, status: number): Buffer | undefined {
  if (status === 404) return pages.notFound;
  if (status === 502 || status === 503 || status === 504) return pages.unavailable;
  return undefined;
}

function statOrUndefined(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch {
    return undefined; // readConfigFile names the reason
  }
}

/**
 * Reads the page `key` names in `file` (relative to the config file). Missing, unreadable,
 * not a regular file, empty or over MAX_ERROR_PAGE_BYTES: a ConfigError naming the key and the path.
 */
export function readErrorPage(file: string, key: string, path: string): Buffer {
  const resolved = resolveConfigPath(file, path);
  const stat = statOrUndefined(resolved);
  // Checked before reading: a FIFO would block the reload, a huge file would be read whole to be refused.
  if (stat && !stat.isFile()) throw ConfigError.at(file, key, `${resolved} is not a regular file`);
  const tooLarge = (bytes: number) =>
    ConfigError.at(
      file,
      key,
      `${resolved} is ${bytes} bytes, over the ${MAX_ERROR_PAGE_BYTES / 1024} KiB an error page may have`,
    );
  if (stat && stat.size > MAX_ERROR_PAGE_BYTES) throw tooLarge(stat.size);
  const page = readConfigFile(file, key, resolved);
  if (page.length > MAX_ERROR_PAGE_BYTES) throw tooLarge(page.length);
  if (page.length === 0)
    throw ConfigError.at(file, key, `${resolved} is empty (leave ${key} out for the built-in page)`);
  return page;
}
