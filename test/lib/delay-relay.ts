// A TCP relay on loopback that holds every chunk for a while in each direction, in order: a long round trip
// (a satellite hop, a bloated mobile link) where this machine's kernel has no netem.

import net from 'node:net';

export interface DelayRelay {
  port: number;
  close(): Promise<void>;
}

/**
 * Relays 127.0.0.1:<port> to 127.0.0.1:`targetPort`, each chunk delivered `delayMs` plus up to `jitterMs`
 * (uniform) after it came, never before the chunk ahead of it.
 */
export async function startDelayRelay(
  targetPort: number,
  delayMs: number,
  jitterMs = 0,
): Promise<DelayRelay> {
  const sockets = new Set<net.Socket>();
  const delayed = (from: net.Socket, to: net.Socket) => {
    let due = 0;
    from.on('data', (chunk: Buffer) => {
      due = Math.max(due, Date.now() + delayMs + Math.random() * jitterMs);
      setTimeout(() => to.destroyed || to.write(chunk), due - Date.now());
    });
    from.on('end', () => setTimeout(() => to.end(), Math.max(0, due - Date.now())));
  };
  const server = net.createServer((visitor) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    for (const s of [visitor, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        sockets.delete(s);
        visitor.destroy();
        upstream.destroy();
      });
    }
    delayed(visitor, upstream);
    delayed(upstream, visitor);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
