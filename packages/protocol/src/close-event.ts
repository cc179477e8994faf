import type { EventEmitter } from 'node:events';

/**
 * Resolves with the first argument of the emitter's next 'close' event. Unlike events.once(), an 'error'
 * event does not reject it: sessions and sockets emit 'error' before 'close', and the close is what we wait for.
 */
export function nextClose<T = unknown>(emitter: EventEmitter): Promise<T | undefined> {
  return new Promise((resolve) => emitter.once('close', (arg?: T) => resolve(arg)));
}
