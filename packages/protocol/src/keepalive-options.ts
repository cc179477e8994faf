import type { SessionOptions } from '@porthole/mux';

/** A silence of this long while a keepalive ping waits is worth a line, if the heartbeat allows it. */
const STALL_NOTICE_MS = 3000;

/**
 * The mux keepalive from a program's heartbeat_interval and heartbeat_timeout: pings every interval, each
 * allowed (timeout - interval) for its answer, so a dead peer is noticed within heartbeat_timeout of its last
 * sign of life. A shorter silence that ends (a Wi-Fi roam, a router rebooting) is reported as a 'stall'; at
 * most half the answer's allowance, so that short test heartbeats still report one before they give up.
 */
export function keepAliveOptions(
  heartbeatInterval: number,
  heartbeatTimeout: number,
): Pick<SessionOptions, 'keepAliveInterval' | 'keepAliveTimeout' | 'stallNotice'> {
  const keepAliveTimeout = heartbeatTimeout - heartbeatInterval;
  return {
    keepAliveInterval: heartbeatInterval,
    keepAliveTimeout,
    stallNotice: Math.min(STALL_NOTICE_MS, Math.round(keepAliveTimeout / 2)),
  };
}
