// Preloaded into a process with NODE_OPTIONS="--import=<this file>" and PORTHOLE_CPU_PROF_DIR=<dir>: starts
// V8's CPU profiler (the one behind --cpu-prof, same 1 ms sampling) through the inspector and writes
// <dir>/CPU.<pid>.cpuprofile when the process exits. Needed because Node 20 refuses --cpu-prof in
// NODE_OPTIONS, and the harness starts the CLIs through their bin scripts, not `node <flags> script`.
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import path from 'node:path';

const dir = process.env.PORTHOLE_CPU_PROF_DIR;
if (dir) {
  const session = new Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 1000 });
  session.post('Profiler.start');
  process.on('exit', () => {
    // An in-process inspector session answers synchronously, so this completes before the exit.
    session.post('Profiler.stop', (err, result) => {
      if (err) process.stderr.write(`cpu profile not written: ${err.message}\n`);
      else writeFileSync(path.join(dir, `CPU.${process.pid}.cpuprofile`), JSON.stringify(result.profile));
    });
  });
}
