// Each program loads this before any other module, to refuse a Node.js too old to run the rest with one clear
// line, not a stack trace from deep inside a dependency. So it must load and run on that old Node itself:
// it imports nothing and uses nothing newer than Node 18 has (Debian 12's nodejs is 18).

/** The oldest Node.js the programs run on: the root package.json's engines say ">=20" too. */
export const REQUIRED_NODE_MAJOR = 20;

/** Why Node.js `version` (at `execPath`) cannot run `program`, or undefined when it can. */
export function nodeVersionProblem(program: string, version: string, execPath: string): string | undefined {
  const major = Number.parseInt(version.replace(/^v/, ''), 10);
  if (major >= REQUIRED_NODE_MAJOR) return undefined;
  return `${program}: Node.js ${version} (${execPath}) is too old: it needs Node.js ${REQUIRED_NODE_MAJOR} or later`;
}

/** Exits with status 2, as for a bad config, when the running Node.js is too old for `program`. */
export function exitUnlessNodeIsRecentEnough(program: string): void {
  const problem = nodeVersionProblem(program, process.versions.node, process.execPath);
  if (problem === undefined) return;
  process.stderr.write(`${problem}\n`);
  process.exit(2);
}
