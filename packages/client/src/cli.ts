import { parseArgs } from 'node:util';
import {
  ConfigError,
  createLogger,
  exitOnSignals,
  type HostPort,
  packageVersion,
  parseHostPort,
  runCli,
  startCli,
  takeHeldReload,
  UsageError,
} from '@porthole/protocol';
import { PortholeClient } from './client.js';
import { ClientAdmin, type ClientAdminHandlers, type ReloadOutcome } from './client-admin.js';
import { type ClientFlags, dialRoute, loadClientConfig } from './config.js';
import { describeConnectError } from './connect-error.js';
import { urlWithoutUserinfo } from './dialer.js';
import { requestReload } from './reload-command.js';
import {
  adminAddressOf,
  describeRoute,
  fetchStatus,
  formatStatus,
  STATUS_EXIT,
  statusExitCode,
} from './status-command.js';

const PROGRAM = 'porthole-client';
const VERSION = packageVersion(import.meta.url);

const USAGE = `Usage:
  ${PROGRAM} [run] --config client.toml       run the client
  ${PROGRAM} --server wss://vps.example.com/_porthole --token-file FILE --tcp 2222:127.0.0.1:22
                                              run without a config file
  ${PROGRAM} check --config client.toml       validate the config (exit 0 valid, 2 invalid)
  ${PROGRAM} status --config client.toml      show the running client's session and proxies (from its
                                              [admin] listen; or --admin HOST:PORT); exit 0 established,
                                              1 unreachable, 2 usage (no [admin] table), 3 not established,
                                              5 established but a proxy refused or closed or a
                                              visitor not listening; --json: raw answer
  ${PROGRAM} reload --config client.toml      make the running client reload its config file, as SIGHUP
                                              does, and print what changed (from its [admin] listen; or
                                              --admin HOST:PORT); exit 0 reloaded, 1 unreachable, 2 the
                                              file is invalid (the running config is kept)
  ${PROGRAM} -h, --help | -V, --version

Options (they override the config file's keys; --tcp and --udp add proxies, --visit visitors):
  -c, --config FILE          client config (TOML); see examples/client.toml
  -s, --server URL           ws:// or wss:// URL of the server's control endpoint
  --token JWT                the client token (prefer --token-file: arguments show up in ps)
  --token-file FILE          file holding the client token
  --ca-file FILE             CA certificate(s) for a server with a private CA
  --proxy URL                dial the server through an HTTP CONNECT or SOCKS5 proxy
                             (http://[user:password@]host:port, socks5://...); "none" ignores
                             https_proxy/http_proxy/all_proxy, which are used otherwise
  --proxy-password-file FILE file holding the password of the user in --proxy's URL
                             (http://user@host:port; a password in the URL shows up in ps)
  --tcp [tcp:][BIND_ADDRESS:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT
                             expose a local TCP service on the server's REMOTE_PORT (repeatable);
                             the proxy is named tcp-REMOTE_PORT; REMOTE_PORT 0: the server picks one
                             (logged in "proxy registered", remote_port); BIND_ADDRESS (127.0.0.1,
                             [::1]): the address the server binds it on, if its allow_bind lets it
  --tcp [tcp:][BIND_ADDRESS:]REMOTE_PORT:unix:PATH
                             the same for a service listening on a Unix socket at PATH
  --udp [BIND_ADDRESS:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT
                             expose a local UDP service on the server's UDP REMOTE_PORT (repeatable);
                             the proxy is named udp-REMOTE_PORT; 0: the server picks one
  --tcp/--udp [BIND_ADDRESS:]REMOTE_PORTS:LOCAL_HOST:LOCAL_PORTS
                             port ranges of as many ports each (27015-27030:127.0.0.1:27015-27030),
                             paired in order: one proxy per port, named tcp-PORT or udp-PORT
  --visit [udp:][BIND_HOST:]PORT:OWNER/PROXY
                             listen on BIND_HOST:PORT (default 127.0.0.1) and take each connection
                             (udp: each sender) to client OWNER's private proxy PROXY (repeatable; the
                             token's --visit must grant it); the visitor is named visit-PORT (udp:
                             visit-udp-PORT)
  --exit-on-auth-failure     exit with status 4 when the server refuses the token (or the proxy its
                             credentials, or the server's plugins the sign-in), instead of retrying
  --log-level LEVEL          trace, debug, info, warn, error, fatal or silent
  --admin HOST:PORT          status, reload: the client's admin address (default: [admin] listen of
                             --config)
  --json                     status: print the JSON the client answered

Signals: SIGHUP reloads the config file (proxies change over the live session); SIGTERM drains and exits 0.
`;

/** The options that set up a client to run (and check), which `status` has no use for. */
const RUN_OPTIONS = [
  'server',
  'token',
  'token-file',
  'ca-file',
  'proxy',
  'proxy-password-file',
  'tcp',
  'udp',
  'visit',
  'exit-on-auth-failure',
  'log-level',
] as const;

