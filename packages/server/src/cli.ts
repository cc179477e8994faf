import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import {
  createLogger,
  exitOnSignals,
  issueToken,
  PortRanges,
  packageVersion,
  parseDuration,
  parseHostPattern,
  readUnverifiedClaims,
  runCli,
  splitList,
  startCli,
  takeHeldReload,
  UsageError,
  visitGrantRefusal,
} from '@porthole/protocol';
import { loadServerConfig } from './config.js';
import { PortholeServer } from './server.js';
import { formatTokenReport, showToken } from './token-show.js';

const PROGRAM = 'porthole-server';
const VERSION = packageVersion(import.meta.url);

const USAGE = `Usage:
  ${PROGRAM} [run] --config server.toml        run the server
  ${PROGRAM} check --config server.toml        validate the config (exit 0 valid, 2 invalid)
  ${PROGRAM} token issue --config server.toml --name NAME [--ports 2222,8000-8099]
        [--hosts 'app.example.com,*.home.example.com'] [--visit svc1,svc2] [--expires 90d|never]
        [--bandwidth-limit 10MB]
                                                print a client token (JWT) on stdout
  ${PROGRAM} token show --config server.toml (--token-file FILE | --token-file - | --token JWT) [--json]
                                                what a token grants, and whether this server would
                                                accept it (exit 0) or not (exit 1, with the reason)
  ${PROGRAM} -h, --help | -V, --version

Options:
  -c, --config FILE   server config (TOML); see examples/server.toml
  --name NAME         token issue: the client's name
  --ports SPEC        token issue: ports the client may open (default: any the server's allow_ports
                      permits)
  --hosts LIST        token issue: hostnames the client may claim ("*.home.example.com" covers the names
                      below it); default: any name
  --visit LIST        token issue: private services the client may visit, as OWNER/PROXY (the owning
                      client's name and its private proxy's), or OWNER/* for all of one client's (default:
                      none)
  --expires DURATION  token issue: lifetime, e.g. 90d, 12h, or "never" (default 365d)
  --bandwidth-limit RATE
                      token issue: the most the client's public proxies move together, each way, e.g.
                      10MB or 500KB per second (default: the server's client_bandwidth_limit, if set)
  --token-file FILE   token show: the file holding the token; "-" reads it from stdin
  --token JWT         token show: the token itself (prefer --token-file: arguments show up in ps)
  --json              token show: print the verdict and claims as JSON, for scripts

token show checks the token as the server's sign-in does (signature, algorithm, not-before, expiry,
[auth] revoked_tokens) against the config file as it is now; the token and the secret are never printed,
nor the claims of a token whose signature does not check out.

Signals: SIGHUP reloads the config file (allow_ports, revoked_tokens, limits); SIGTERM drains and exits 0.
Admin: an [admin] table serves /api/*, /metrics, /healthz and a status page (see examples/server.toml).
`;

/** Options that belong to one command only, and that command. */
const COMMAND_OPTIONS = {
  'token issue': ['name', 'ports', 'hosts', 'visit', 'expires', 'bandwidth-limit'],
  'token show': ['token', 'token-file', 'json'],
} as const;
const DEFAULT_TOKEN_LIFETIME = '365d';

