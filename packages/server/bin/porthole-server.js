#!/usr/bin/env -S MALLOC_TRIM_THRESHOLD_=268435456 node
// Why the malloc setting: every socket read is a fresh 64 KiB buffer, and each garbage collection frees tens
// of MiB of them at once. glibc hands free memory at the top of its heap back to the kernel as soon as
// 128 KiB are free there, so at tunnel rates nearly every page was faulted in again (300,000 faults in a 4 s
// iperf3 run, a fifth of the throughput). With a 256 MiB threshold freed memory is reused instead; RSS
// stays near its peak rather than shrinking after a burst. Other C libraries ignore the variable.
import '../dist/src/cli.js';
