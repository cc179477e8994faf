import type { Session } from '@porthole/mux';

/**
 * Silence from the other end of the tunnel, past the time a waiting ping's answer was due (Session.peerSilence),
 * after which a udp flow drops the datagrams it would send (DatagramWriterOptions.linkStopped). Long enough
 * that jitter or a busy peer is not taken for a stopped link (a ping's answer comes back behind what the peer
 * sends first).
 */
export const UDP_LINK_STOPPED_MS = 1000;

/** A DatagramWriter's linkStopped for the flows of `session`. */
export function udpLinkStopped(session: Session): () => boolean {
  return () => session.peerSilence() >= UDP_LINK_STOPPED_MS;
}
