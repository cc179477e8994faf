import type { Readable, Writable } from 'node:stream';
import { z } from 'zod';
import { MessageReader, writeMessage } from './message-codec.js';

/** Headers are small; a peer that announces more is misbehaving. */
export const MAX_STREAM_HEADER_BYTES = 8 * 1024;

export const streamHeaderSchema = z.object({
  /** Name of the proxy whose public listener accepted the connection. */
  proxy: z.string(),
  /** Server-side connection id, so both ends' logs can be matched. */
  conn: z.number().int().nonnegative().optional(),
  /** Address and port of the public peer (the visitor). */
  remote_addr: z.string(),
  remote_port: z.number().int().min(0).max(65535),
  /** The public address:port the visitor connected to. */
  public_addr: z.string(),
  /** The server's own address and port of the visitor's connection (a PROXY header's destination). */
  dest_addr: z.string().optional(),
  dest_port: z.number().int().min(0).max(65535).optional(),
  /** udp flows: the idle time after which the flow ends, so both ends use the server's value. */
  udp_idle_timeout_ms: z.number().int().positive().optional(),
  /** A private proxy's connection: the visiting client's name (remote_addr is that client's address). */
  visitor: z.string().max(64).optional(),
  /**
   * tcpmux: the server answers the visitor's CONNECT only once the local service took the connection, so
   * the client writes CONNECTED_BYTE first (before any of the service's bytes) when it has; a failed connect
   * resets the stream as for any proxy. Only tcpmux proxies get it, which only clients that know it register.
   */
  confirm_connect: z.literal(true).optional(),
  /**
   * Every byte after this header, both ways, is raw deflate (CompressedStream; a tcpmux's CONNECTED_BYTE
   * too). Only streams of proxies whose register asked for compression get it.
   */
  compression: z.literal(true).optional(),
  /**
   * http: the server sets this proxy's response_headers on what comes back on this stream. Only streams of
   * proxies whose register asked for them get it; a client serves no such proxy's stream without it (one
   * an older server opened before the client gave the proxy back).
   */
  response_headers: z.literal(true).optional(),
});
export type StreamHeader = z.infer<typeof streamHeaderSchema>;

/** What the client writes on a `confirm_connect` stream once its local connect succeeded. */
export const CONNECTED_BYTE = 0x01;

/** Writes the header that precedes the raw bytes on a server-opened stream. */
export function writeStreamHeader(stream: Writable, header: StreamHeader): boolean {
  return writeMessage(stream, header, MAX_STREAM_HEADER_BYTES);
}

/** Reads and validates the header of a server-opened stream; leaves the bytes after it in the stream. */
export async function readStreamHeader(stream: Readable): Promise<StreamHeader> {
  const raw = await new MessageReader(stream, MAX_STREAM_HEADER_BYTES).read();
  if (raw === null) throw new Error('stream ended before its header');
  const result = streamHeaderSchema.safeParse(raw);
  if (!result.success) throw new Error(`invalid stream header: ${result.error.issues[0]!.message}`);
  return result.data;
}
