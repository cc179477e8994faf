// `includes` patterns as frp reads them (Go's filepath.Glob on the base name): `*` and `?` in the file name
// only. Written here: fs.globSync came after Node 20.
import { readdirSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

const WILDCARD = /[*?]/;

export function hasWildcard(text: string): boolean {
  return WILDCARD.test(text);
}

/** A file name pattern as a RegExp: `*` any run of characters (none too), `?` one; the rest stands for itself. */
export function fileNamePattern(pattern: string): RegExp {
  const source = [...pattern]
    .map((char) => (char === '*' ? '.*' : char === '?' ? '.' : char.replace(/[\\^$.|+()[\]{}]/, '\\$&')))
    .join('');
  return new RegExp(`^${source}$`, 'su');
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/**
 * The files in `path`'s directory whose names match its base name (a pattern), in name order. A directory
 * that is not there matches nothing, as an empty one does: a conf.d made later is no mistake.
 */
export function matchFileNamePattern(path: string): string[] {
  const directory = dirname(path);
  const pattern = fileNamePattern(basename(path));
  let names: string[];
  try {
    names = readdirSync(directory);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    throw err;
  }
  return names
    .filter((name) => pattern.test(name))
    .sort()
    .map((name) => join(directory, name))
    .filter(isFile);
}
