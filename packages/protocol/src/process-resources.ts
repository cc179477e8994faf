import { readdirSync } from 'node:fs';

/** Open file descriptors of this process (what `ls /proc/self/fd | wc -l` shows, minus the listing's own). */
export function openFileDescriptors(): number {
  try {
    return readdirSync('/proc/self/fd').length - 1;
  } catch {
    return Number.NaN;
  }
}

export interface ProcessResources {
  rss: number;
  heapUsed: number;
  openFds: number;
  /** libuv/Node resources keeping the loop alive, by type (TCPSocketWrap, Timeout, ...). */
  resources: Record<string, number>;
}

/**
 * What the process holds: memory, descriptors and resources by type, the numbers both admin endpoints
 * report and the soak test compares against its baseline to find leaks.
 */
export function processResources(): ProcessResources {
  const memory = process.memoryUsage();
  const resources: Record<string, number> = {};
  for (const type of process.getActiveResourcesInfo()) resources[type] = (resources[type] ?? 0) + 1;
  return { rss: memory.rss, heapUsed: memory.heapUsed, openFds: openFileDescriptors(), resources };
}
