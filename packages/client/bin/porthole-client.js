#!/usr/bin/env -S MALLOC_TRIM_THRESHOLD_=268435456 node --single-threaded-gc
// Two settings that together more than doubled tunnel throughput (iperf3 on a 2-core machine, 4 -> 10 Gbit/s):
// - MALLOC_TRIM_THRESHOLD_: every socket read is a fresh 64 KiB buffer and each garbage collection frees tens
//   of MiB of them at once. glibc returns free memory at the top of its heap to the kernel as soon as 128 KiB
//   are free there, so nearly every page was faulted in again (300,000 faults in a 4 s run). With 256 MiB,
//   freed memory is reused; RSS stays near its peak instead of shrinking after a burst. Other C libraries
//   ignore the variable.
// - --single-threaded-gc: our heap is small (~10 MiB) and the work is one event loop; V8's helper threads for
//   parallel and concurrent GC cost more in coordination and in CPU taken from the other tunnel process than
//   they save (user time halved without them).
import '../dist/src/main.js';
