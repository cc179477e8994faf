// A server-opened tunnel stream: its header (with the marks its proxy's spec calls for), then the
// connection's bytes, deflated both ways for a proxy that asked for compression.
import type { Duplex } from 'node:stream';
import type { Session } from '@porthole/mux';
import { CompressedStream, type ProxySpec, type StreamHeader, writeStreamHeader } from '@porthole/protocol';

const COMPRESSED: Pick<StreamHeader, 'compression'> = Object.freeze({ compression: true });
/** A header field left out: what a stream of a proxy without compression or response_headers gets. */
const UNMARKED = Object.freeze({});

/**
 * The header's `compression` field for a stream of `spec`'s proxy: present only when it asked. Shared
 * objects, so a connection of a proxy without it allocates nothing more than before.
 */
export function compressionOf(spec: Pick<ProxySpec, 'compression'>): Pick<StreamHeader, 'compression'> {
  return spec.compression ? COMPRESSED : UNMARKED;
}

const RESPONSE_HEADERS_SET: Pick<StreamHeader, 'response_headers'> = Object.freeze({
  response_headers: true,
});

/**
 * The header's `response_headers` mark for a stream of `spec`'s proxy: present only when it has them (the
 * client serves such a proxy's streams only with it). Shared objects, as compressionOf's.
 */
export function responseHeadersMarkOf(
  spec: Pick<ProxySpec, 'response_headers'>,
): Pick<StreamHeader, 'response_headers'> {
  return spec.response_headers ? RESPONSE_HEADERS_SET : UNMARKED;
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
