// A server-opened tunnel stream: its header, then the connection's bytes, deflated both ways for a proxy
// that asked for compression.
import type { Duplex } from 'node:stream';
import type { Session } from '@porthole/mux';
import { CompressedStream, type ProxySpec, type StreamHeader, writeStreamHeader } from '@porthole/protocol';

const COMPRESSED: Pick<StreamHeader, 'compression'> = Object.freeze({ compression: true });
const UNCOMPRESSED: Pick<StreamHeader, 'compression'> = Object.freeze({});

/**
 * The header's `compression` field for a stream of `spec`'s proxy: present only when it asked. Shared
 * objects, so a connection of a proxy without it allocates nothing more than before.
 */
export function compressionOf(spec: Pick<ProxySpec, 'compression'>): Pick<StreamHeader, 'compression'> {
  return spec.compression ? COMPRESSED : UNCOMPRESSED;
}

/**
 * Opens a stream to the client and writes `header`. A header with `compression` gets the stream back as a
 * CompressedStream (the client inflates what follows the header); any other, the mux stream itself.
 */
export function openTunnelStream(session: Session, header: StreamHeader): Duplex {
  const stream = session.open();
  writeStreamHeader(stream, header);
  return header.compression ? new CompressedStream(stream) : stream;
}
