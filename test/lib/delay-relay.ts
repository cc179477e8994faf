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
  // One timer for the chunk at the head of a FIFO, not one per chunk: Node starts a timer's delay at the
  // loop's cached time, so two timers for the same due moment fire in either order, and a relay with
  // jitter reordered 84 of 400 chunks (a yamux SYN overtaken by its stream's next frame is a reset).
  const delayed = (from: net.Socket, to: net.Socket) => {
    const queue: { due: number; chunk: Buffer | null }[] = [];
    let timer: NodeJS.Timeout | undefined;
    const deliver = () => {
      timer = undefined;
      while (queue.length > 0 && queue[0]!.due <= Date.now()) {
        const { chunk } = queue.shift()!;
        if (to.destroyed) continue;
        if (chunk === null) to.end();
        else to.write(chunk);
      }
      if (queue.length > 0) timer = setTimeout(deliver, queue[0]!.due - Date.now());
    };
    const enqueue = (chunk: Buffer | null) => {
      const last = queue.at(-1)?.due ?? 0;
      queue.push({ due: Math.max(last, Date.now() + delayMs + Math.random() * jitterMs), chunk });
      timer ??= setTimeout(deliver, queue[0]!.due - Date.now());
    };
    from.on('data', (chunk: Buffer) => enqueue(chunk));
    from.on('end', () => enqueue(null));
    to.on('close', () => clearTimeout(timer));
  };
  // Half-open, so a FIN waits its turn behind the chunks still held rather than closing both ends at once.
  const server = net.createServer({ allowHalfOpen: true }, (visitor) => {
    const upstream = net.connect({ port: targetPort, host: '127.0.0.1', allowHalfOpen: true });
    for (const s of [visitor, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      // A clean close is one side done both ways while the other may still be owed held chunks; a failed
      // one (a reset) ends the relay.
      s.on('close', (hadError) => {
        sockets.delete(s);
        if (!hadError) return;
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
