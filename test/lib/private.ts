// Private services and visitors in end-to-end tests: a server with an admin API, tokens with --visit, and
// clients whose client.toml has private proxies (tcp or udp) and [[visitors]] tables.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { clientBin, freePort, type Harness, type Proc, runOk, serverBin } from './processes.js';
import { type RunningServer, startServer, toml } from './tunnel.js';

export const ADMIN_TOKEN = 'private-services-admin-token-0123456789';

/** A server with an admin API; its allow_ports hold one port nobody uses (private proxies need none). */
export async function startPrivateServer(h: Harness): Promise<RunningServer> {
  return startServer(h, { allowPorts: [String(await freePort())], admin: { token: ADMIN_TOKEN } });
}

/** `porthole-server token issue --name NAME [--visit LIST]`. */
export async function issue(server: RunningServer, name: string, visit?: string): Promise<string> {
  const args = ['token', 'issue', '--config', server.config.configPath, '--name', name];
  if (visit !== undefined) args.push('--visit', visit);
  return (await runOk(serverBin, args, { timeoutMs: 20_000 })).trim();
}

export interface ClientTables {
  /** Private, unless given a remote_port: then a public proxy beside them. tcp unless they say udp. */
  proxies?: {
    name: string;
    type?: 'tcp' | 'udp';
    local: string;
    max_connections?: number;
    max_flows?: number;
    udp_idle_timeout?: string;
    remote_port?: number;
    compression?: boolean;
  }[];
  visitors?: { name: string; type?: 'tcp' | 'udp'; service: string; bind: string; max_flows?: number }[];
  admin?: number;
}

/** client.toml with private proxies and visitors. */
export async function clientToml(h: Harness, server: RunningServer, token: string, tables: ClientTables) {
  const tokenFile = await h.file(`token-${Math.random().toString(36).slice(2)}`, `${token}\n`);
  const parts = [
    toml({ server: server.url, token_file: tokenFile, reconnect_initial: '200ms', reconnect_max: '1s' }),
  ];
  if (tables.admin !== undefined) parts.push('[admin]', toml({ listen: `127.0.0.1:${tables.admin}` }));
  for (const p of tables.proxies ?? [])
    parts.push(
      '[[proxies]]',
      toml({ type: 'tcp', ...p, ...(p.remote_port === undefined ? { private: true } : {}) }),
    );
  for (const v of tables.visitors ?? []) parts.push('[[visitors]]', toml(v));
  return `${parts.join('\n')}\n`;
}

export async function startPrivateClient(
  h: Harness,
  name: string,
  server: RunningServer,
  token: string,
  tables: ClientTables,
): Promise<{ proc: Proc; configPath: string }> {
  const configPath = await h.file(`${name}.toml`, await clientToml(h, server, token, tables));
  const proc = h.spawn(name, clientBin, ['--config', configPath]);
  for (const p of tables.proxies ?? [])
    await proc.waitForMsg('proxy registered', 15_000, { fields: { proxy: p.name } });
  for (const v of tables.visitors ?? [])
    await proc.waitForMsg('visitor listening', 15_000, { fields: { visitor: v.name } });
  // A visitor listens before the session is up, and refuses what comes meanwhile ("not connected").
  await proc.waitForMsg('session established', 15_000);
  return { proc, configPath };
}

export async function adminApi(server: RunningServer, path: string): Promise<Record<string, unknown>> {
  const res = await fetch(`${server.adminUrl}${path}`, {
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  assert.equal(res.status, 200, `${path}: HTTP ${res.status}`);
  return (await res.json()) as Record<string, unknown>;
}

export async function adminText(server: RunningServer, path: string): Promise<string> {
  const res = await fetch(`${server.adminUrl}${path}`, {
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  return res.text();
}

/**
 * The TCP ports a process listens on (udp: the UDP ports it has bound): its socket descriptors matched with
 * the kernel's tables.
 */
export function listeningPorts(pid: number, proto: 'tcp' | 'udp' = 'tcp'): number[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {}
  }
  const ports: number[] = [];
  for (const table of [`/proc/net/${proto}`, `/proc/net/${proto}6`]) {
    for (const line of readFileSync(table, 'utf8').trim().split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      // st 0A is TCP's LISTEN, 07 an unconnected (bound) UDP socket; column 9 is the inode.
      if (cols[3] === (proto === 'tcp' ? '0A' : '07') && inodes.has(cols[9]!))
        ports.push(Number.parseInt(cols[1]!.split(':')[1]!, 16));
    }
  }
  return ports.sort((a, b) => a - b);
}
