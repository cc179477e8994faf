/**
 * A directory for a test's files, removed when the test process exits (node --test runs each file in a
 * process of its own), so that runs do not pile up directories in /tmp. Used by every package's tests, as
 * `@porthole/mux/test/scratch-dir`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const made: string[] = [];

export function scratchDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  if (made.length === 0) process.once('exit', removeAll);
  made.push(dir);
  return dir;
}

function removeAll(): void {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
}
