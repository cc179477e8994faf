import type { Socket } from 'node:net';

/**
 * Records the writes a socket makes from now on: 1 for each write(), the number of buffers for each
 * writev(). The socket still writes everything; this only watches.
 */
export function countSocketWrites(socket: Socket): number[] {
  const writes: number[] = [];
  const writeOne = socket._write.bind(socket);
  const writeMany = socket._writev!.bind(socket);
  socket._write = (chunk, encoding, callback) => {
    writes.push(1);
    writeOne(chunk, encoding, callback);
  };
  socket._writev = (chunks, callback) => {
    writes.push(chunks.length);
    writeMany(chunks, callback);
  };
  return writes;
}
