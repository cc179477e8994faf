// client.toml's `includes`: frp's way of splitting a client's configuration, one file per service in a
// conf.d directory. An included file holds [[proxies]] and [[visitors]] tables only; they join client.toml's,
// after them, in the order the files are read.
import { realpathSync, statSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import {
  ConfigError,
  expected,
  formatConfigIssues,
  loadTomlConfig,
  resolveConfigPath,
  validateConfig,
} from '@porthole/protocol';
import { z } from 'zod';
import { hasWildcard, matchFileNamePattern } from './include-glob.js';
import type { TableKind, TablePlace } from './table-places.js';

export const includesField = z.array(z.string({ error: expected('a path like "conf.d/*.toml"') }).min(1), {
  error: expected('a list of paths like ["conf.d/*.toml"]'),
});

/** One entry of `includes` and how many files it matched (a pattern may match none: an empty conf.d). */
export interface IncludeMatch {
  /** "includes[0]" */
  key: string;
  pattern: string;
  matched: number;
}

/** What the included files hold, as written (client.toml's schema checks them with its own tables). */
export interface IncludedTables {
  matches: IncludeMatch[];
  /** The files read, in order, each once. */
  files: string[];
  tables: Record<TableKind, unknown[]>;
  places: Record<TableKind, TablePlace[]>;
}

const TABLE_KINDS: readonly TableKind[] = ['proxies', 'visitors'];

/** What an included file may hold; its other keys are refused, named as client.toml's keys where they are. */
const includedFileSchema = z.strictObject({
  proxies: z.array(z.unknown(), { error: expected('[[proxies]] tables') }).optional(),
  visitors: z.array(z.unknown(), { error: expected('[[visitors]] tables') }).optional(),
});

const ONLY_TABLES = 'only [[proxies]] and [[visitors]] belong in an included file';

/** The lists an included file holds, by the singular a table of them is misspelt as. */
const SINGULAR_OF_TABLE_LIST: Readonly<Record<string, TableKind>> = { proxy: 'proxies', visitor: 'visitors' };

/**
 * Why client.toml's own key `key` is refused in an included file, at its top or below a table's line (where
 * TOML puts a key written after a table's keys).
 */
export function notInIncludedFile(mainFile: string, key: string): string {
  const where =
    key === 'includes' ? `includes are read from ${mainFile} alone` : `${key} goes in ${mainFile}`;
  return `${ONLY_TABLES}; ${where}`;
}

/** Where a file found twice (two patterns, a link, client.toml itself) is known once. */
function identity(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/** The files one entry of `includes` names: a pattern's matches, or the one file a plain path must be. */
function filesOf(mainFile: string, key: string, written: string): string[] {
  const path = resolveConfigPath(mainFile, written);
  if (hasWildcard(dirname(path)))
    throw ConfigError.at(
      mainFile,
      key,
      `"${written}": * and ? may stand in the file name only, not in a directory`,
    );
  if (hasWildcard(basename(path))) {
    try {
      return matchFileNamePattern(path);
    } catch (err) {
      throw ConfigError.at(
        mainFile,
        key,
        `cannot read the directory of ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`,
      );
    }
  }
  let found: ReturnType<typeof statSync>;
  try {
    found = statSync(path);
  } catch (err) {
    throw ConfigError.at(
      mainFile,
      key,
      `${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`,
    );
  }
  if (!found.isFile())
    throw ConfigError.at(mainFile, key, `${path} is not a file (a directory's files are "DIR/*.toml")`);
  return [path];
}

/**
 * An included file's tables. Its other keys are mistakes: client.toml's own keys are said to go there; the
 * rest keep the hints `hintSchema` (client.toml's) gives unknown keys, a proxy's key above any [[proxies]] line.
 */
function readIncludedFile(
  mainFile: string,
  file: string,
  hintSchema: z.core.$ZodType,
  topLevelKeys: ReadonlySet<string>,
): Record<TableKind, unknown[]> {
  const raw = loadTomlConfig(file, z.record(z.string(), z.unknown()));
  const result = includedFileSchema.safeParse(raw);
  if (result.success) return { proxies: result.data.proxies ?? [], visitors: result.data.visitors ?? [] };
  const problems = result.error.issues.flatMap((issue) => {
    if (issue.code !== 'unrecognized_keys')
      return formatConfigIssues(file, new z.ZodError([issue]), hintSchema, raw);
    return issue.keys.flatMap((key) => {
      // `[[proxy]]`: client.toml's `proxy` is a URL, and a table of that name one of the lists misspelt.
      const meant = typeof raw[key] === 'object' ? SINGULAR_OF_TABLE_LIST[key] : undefined;
      if (meant !== undefined) return [`${file}: ${key}: ${ONLY_TABLES} (did you mean [[${meant}]]?)`];
      if (!topLevelKeys.has(key))
        return formatConfigIssues(file, new z.ZodError([{ ...issue, keys: [key] }]), hintSchema, raw);
      return [`${file}: ${key}: ${notInIncludedFile(mainFile, key)}`];
    });
  });
  throw new ConfigError(problems);
}

/**
 * Reads the files client.toml's `includes` names (paths next to it, `${VAR}` expanded, `*` and `?` in the
 * file name): each once, in order, client.toml itself never. A pattern may match nothing (an empty conf.d);
 * a plain path must be a file.
 */
export function readIncludes(
  mainFile: string,
  includes: unknown,
  hintSchema: z.core.$ZodType,
  topLevelKeys: ReadonlySet<string>,
): IncludedTables {
  const patterns = validateConfig(mainFile, { includes }, z.object({ includes: includesField }));
  const read = new Set([identity(mainFile)]);
  const included: IncludedTables = {
    matches: [],
    files: [],
    tables: { proxies: [], visitors: [] },
    places: { proxies: [], visitors: [] },
  };
  patterns.includes.forEach((pattern, i) => {
    const key = `includes[${i}]`;
    const matched = filesOf(mainFile, key, pattern);
    included.matches.push({ key, pattern, matched: matched.length });
    for (const file of matched) {
      const known = identity(file);
      if (read.has(known)) continue;
      read.add(known);
      included.files.push(file);
      const tables = readIncludedFile(mainFile, file, hintSchema, topLevelKeys);
      for (const kind of TABLE_KINDS)
        tables[kind].forEach((table, index) => {
          included.tables[kind].push(table);
          included.places[kind].push({ file, index });
        });
    }
  });
  return included;
}
