import v8 from 'node:v8';
import vm from 'node:vm';

const gc = (() => {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
})();

/** Heap and buffer memory still reachable after a full GC, in bytes. */
export function retained(): number {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}
