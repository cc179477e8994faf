// The ways of reaching the local services that the bench compares, each started by the harness itself
// on loopback: direct (the limit), a socat relay, `ssh -N -R` into a private sshd (default cipher and
// aes128-gcm), and porthole over ws and over wss (TLS with a self-signed cert the client trusts via
// ca_file). Every peer keeps running for the whole suite so that the cases can be interleaved.
import { appendFile, readFile } from 'node:fs/promises';
import {
  clientBin,
  freePorts,
  Harness,
  type Proc,
  run,
  runOk,
  serverBin,
  sleep,
} from '@porthole/e2e/lib/processes';
import { startSshd } from '@porthole/e2e/lib/sshd';
import {
  issueToken,
  startServer,
  toml,
  writeClientConfig,
  writeServerConfig,
} from '@porthole/e2e/lib/tunnel';
import { makeLoopbackCert } from './tunnel-cert.js';

/** The local services (127.0.0.1 ports) every peer forwards to. iperf3 serves TCP and UDP on one port. */
export interface Targets {
  iperf: number;
  http: number;
  echo: number;
}

export interface TunnelProcess {
  role: 'server' | 'client' | 'relay';
  pid: number;
}

/** What a case needs a peer to carry: iperf3 over TCP, iperf3 -u (TCP control + UDP data), HTTP, echo. */
export type Service = 'iperf' | 'udp' | 'http' | 'echo';

export interface Peer {
  id: string;
  label: string;
  /** where the bench connects for each service the peer carries (127.0.0.1); absent: not carried */
  ports: Partial<Record<Service, number>>;
  /** Host header for HTTP requests: it selects the route on an http (vhost) proxy */
  httpHost?: string;
  /** roots of the process trees that make up the tunnel (none for direct), by role */
  roots: TunnelProcess[];
  /** one process per connection (socat's fork): holding 10,000 idle connections means 10,000 processes */
  forksPerConnection?: boolean;
  /** the tunnel's long-running processes: one of them dying invalidates the peer's later figures */
  procs: Proc[];
  /** why a service is not carried, for the report */
  notes: string[];
  harness?: Harness;
}

export const SSH_DEFAULT_CIPHER = 'chacha20-poly1305@openssh.com';
export const SSH_AES_CIPHER = 'aes128-gcm@openssh.com';

const READY_TIMEOUT_MS = 15_000;

/** Is something listening on 127.0.0.1:port (TCP LISTEN, or a bound UDP socket)? From /proc/net/{tcp,udp}. */
async function listening(port: number, proto: 'tcp' | 'udp'): Promise<boolean> {
  const table = await readFile(`/proc/net/${proto}`, 'utf8');
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const state = proto === 'tcp' ? '0A' : '07';
  return table.split('\n').some((line) => {
    const cols = line.trim().split(/\s+/);
    return cols[1] === local && cols[3] === state;
  });
}

