// The harness's own promise to the bench: once it stops collecting a program's logs, it neither parses nor
// keeps them, yet keeps reading them, so a program that logs a line per request never blocks on a full pipe.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { withHarness } from './lib/processes.js';

const FLOOD_LINES = 50_000;

/** Logs "ready", waits for the trigger file, then writes FLOOD_LINES JSON lines (~12 MB) and "done". */
const chattyProgram = `
const fs = require('node:fs');
const [trigger, count] = [process.argv[1], Number(process.argv[2])];
const line = JSON.stringify({ level: 'info', msg: 'http request', path: '/'.padEnd(200, 'x') }) + '\\n';
process.stdout.write(JSON.stringify({ msg: 'ready' }) + '\\n');
const waitForTrigger = setInterval(() => {
  if (!fs.existsSync(trigger)) return;
  clearInterval(waitForTrigger);
  let left = count;
  const more = () => {
    while (left > 0) {
      left--;
      if (!process.stdout.write(line)) return process.stdout.once('drain', more);
    }
    process.stdout.write(JSON.stringify({ msg: 'done' }) + '\\n');
  };
  more();
}, 10);
`;

test(
  'stopCollectingLogs: later stdout lines are drained and counted, not parsed or kept',
  {
    timeout: 60_000,
  },
  (t) =>
    withHarness(t, async (h) => {
      const trigger = h.path('flood');
      const proc = h.spawn('chatty', process.execPath, ['-e', chattyProgram, trigger, String(FLOOD_LINES)]);
      await proc.waitForMsg('ready', 10_000);
      proc.stopCollectingLogs();
      await assert.rejects(proc.waitForMsg('done', 1000), /no longer collected/);

      await writeFile(trigger, '');
      const exit = await Promise.race([
        proc.exited,
        new Promise<'blocked'>((resolve) => setTimeout(() => resolve('blocked'), 30_000).unref()),
      ]);
      assert.deepEqual(exit, { code: 0, signal: null }, 'the program wrote everything and exited');
      assert.equal(proc.logs.length, 1, 'only the line before stopCollectingLogs was parsed');
      assert.equal(proc.output.filter((l) => l.stream === 'out').length, 1, 'and only it was kept');
      assert.match(
        proc.tail(5),
        new RegExp(`\\(${FLOOD_LINES + 1} stdout lines read since stopCollectingLogs`),
      );
    }),
);

/**
 * Logs "late" through the programs' own logger, which holds it for up to 50 ms in its batch, then writes
 * "ready" straight to stdout, and stays alive until killed: when "ready" arrives, "late" was logged before
 * it and may still be held.
 */
const batchedProgram = `
const { createLogger } = await import(${JSON.stringify(import.meta.resolve('@porthole/protocol'))});
const logger = createLogger({ json: true });
logger.info({}, 'late');
process.stdout.write(JSON.stringify({ level: 'info', time: new Date().toISOString(), msg: 'ready' }) + '\\n');
setInterval(() => {}, 1000);
`;

test('settledLogsWithMsg sees a line the programs logged just before, which their batching still held', (t) =>
  withHarness(t, async (h) => {
    const proc = h.spawn('batched', process.execPath, ['--input-type=module', '-e', batchedProgram]);
    await proc.waitForMsg('ready', 10_000);
    assert.equal((await proc.settledLogsWithMsg('late')).length, 1);
  }));