async function main(): Promise<number | undefined> {
  const started = startCli({
    program: PROGRAM,
    version: VERSION,
    usage: USAGE,
    commands: ['run', 'check', 'token issue', 'token show'],
    parse,
  });
  if (!started) return 0;
  const { values } = started.parsed;
  const command = started.command;
  for (const [owner, options] of Object.entries(COMMAND_OPTIONS)) {
    if (command === owner) continue;
    const stray = options.find((option) => values[option] !== undefined);
    if (stray) throw new UsageError(`--${stray} is only for "${owner}"`);
  }
  if (!values.config) throw new UsageError('--config FILE is required');
  const config = loadServerConfig(values.config);

  if (command === 'token show') {
    const report = await showToken(config, await tokenToShow(values));
    process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : formatTokenReport(report));
    return report.accepted ? 0 : 1;
  }

  if (command === 'check') {
    for (const warning of config.warnings) process.stderr.write(`warning: ${warning}\n`);
    process.stdout.write(`${values.config}: ok\n`);
    return 0;
  }
  if (command === 'token issue') {
    if (!values.name) throw new UsageError('token issue: --name is required');
    const expires = values.expires ?? DEFAULT_TOKEN_LIFETIME;
    let expiresInMs: number | null;
    try {
      expiresInMs = expires === 'never' ? null : parseDuration(expires);
      // A token that expires as it is issued would be refused on its first use.
      if (expiresInMs === 0) throw new Error('--expires must be longer than 0 (or "never")');
      const jwt = await issueToken(config.auth.secret, {
        name: values.name,
        expiresInMs,
        ...(values.ports === undefined ? {} : { ports: values.ports }),
        ...(values.hosts === undefined ? {} : { hosts: hostGrant(values.hosts) }),
        ...(values.visit === undefined ? {} : { visit: visitGrant(values.visit) }),
        ...(values['bandwidth-limit'] === undefined ? {} : { bandwidth_limit: values['bandwidth-limit'] }),
      });
      process.stdout.write(`${jwt}\n`);
      // What revoking it takes, and when it ends, said where a redirect of the token to a file leaves it.
      const issued = readUnverifiedClaims(jwt);
      const until =
        issued?.exp === undefined ? 'never expires' : `expires ${new Date(issued.exp * 1000).toISOString()}`;
      const cap =
        issued?.bandwidth_limit === undefined ? '' : `, bandwidth limit ${issued.bandwidth_limit}/s each way`;
      process.stderr.write(
        `token for "${values.name}": id ${issued?.jti} (what [auth] revoked_tokens lists to revoke it), ${until}${cap}\n`,
      );
      // Issued all the same: allow_ports may be widened later, and a reload applies it to this token.
      const refused =
        values.ports === undefined ? '' : PortRanges.parse(values.ports).outside(config.allowPorts);
      if (refused !== '')
        process.stderr.write(
          `warning: ports ${refused} of --ports are outside this server's allow_ports (${config.allowPorts}): proxies on them will be refused\n`,
        );
    } catch (err) {
      throw new UsageError(`token issue: ${(err as Error).message}`);
    }
    return 0;
  }

  const logger = createLogger({ level: config.logLevel });
  const server = new PortholeServer(config, logger, VERSION);
  try {
    await server.start();
  } catch (err) {
    logger.fatal({ reason: (err as Error).message }, 'cannot start');
    return 1;
  }
  exitOnSignals(() => server.shutdown(), { logger, openWork: () => server.openWork() });
  process.on('SIGHUP', () => server.reload());
  if (takeHeldReload()) server.reload();
  return undefined;
}

function parse() {
  const parsed = parseArgs({
    args: process.argv.slice(2),
    allowPositionals: true,
    strict: true,
    // For startCli's check of an option given twice.
    tokens: true,
    options: {
      config: { type: 'string', short: 'c' },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean', short: 'V' },
      name: { type: 'string' },
      ports: { type: 'string' },
      hosts: { type: 'string' },
      visit: { type: 'string' },
      expires: { type: 'string' },
      'bandwidth-limit': { type: 'string' },
      token: { type: 'string' },
      'token-file': { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  // startCli reads every word as the command's: a token given as one would be echoed in "unknown command".
  if (parsed.positionals[0] === 'token' && parsed.positionals[1] === 'show' && parsed.positionals.length > 2)
    throw new Error(TOKEN_SHOW_INPUT);
  return parsed;
}

const TOKEN_SHOW_INPUT =
  'token show: give the token with --token-file FILE, --token-file - (stdin) or --token JWT';

/** The token `token show` was given: from a file, stdin ("-") or the command line. */
async function tokenToShow(values: { token?: string; 'token-file'?: string }): Promise<string> {
  const file = values['token-file'];
  if (values.token !== undefined && file !== undefined)
    throw new UsageError('token show: give --token or --token-file, not both');
  if (values.token !== undefined) return values.token;
  if (file === undefined) throw new UsageError(TOKEN_SHOW_INPUT);
  if (file === '-') {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  }
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`token show: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
}

runCli(PROGRAM, main);

/** --hosts as the server will compare it: each pattern valid and normalized, at least one. */
function visitGrant(list: string): string[] {
  const services = splitList(list);
  if (services.length === 0) throw new Error('--visit needs at least one service (leave it out for none)');
  for (const service of services) {
    const refusal = visitGrantRefusal(service);
    if (refusal) throw new Error(`--visit: ${refusal}`);
  }
  return services;
}

function hostGrant(list: string): string[] {
  const hosts = splitList(list).map(parseHostPattern);
  if (hosts.length === 0) throw new Error('--hosts needs at least one name (leave it out to allow any name)');
  return hosts;
}
