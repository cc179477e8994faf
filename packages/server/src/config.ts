import { readFileSync } from 'node:fs';
import {
  ConfigError,
  durationField,
  expected,
  type HostPort,
  hostPortField,
  type LogLevel,
  loadTomlConfig,
  logLevelField,
  MIN_SECRET_LENGTH,
  PortRanges,
  portRangesField,
  readSecretFile,
  resolveConfigPath,
} from '@porthole/protocol';
import { z } from 'zod';

const HOST = /^(?:[A-Za-z0-9.-]+|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$/;

const serverSchema = z
  .strictObject({
    listen: hostPortField({ allowZero: true }).prefault('0.0.0.0:7000'),
    path: z
      .string({ error: expected('a path like "/_porthole"') })
      .regex(/^\/[A-Za-z0-9._~!$&'()*+,;=:@/%-]*$/, 'must start with "/" and contain no spaces, "?" or "#"')
      .default('/_porthole'),
    proxy_bind: z
      .string({ error: expected('an address like "0.0.0.0"') })
      .regex(HOST, 'must be an IP address or a host name')
      .default('0.0.0.0'),
    allow_ports: portRangesField.optional(),
    heartbeat_interval: durationField.prefault('10s'),
    heartbeat_timeout: durationField.prefault('30s'),
    shutdown_timeout: durationField.prefault('10s'),
    log_level: logLevelField.default('info'),
    auth: z.strictObject(
      {
        secret: z.string({ error: expected('a string') }).optional(),
        secret_file: z.string({ error: expected('a file path') }).optional(),
        revoked_tokens: z.array(z.string(), { error: expected('a list of token ids (jti)') }).default([]),
        failure_limit: z
          .number({ error: expected('a number') })
          .int()
          .min(1)
          .default(20),
        failure_window: durationField.prefault('1m'),
      },
      { error: expected('an [auth] table with secret or secret_file') },
    ),
    tls: z
      .strictObject({
        cert_file: z.string({ error: expected('a file path') }),
        key_file: z.string({ error: expected('a file path') }),
      })
      .optional(),
  })
  .superRefine((config, ctx) => {
    if (config.heartbeat_timeout <= config.heartbeat_interval) {
      ctx.addIssue({
        code: 'custom',
        path: ['heartbeat_timeout'],
        message: 'must be longer than heartbeat_interval',
      });
    }
    const { secret, secret_file } = config.auth;
    if ((secret === undefined) === (secret_file === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['auth'], message: 'set exactly one of secret or secret_file' });
    }
  });

export interface ServerConfig {
  /** The config file, for messages. */
  file: string;
  listen: HostPort;
  path: string;
  proxyBind: string;
  allowPorts: PortRanges;
  heartbeatInterval: number;
  heartbeatTimeout: number;
  shutdownTimeout: number;
  logLevel: LogLevel;
  auth: {
    secret: string;
    revoked: ReadonlySet<string>;
    failureLimit: number;
    failureWindow: number;
  };
  tls?: { cert: Buffer; key: Buffer };
}

function readPemFile(file: string, key: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw ConfigError.at(file, key, `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
}

/** Loads and checks server.toml; throws ConfigError naming file, key and reason. */
export function loadServerConfig(file: string): ServerConfig {
  const raw = loadTomlConfig(file, serverSchema);
  const secret =
    raw.auth.secret ??
    readSecretFile(file, 'auth.secret_file', resolveConfigPath(file, raw.auth.secret_file!));
  if (secret.length < MIN_SECRET_LENGTH) {
    const key = raw.auth.secret === undefined ? 'auth.secret_file' : 'auth.secret';
    throw ConfigError.at(
      file,
      key,
      `the secret must be at least ${MIN_SECRET_LENGTH} characters (make one with: openssl rand -hex 32)`,
    );
  }
  const config: ServerConfig = {
    file,
    listen: raw.listen,
    path: raw.path,
    proxyBind: raw.proxy_bind,
    allowPorts: raw.allow_ports ?? PortRanges.all(),
    heartbeatInterval: raw.heartbeat_interval,
    heartbeatTimeout: raw.heartbeat_timeout,
    shutdownTimeout: raw.shutdown_timeout,
    logLevel: raw.log_level,
    auth: {
      secret,
      revoked: new Set(raw.auth.revoked_tokens),
      failureLimit: raw.auth.failure_limit,
      failureWindow: raw.auth.failure_window,
    },
  };
  if (raw.tls) {
    config.tls = {
      cert: readPemFile(file, 'tls.cert_file', resolveConfigPath(file, raw.tls.cert_file)),
      key: readPemFile(file, 'tls.key_file', resolveConfigPath(file, raw.tls.key_file)),
    };
  }
  return config;
}