async function main(): Promise<number | undefined> {
  const started = startCli({
    program: PROGRAM,
    version: VERSION,
    usage: USAGE,
    commands: ['run', 'check', 'status', 'reload'],
    parse,
  });
  if (!started) return 0;
  const { values } = started.parsed;
  const command = started.command;
  if (command === 'status' || command === 'reload') {
    // They read only [admin] listen: a run option here would be ignored, as if it had been applied.
    const stray = RUN_OPTIONS.find((option) => values[option] !== undefined);
    if (stray) throw new UsageError(`--${stray} is not for "${command}" (it asks the running client)`);
    if (command === 'status') return status(values.config, values.admin, values.json ?? false);
    if (values.json) throw new UsageError('--json is only for "status"');
    const { admin, where } = adminOf('reload', values.config, values.admin);
    return requestReload(admin, where, PROGRAM);
  }
  if (values.admin !== undefined || values.json)
    throw new UsageError('--admin is only for "status" and "reload", --json only for "status"');
  if (values.config === undefined && values.server === undefined) {
    throw new UsageError('--config FILE or --server URL is required');
  }
  const flags: ClientFlags = {};
  if (values.server !== undefined) flags.server = values.server;
  if (values.token !== undefined) flags.token = values.token;
  if (values['token-file'] !== undefined) flags.tokenFile = values['token-file'];
  if (values['ca-file'] !== undefined) flags.caFile = values['ca-file'];
  if (values.proxy !== undefined) flags.proxy = values.proxy;
  if (values['proxy-password-file'] !== undefined) flags.proxyPasswordFile = values['proxy-password-file'];
  if (values.tcp !== undefined) flags.tcp = values.tcp;
  if (values.udp !== undefined) flags.udp = values.udp;
  if (values.visit !== undefined) flags.visit = values.visit;
  if (values['exit-on-auth-failure']) flags.exitOnAuthFailure = true;
  if (values['log-level'] !== undefined) flags.logLevel = values['log-level'];
  const config = loadClientConfig(values.config, flags);
  if (command === 'check') {
    for (const warning of config.warnings) process.stderr.write(`warning: ${warning}\n`);
    // Only here, not at each start: an empty conf.d is normal, but worth a word where a typo would show.
    for (const { key, pattern, matched } of config.includes)
      if (matched === 0) process.stderr.write(`warning: ${key}: "${pattern}" matches no file\n`);
    const count = config.proxies.length;
    const visitors = config.visitors.length;
    const andVisitors = visitors === 0 ? '' : `, ${visitors} ${visitors === 1 ? 'visitor' : 'visitors'}`;
    process.stdout.write(
      `${config.source}: ok (${count} ${count === 1 ? 'proxy' : 'proxies'}${andVisitors})\n`,
    );
    if (config.includes.length > 0)
      process.stdout.write(`included: ${config.includedFiles.join(', ') || 'no file'}\n`);
    // A range's proxies are what registers: said so the count above adds up, and the names status will show.
    for (const { table, proxies } of config.portRanges) {
      const made =
        proxies.length === 1
          ? `1 proxy (${proxies[0]})`
          : `${proxies.length} proxies (${proxies[0]} ... ${proxies.at(-1)})`;
      process.stdout.write(`${table}: a port range, ${made}\n`);
    }
    // As the start line and `status` will say it, once a proxy is in play (named, or set aside): which one
    // the environment's variables picked is what a user checking the config cannot see anywhere else.
    const route = dialRoute(config);
    if (route.via_from !== undefined)
      process.stdout.write(`server:   ${urlWithoutUserinfo(config.server)} ${describeRoute(route)}\n`);
    return 0;
  }

  const logger = createLogger({ level: config.logLevel });
  const warn = (loaded: typeof config) => {
    for (const reason of loaded.warnings) logger.warn({ reason }, 'config warning');
  };
  warn(config);
  const client = new PortholeClient(config, logger, VERSION);
  const handlers: ClientAdminHandlers = {
    status: () => client.status(),
    // Replaced below, once what a reload needs is set up (the admin endpoint starts first).
    reload: () => ({ reloaded: false, reason: 'the client is still starting', notNow: true }),
  };
  let admin: ClientAdmin | undefined;
  let adminListen = config.admin?.listen;
  if (adminListen) {
    admin = new ClientAdmin(adminListen, handlers, logger);
    try {
      logger.info({ addr: await admin.listen() }, 'admin listening');
    } catch (err) {
      logger.fatal({ reason: (err as Error).message }, 'cannot start the admin endpoint');
      return 1;
    }
  }
  let stopping = false;
  /**
   * A reload that adds, moves or removes [admin]: the new listener first, so that one that cannot bind
   * leaves the old in place (on the same port, the old one has to go first, and comes back on failure).
   */
  const reloadAdmin = async (next: HostPort | undefined): Promise<void> => {
    if (stopping || (next?.host === adminListen?.host && next?.port === adminListen?.port)) return;
    const samePort = next !== undefined && adminListen !== undefined && next.port === adminListen.port;
    if (samePort) admin?.close();
    let started: ClientAdmin | undefined;
    if (next) {
      started = new ClientAdmin(next, handlers, logger);
      try {
        logger.info({ addr: await started.listen() }, 'admin listening');
      } catch (err) {
        const reason = (err as Error).message;
        logger.error({ reason }, 'reload: cannot start the admin endpoint; keeping the running one');
        if (samePort && adminListen) {
          admin = new ClientAdmin(adminListen, handlers, logger);
          await admin.listen().catch((again: Error) => {
            logger.error({ reason: again.message }, 'cannot start the admin endpoint again');
          });
        }
        return;
      }
    }
    if (stopping) {
      started?.close();
      return;
    }
    if (!samePort) admin?.close();
    if (!next) logger.info({}, 'admin endpoint closed');
    admin = started;
    adminListen = next;
  };
  // One reload's admin change at a time, in the order the reloads came.
  let adminChange = Promise.resolve();
  exitOnSignals(
    async () => {
      stopping = true;
      await client.shutdown();
      await adminChange;
      admin?.close();
    },
    { logger, openWork: () => client.openWork() },
  );
  /** SIGHUP and POST /api/reload (`porthole-client reload`). */
  const reload = (): ReloadOutcome => {
    try {
      const next = loadClientConfig(values.config, flags);
      warn(next);
      const summary = client.reload(next);
      if (summary === undefined)
        return { reloaded: false, reason: 'the client is shutting down', notNow: true };
      adminChange = adminChange.then(() => reloadAdmin(next.admin?.listen));
      return { reloaded: true, summary, warnings: next.warnings };
    } catch (err) {
      const reason = err instanceof ConfigError ? err.message : (err as Error).message;
      logger.error({ reason }, 'reload failed: keeping the running configuration');
      return { reloaded: false, reason };
    }
  };
  handlers.reload = reload;
  process.on('SIGHUP', reload);
  if (takeHeldReload()) reload();
  const outcome = await client.run();
  stopping = true;
  await adminChange;
  admin?.close();
  return outcome === 'auth failed' ? EXIT_AUTH_FAILED : undefined;
}

