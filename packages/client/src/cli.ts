import { parseArgs } from 'node:util';
import {
  createLogger,
  exitOnSignals,
  packageVersion,
  runCli,
  startCli,
  UsageError,
} from '@porthole/protocol';
import { PortholeClient } from './client.js';
import { type ClientFlags, loadClientConfig } from './config.js';

const PROGRAM = 'porthole-client';
const VERSION = packageVersion(import.meta.url);

const USAGE = `Usage:
  ${PROGRAM} [run] --config client.toml       run the client
  ${PROGRAM} --server wss://vps.example.com/_porthole --token-file FILE --tcp 2222:127.0.0.1:22
                                              run without a config file
  ${PROGRAM} check --config client.toml       validate the config (exit 0 valid, 2 invalid)
  ${PROGRAM} --help | --version

Options (they override the config file's keys; --tcp adds proxies):
  -c, --config FILE          client config (TOML); see examples/client.toml
  -s, --server URL           ws:// or wss:// URL of the server's control endpoint
  --token JWT                the client token (prefer --token-file: arguments show up in ps)
  --token-file FILE          file holding the client token
  --ca-file FILE             CA certificate(s) for a server with a private CA
  --tcp [tcp:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT
                             expose a local TCP service on the server's REMOTE_PORT (repeatable);
                             the proxy is named tcp-REMOTE_PORT
  --exit-on-auth-failure     exit with status 1 when the server refuses the token, instead of retrying
  --log-level LEVEL          trace, debug, info, warn, error, fatal or silent
`;

async function main(): Promise<number | undefined> {
  const started = startCli({
    program: PROGRAM,
    version: VERSION,
    usage: USAGE,
    commands: ['run', 'check'],
    parse,
  });
  if (!started) return 0;
  const { values } = started.parsed;
  const command = started.command;
  if (values.config === undefined && values.server === undefined) {
    throw new UsageError('--config FILE or --server URL is required');
  }
  const flags: ClientFlags = {};
  if (values.server !== undefined) flags.server = values.server;
  if (values.token !== undefined) flags.token = values.token;
  if (values['token-file'] !== undefined) flags.tokenFile = values['token-file'];
  if (values['ca-file'] !== undefined) flags.caFile = values['ca-file'];
  if (values.tcp !== undefined) flags.tcp = values.tcp;
  if (values['exit-on-auth-failure']) flags.exitOnAuthFailure = true;
  if (values['log-level'] !== undefined) flags.logLevel = values['log-level'];
  const config = loadClientConfig(values.config, flags);
  if (command === 'check') {
    process.stdout.write(`${config.source}: ok (${config.proxies.length} proxies)\n`);
    return 0;
  }

  const logger = createLogger({ level: config.logLevel });
  const client = new PortholeClient(config, logger, VERSION);
  exitOnSignals(() => client.shutdown());
  const outcome = await client.run();
  return outcome === 'auth failed' ? 1 : undefined;
}

function parse() {
  return parseArgs({
    args: process.argv.slice(2),
    allowPositionals: true,
    strict: true,
    options: {
      config: { type: 'string', short: 'c' },
      server: { type: 'string', short: 's' },
      token: { type: 'string' },
      'token-file': { type: 'string' },
      'ca-file': { type: 'string' },
      tcp: { type: 'string', multiple: true },
      'exit-on-auth-failure': { type: 'boolean' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean', short: 'V' },
    },
  });
}

runCli(PROGRAM, main);
