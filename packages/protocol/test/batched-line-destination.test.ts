import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { BatchedLineDestination, LOG_FLUSH_DELAY_MS } from '../src/batched-line-destination.js';

const loggerModule = fileURLToPath(new URL('../src/logger.js', import.meta.url));
const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

function recordingSink() {
  const writes: string[] = [];
  return { writes, sink: { write: (data: string) => writes.push(data) > 0 } };
}

test('lines logged within the delay leave in one write when the first is due; later lines in another', async () => {
  // A long delay, so that a busy machine stretching the short sleeps below cannot reach it.
  const delayMs = 300;
  const { writes, sink } = recordingSink();
  const destination = new BatchedLineDestination(sink, delayMs);
  destination.write('a\n');
  await nextTurn();
  destination.write('b\n');
  await sleep(5);
  destination.write('c\n');
  await nextTurn();
  assert.deepEqual(writes, [], 'held past the end of the turn');
  await sleep(delayMs + 200);
  assert.deepEqual(writes, ['a\nb\nc\n']);
  destination.write('d\n');
  await sleep(delayMs + 200);
  assert.deepEqual(writes, ['a\nb\nc\n', 'd\n']);
  await sleep(delayMs);
  assert.equal(writes.length, 2, 'no empty writes');
});

test('more than 64 KiB of lines are written as they come, holding at most that much', async () => {
  const { writes, sink } = recordingSink();
  const destination = new BatchedLineDestination(sink);
  const line = `${'x'.repeat(1023)}\n`;
  for (let i = 0; i < 200; i++) destination.write(line);
  assert.equal(writes.length, 3, 'written at 64, 128 and 192 KiB');
  assert.ok(writes.every((data) => data.length === 64 * 1024));
  await sleep(LOG_FLUSH_DELAY_MS + 30);
  assert.equal(writes.join('').length, 200 * 1024);
});

/** Runs a node process that logs through createLogger (JSON on a pipe) and then ends as `ending` says. */
function logThenEnd(ending: string): Promise<{ stdout: string; code: number | null }> {
  const script =
    `const { createLogger } = await import(${JSON.stringify(loggerModule)});` +
    `const logger = createLogger({ json: true });` +
    `for (let i = 0; i < 3; i++) logger.info({ n: i }, 'line');` +
    ending;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ stdout, code }));
  });
}

for (const [how, ending, code] of [
  ['process.exit() in the same turn', 'process.exit(3);', 3],
  ['an uncaught exception in the same turn', "throw new Error('boom');", 1],
  ['an unhandled rejection', "Promise.reject(new Error('boom'));", 1],
  ['the end of the program, with nothing left to do', '', 0],
] as const) {
  test(`lines logged just before ${how} still reach stdout`, async () => {
    const result = await logThenEnd(ending);
    assert.equal(result.code, code);
    const lines = result.stdout
      .trim()
      .split('\n')
      .map((text) => JSON.parse(text) as { n: number; msg: string });
    assert.deepEqual(
      lines.map((line) => [line.msg, line.n]),
      [
        ['line', 0],
        ['line', 1],
        ['line', 2],
      ],
    );
  });
}