/** Wait until every port listens, failing early (with its output) if one of the processes exits. */
async function waitListening(ports: Array<[number, 'tcp' | 'udp']>, procs: Proc[]): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (const [port, proto] of ports) {
    for (;;) {
      if (await listening(port, proto)) break;
      const dead = procs.find((p) => !p.alive);
      if (dead) throw new Error(`${dead.name} exited before 127.0.0.1:${port} listened\n${dead.tail(20)}`);
      if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port}/${proto} after 15 s`);
      await sleep(50);
    }
  }
}

export function directPeer(targets: Targets): Peer {
  return {
    id: 'direct',
    label: 'direct',
    ports: { iperf: targets.iperf, udp: targets.iperf, http: targets.http, echo: targets.echo },
    roots: [],
    procs: [],
    notes: [],
  };
}

/** One socat per service: `TCP4-LISTEN:...,fork TCP4:target` (one process per connection), UDP likewise. */
export async function socatPeer(targets: Targets): Promise<Peer> {
  const h = await Harness.create();
  const [iperf, http, echo] = (await freePorts(3)) as [number, number, number];
  const relay = (name: string, listen: string, connect: string, options: string[] = []) =>
    h.spawn(name, 'socat', [...options, `${listen},bind=127.0.0.1,reuseaddr,fork`, connect]);
  const procs = [
    relay('socat-iperf', `TCP4-LISTEN:${iperf},backlog=4096`, `TCP4:127.0.0.1:${targets.iperf}`),
    // A UDP child serves one sender until it has been quiet for -T seconds (iperf3 uses a new port per run).
    relay('socat-iperf-udp', `UDP4-LISTEN:${iperf}`, `UDP4:127.0.0.1:${targets.iperf}`, ['-T', '5']),
    relay('socat-http', `TCP4-LISTEN:${http},backlog=4096`, `TCP4:127.0.0.1:${targets.http}`),
    relay('socat-echo', `TCP4-LISTEN:${echo},backlog=4096`, `TCP4:127.0.0.1:${targets.echo}`),
  ];
  await waitListening(
    [
      [iperf, 'tcp'],
      [iperf, 'udp'],
      [http, 'tcp'],
      [echo, 'tcp'],
    ],
    procs,
  );
  return {
    id: 'socat',
    label: 'socat relay',
    ports: { iperf, udp: iperf, http, echo },
    roots: procs.map((p) => ({ role: 'relay', pid: p.pid! })),
    forksPerConnection: true,
    procs,
    notes: [],
    harness: h,
  };
}

/** A private sshd (its own harness, so each ssh row has its own sshd tree to meter) and `ssh -N -R`. */
export async function sshPeer(targets: Targets, cipher: string): Promise<Peer> {
  const h = await Harness.create();
  const sshd = await startSshd(h);
  const [iperf, http, echo] = (await freePorts(3)) as [number, number, number];
  const forwards = [
    [iperf, targets.iperf],
    [http, targets.http],
    [echo, targets.echo],
  ].flatMap(([from, to]) => ['-R', `127.0.0.1:${from}:127.0.0.1:${to}`]);
  const ssh = h.spawn('ssh', 'ssh', [
    '-N',
    '-T',
    '-i',
    sshd.keyPath,
    '-p',
    `${sshd.port}`,
    '-c',
    cipher,
    '-o',
    'StrictHostKeyChecking=no',
    '-o',
    'UserKnownHostsFile=/dev/null',
    '-o',
    'BatchMode=yes',
    '-o',
    'ExitOnForwardFailure=yes',
    '-o',
    'LogLevel=ERROR',
    ...forwards,
    'root@127.0.0.1',
  ]);
  await waitListening(
    [
      [iperf, 'tcp'],
      [http, 'tcp'],
      [echo, 'tcp'],
    ],
    [ssh, sshd.proc],
  );
  const aes = cipher === SSH_AES_CIPHER;
  return {
    id: aes ? 'ssh-aes' : 'ssh',
    label: `ssh -R (${cipher.replace('@openssh.com', '')})`,
    ports: { iperf, http, echo },
    roots: [
      { role: 'client', pid: ssh.pid! },
      { role: 'server', pid: sshd.proc.pid! },
    ],
    procs: [ssh, sshd.proc],
    notes: ['ssh -R forwards TCP only: no UDP row'],
    harness: h,
  };
}

export interface PortholeFeatures {
  /** `type = "udp"` proxies are accepted (else: why not) */
  udp: true | string;
  /** `type = "http"` proxies and the server's [http] vhost listener are accepted (else: why not) */
  http: true | string;
}

const HTTP_VHOST = 'bench.porthole.test';

async function checkConfig(bin: string, h: Harness, name: string, body: string): Promise<true | string> {
  const file = await h.file(name, body);
  const r = await run(bin, ['check', '--config', file], { timeoutMs: 20_000 });
  return r.code === 0 ? true : (r.stderr.trim() || r.stdout.trim()).split('\n')[0] || `exit ${r.code}`;
}

/**
 * Which proxy types this build of porthole accepts, asked of the real CLIs' `check` (issue 4 adds udp and
 * http while this bench is written; the bench uses them as soon as they validate).
 */
export async function detectPortholeFeatures(): Promise<PortholeFeatures> {
  const h = await Harness.create();
  try {
    const secret = await h.file('probe-secret', `${'s'.repeat(64)}\n`);
    const server = (extra: string) =>
      `listen = "127.0.0.1:0"\n[auth]\nsecret_file = ${JSON.stringify(secret)}\n${extra}`;
    const client = (proxy: Record<string, string | number | string[]>) =>
      `server = "ws://127.0.0.1:1/_porthole"\ntoken = "x.y.z"\n[[proxies]]\n${toml(proxy)}\n`;
    const udp = await checkConfig(
      clientBin,
      h,
      'udp-client.toml',
      client({ name: 'u', type: 'udp', local: '127.0.0.1:9', remote_port: 2000 }),
    );
    let http = await checkConfig(
      serverBin,
      h,
      'http-server.toml',
      server('[http]\nlisten = "127.0.0.1:0"\n'),
    );
    if (http === true) {
      http = await checkConfig(
        clientBin,
        h,
        'http-client.toml',
        client({ name: 'w', type: 'http', local: '127.0.0.1:9', hosts: [HTTP_VHOST] }),
      );
    }
    return { udp, http };
  } finally {
    await h.cleanup();
  }
}

interface ProxyTable {
  name: string;
  type: 'tcp' | 'udp' | 'http';
  local: string;
  remote_port?: number;
  hosts?: string[];
}

/**
 * porthole-server + porthole-client from real TOML files (the e2e harness's writers, with [tls], ca_file
 * and non-tcp proxies appended), over ws or wss. Returns the tcp-proxy peer and, when http proxies
 * exist, a second peer for the same processes reached through the server's http vhost listener.
 */
export async function portholePeers(
  targets: Targets,
  transport: 'ws' | 'wss',
  features: PortholeFeatures,
): Promise<Peer[]> {
  const h = await Harness.create();
  const [iperf, http, echo, vhost] = (await freePorts(4)) as [number, number, number, number];
  const notes: string[] = [];
  const proxies: ProxyTable[] = [
    { name: 'iperf', type: 'tcp', local: `127.0.0.1:${targets.iperf}`, remote_port: iperf },
    { name: 'http', type: 'tcp', local: `127.0.0.1:${targets.http}`, remote_port: http },
    { name: 'echo', type: 'tcp', local: `127.0.0.1:${targets.echo}`, remote_port: echo },
  ];
  if (features.udp === true)
    proxies.push({ name: 'iperf-udp', type: 'udp', local: `127.0.0.1:${targets.iperf}`, remote_port: iperf });
  else notes.push(`no udp proxy yet (${features.udp})`);
  if (features.http === true)
    proxies.push({ name: 'web', type: 'http', local: `127.0.0.1:${targets.http}`, hosts: [HTTP_VHOST] });
  else notes.push(`no http proxy yet: HTTP measured through a tcp proxy only (${features.http})`);

  const ports = [iperf, http, echo].map(String);
  const serverConfig = await writeServerConfig(h, { allowPorts: ports });
  const cert = transport === 'wss' ? await makeLoopbackCert(h) : undefined;
  const serverExtra = [
    cert ? `[tls]\n${toml({ cert_file: cert.certFile, key_file: cert.keyFile })}` : '',
    features.http === true ? `[http]\n${toml({ listen: `127.0.0.1:${vhost}` })}` : '',
  ];
  await appendFile(serverConfig.configPath, `${serverExtra.join('\n')}\n`);
  const server = await startServer(h, serverConfig, `porthole-server-${transport}`);
  const url = cert ? server.url.replace(/^ws:/, 'wss:') : server.url;
  const token =
    features.http === true
      ? (
          await runOk(serverBin, [
            'token',
            'issue',
            '--config',
            serverConfig.configPath,
            '--name',
            'bench',
            '--ports',
            ports.join(','),
            '--hosts',
            HTTP_VHOST,
          ])
        ).trim()
      : await issueToken(serverConfig, { name: 'bench', ports: ports.join(',') });
  // The harness's writer puts the top-level keys first; ca_file and the [[proxies]] tables follow them.
  const clientConfig = await writeClientConfig(h, { server: url, token, proxies: [] });
  const clientExtra = [
    cert ? toml({ ca_file: cert.certFile }) : '',
    ...proxies.map((p) => `\n[[proxies]]\n${toml({ ...p })}`),
  ];
  await appendFile(clientConfig, `${clientExtra.join('\n')}\n`);
  const client = h.spawn(`porthole-client-${transport}`, clientBin, ['--config', clientConfig]);
  for (const p of proxies)
    await client.waitForMsg('proxy registered', READY_TIMEOUT_MS, { fields: { proxy: p.name } });

  const procs = [server.proc, client];
  const roots: TunnelProcess[] = [
    { role: 'server', pid: server.proc.pid! },
    { role: 'client', pid: client.pid! },
  ];
  const tcpPeer: Peer = {
    id: `porthole-${transport}`,
    label: `porthole ${transport}`,
    ports: { iperf, http, echo, ...(features.udp === true ? { udp: iperf } : {}) },
    roots,
    procs,
    notes,
    harness: h,
  };
  if (features.http !== true) return [tcpPeer];
  const vhostPeer: Peer = {
    id: `porthole-${transport}-http`,
    label: `porthole ${transport} (http proxy)`,
    ports: { http: vhost },
    httpHost: HTTP_VHOST,
    roots,
    procs,
    notes: [],
  };
  return [tcpPeer, vhostPeer];
}