/**
 * exit_on_auth_failure's exit status: one of its own, so that a systemd unit can keep from restarting into
 * the same refusal (RestartPreventExitStatus) while still restarting after a crash (status 1).
 */
const EXIT_AUTH_FAILED = 4;

/** The running client's admin address for `status` and `reload`, and how to name it in a message. */
function adminOf(
  command: string,
  configFile: string | undefined,
  adminFlag: string | undefined,
): { admin: HostPort; where: string } {
  if (adminFlag !== undefined) {
    try {
      return { admin: parseHostPort(adminFlag), where: adminFlag };
    } catch (err) {
      throw new UsageError(`--admin: ${(err as Error).message}`);
    }
  }
  if (configFile !== undefined)
    return { admin: adminAddressOf(configFile), where: `[admin] listen of ${configFile}` };
  throw new UsageError(`${command}: --config FILE or --admin HOST:PORT is required`);
}

async function status(configFile: string | undefined, adminFlag: string | undefined, json: boolean) {
  const { admin, where } = adminOf('status', configFile, adminFlag);
  let answer: Awaited<ReturnType<typeof fetchStatus>>;
  try {
    answer = await fetchStatus(admin);
  } catch (err) {
    process.stderr.write(
      `${PROGRAM} status: cannot reach the client at ${where}: ${describeConnectError(err as Error)}\n`,
    );
    return STATUS_EXIT.unreachable;
  }
  process.stdout.write(json ? `${JSON.stringify(answer, null, 2)}\n` : formatStatus(answer));
  return statusExitCode(answer);
}

function parse() {
  return parseArgs({
    args: process.argv.slice(2),
    allowPositionals: true,
    strict: true,
    // For startCli's check of an option given twice.
    tokens: true,
    options: {
      config: { type: 'string', short: 'c' },
      server: { type: 'string', short: 's' },
      token: { type: 'string' },
      'token-file': { type: 'string' },
      'ca-file': { type: 'string' },
      proxy: { type: 'string' },
      'proxy-password-file': { type: 'string' },
      tcp: { type: 'string', multiple: true },
      udp: { type: 'string', multiple: true },
      visit: { type: 'string', multiple: true },
      'exit-on-auth-failure': { type: 'boolean' },
      'log-level': { type: 'string' },
      admin: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean', short: 'V' },
    },
  });
}

runCli(PROGRAM, main);
