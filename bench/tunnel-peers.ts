// The ways of reaching the local services that the bench compares, each started by the harness itself
// on loopback: direct (the limit), a socat relay, `ssh -N -R` into a private sshd (default cipher and
// aes128-gcm), and porthole over ws and over wss (TLS with a certificate from a private CA made by
// openssl, which the client trusts via ca_file). Every peer keeps running for the whole suite so that the cases can be interleaved.
import { readFile } from 'node:fs/promises';
import { freePorts, Harness, type Proc, sleep } from '@porthole/e2e/lib/processes';
import {
  issueRoutedToken,
  makeCa,
  makeCert,
  type RoutedProxy,
  startRoutedClient,
  startRoutedServer,
} from '@porthole/e2e/lib/routing';
import { startSshd } from '@porthole/e2e/lib/sshd';

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
  /**
   * Its processes compile their code as they run (V8's JIT): the rounds measure it after an unrecorded
   * warm-up pass, as a tunnel that has been up for a while, not one started a minute ago.
   */
  compilesAsItRuns?: boolean;
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
  const options = ['StrictHostKeyChecking=no', 'UserKnownHostsFile=/dev/null', 'BatchMode=yes'];
  options.push('ExitOnForwardFailure=yes', 'LogLevel=ERROR');
  const ssh = h.spawn('ssh', 'ssh', [
    ...['-N', '-T', '-i', sshd.keyPath, '-p', `${sshd.port}`, '-c', cipher],
    ...options.flatMap((o) => ['-o', o]),
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

const HTTP_VHOST = 'bench.porthole.test';

/**
 * porthole-server + porthole-client from real TOML files (the e2e harness's routed server and client),
 * over ws or, with [tls] and a private CA the client trusts through ca_file, wss. Proxies: tcp for iperf3,
 * HTTP and echo; udp on the iperf3 port (iperf3 -u needs TCP control and UDP data on one port); http
 * (vhost) for the HTTP service. Returns two peers over the same processes: the tcp/udp proxies, and the
 * HTTP service reached through the server's [http] listener.
 */
export async function portholePeers(targets: Targets, transport: 'ws' | 'wss'): Promise<Peer[]> {
  const h = await Harness.create();
  const [iperf, http, echo] = (await freePorts(3)) as [number, number, number];
  const local = (port: number) => `127.0.0.1:${port}`;
  const proxies: RoutedProxy[] = [
    { name: 'iperf', type: 'tcp', local: local(targets.iperf), remote_port: iperf },
    { name: 'iperf-udp', type: 'udp', local: local(targets.iperf), remote_port: iperf },
    { name: 'http', type: 'tcp', local: local(targets.http), remote_port: http },
    { name: 'echo', type: 'tcp', local: local(targets.echo), remote_port: echo },
    { name: 'web', type: 'http', local: local(targets.http), hosts: [HTTP_VHOST] },
  ];
  const ports = [iperf, http, echo].map(String);
  // wss: the certificate names "localhost" (the CA helper makes DNS names), so the client dials that.
  const ca = transport === 'wss' ? await makeCa(h, 'porthole bench CA') : undefined;
  const tls = ca ? await makeCert(h, ca, 'localhost', ['localhost']) : undefined;
  const server = await startRoutedServer(h, {
    allowPorts: ports,
    http: {},
    ...(tls ? { tls } : {}),
    name: `porthole-server-${transport}`,
  });
  if (server.httpPort === undefined) throw new Error('porthole-server logged no "http listening" line');
  const token = await issueRoutedToken(server, {
    name: 'bench',
    ports: ports.join(','),
    hosts: [HTTP_VHOST],
  });
  const client = await startRoutedClient(h, {
    server: tls ? server.url.replace(/^ws:\/\/127\.0\.0\.1:/, 'wss://localhost:') : server.url,
    token,
    proxies,
    ...(ca ? { caFile: ca.cert } : {}),
    name: `porthole-client-${transport}`,
  });
  const procs = [server.proc, client.proc];
  // Both now log a line per HTTP request and per connection, hundreds of thousands in a run; the bench reads
  // no more of them. Parsed and kept, they grew the bench's own heap, and its collections (up to 39 ms, on
  // helper threads too) took CPU from whatever was being measured, most often right after a wrk run.
  for (const proc of procs) proc.stopCollectingLogs();
  const roots: TunnelProcess[] = [
    { role: 'server', pid: server.proc.pid! },
    { role: 'client', pid: client.proc.pid! },
  ];
  const shared = { roots, procs, notes: [], compilesAsItRuns: true };
  return [
    {
      id: `porthole-${transport}`,
      label: `porthole ${transport}`,
      ports: { iperf, udp: iperf, http, echo },
      ...shared,
      harness: h,
    },
    {
      id: `porthole-${transport}-http`,
      label: `porthole ${transport} (http proxy)`,
      ports: { http: server.httpPort },
      httpHost: HTTP_VHOST,
      ...shared,
    },
  ];
}
