import { randomBytes } from 'node:crypto';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { openWebSocket, Session, type Stream, type WebSocketStream } from '@porthole/mux';
import {
  type ControlMessage,
  captureLogs,
  issueToken,
  MessageReader,
  PortRanges,
  parseControlMessage,
  writeMessage,
} from '@porthole/protocol';
import {
  DEFAULT_MAX_PENDING_CONNECTIONS,
  DEFAULT_MAX_PENDING_PER_SOURCE,
  DEFAULT_MAX_PROXIES_PER_CLIENT,
  DEFAULT_PROXY_MAX_CONNECTIONS,
  type ServerConfig,
} from '../src/config.js';
import { PortholeServer } from '../src/server.js';

export const SECRET = randomBytes(32).toString('hex');

export async function startServer(overrides: Partial<ServerConfig> = {}) {
  const config: ServerConfig = {
    file: 'test.toml',
    listen: { host: '127.0.0.1', port: 0 },
    path: '/_porthole',
    proxyBind: '127.0.0.1',
    allowBind: [],
    allowPorts: PortRanges.all(),
    proxyMaxConnections: DEFAULT_PROXY_MAX_CONNECTIONS,
    maxProxiesPerClient: DEFAULT_MAX_PROXIES_PER_CLIENT,
    pending: { perSource: DEFAULT_MAX_PENDING_PER_SOURCE, total: DEFAULT_MAX_PENDING_CONNECTIONS },
    heartbeatInterval: 10_000,
    heartbeatTimeout: 30_000,
    shutdownTimeout: 1000,
    logLevel: 'debug',
    auth: { secret: SECRET, revoked: new Set(), failureLimit: 20, failureWindow: 60_000 },
    plugins: [],
    warnings: [],
    ...overrides,
  };
  const logs = captureLogs();
  const server = new PortholeServer(config, logs.logger, '0.0.0-test');
  const address = await server.start();
  return { server, config, logs, url: `ws://${address}${config.path}` };
}

export function token(name: string, ports?: string): Promise<string> {
  return issueToken(SECRET, { name, expiresInMs: 60_000, ...(ports === undefined ? {} : { ports }) });
}

/**
 * A protocol peer written from the wire contract (mux session + control messages), so server behaviour
 * is tested without the client package.
 */
export class RawClient {
  readonly control: Stream;
  private readonly reader: MessageReader;

  private constructor(
    readonly ws: WebSocketStream,
    readonly session: Session,
  ) {
    this.control = session.open();
    this.control.on('error', () => {});
    this.reader = new MessageReader(this.control);
  }

  static async connect(url: string, jwt: string): Promise<RawClient> {
    const ws = await openWebSocket(url, { headers: { Authorization: `Bearer ${jwt}` }, timeoutMs: 10_000 });
    return new RawClient(ws, new Session(ws, { client: true, keepAliveInterval: 0 }));
  }

  send(message: ControlMessage): void {
    writeMessage(this.control, message);
  }

  /** Anything at all, e.g. what a newer client or a broken one would send. */
  sendRaw(message: unknown): void {
    writeMessage(this.control, message);
  }

  async next(): Promise<ReturnType<typeof parseControlMessage> | null> {
    const raw = await this.reader.read();
    return raw === null ? null : parseControlMessage(raw);
  }

  async hello(instanceId = 'test-instance') {
    this.send({ type: 'hello', version: 1, instance_id: instanceId, client_version: 'test' });
    return this.next();
  }

  async register(proxies: { name: string; port: number }[]) {
    this.send({
      type: 'register',
      proxies: proxies.map((p) => ({ name: p.name, type: 'tcp', remote_port: p.port })),
    });
    return this.next();
  }
}

export { freePort } from '@porthole/mux/test/free-port';

/** Connects to a public port and collects what comes back until the peer ends or resets. */
export function visit(port: number, payload: string | Buffer): Promise<{ data: string; error?: string }> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => {
      socket.end();
      resolve({ data: Buffer.concat(chunks).toString() });
    });
    socket.on('error', (err: NodeJS.ErrnoException) =>
      resolve({ data: Buffer.concat(chunks).toString(), error: err.code ?? err.message }),
    );
    socket.end(payload);
  });
}

/**
 * A TCP relay on loopback whose connections can be made to go dark: they then forward nothing and close
 * nothing, like a network path that died (both peers are left with a half-open connection).
 */
export async function startRelay(target: { host: string; port: number }) {
  const pairs: { sockets: Socket[]; dark: boolean }[] = [];
  const server = createServer((inbound) => {
    const outbound = connect(target);
    const pair = { sockets: [inbound, outbound], dark: false };
    pairs.push(pair);
    const forward = (from: Socket, to: Socket) => {
      from.on('data', (c: Buffer) => {
        if (!pair.dark) to.write(c);
      });
      from.on('error', () => {
        if (!pair.dark) to.destroy();
      });
      from.on('close', () => {
        if (!pair.dark) to.destroy();
      });
    };
    forward(inbound, outbound);
    forward(outbound, inbound);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    /** Every connection open now goes dark; later connections are relayed normally. */
    darkenExisting(): void {
      for (const pair of pairs) pair.dark = true;
    },
    close(): void {
      for (const pair of pairs) for (const s of pair.sockets) s.destroy();
      server.close();
    },
  };
}
