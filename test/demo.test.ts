// The README's quick start: `npm run demo` runs a whole tunnel on this machine and prints the curl that
// reaches its sample service through it. A new user copies that curl and later presses Ctrl-C; so does this.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { curl } from './lib/curl.js';
import { repoRoot, withHarness } from './lib/processes.js';

const demoScript = path.join(repoRoot, 'examples', 'demo.mjs');

test(
  'the demo: the curl it prints reaches the service through its tunnel, nothing warns, and Ctrl-C stops every program with 0',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const demo = h.spawn('demo', process.execPath, [demoScript]);
      await demo.waitForOutput(/^Running; press Ctrl-C to stop\.$/, 30_000);
      const printed = await demo.waitForOutput(/^ {2}curl http:\/\/\S+$/, 1000);
      const url = printed.trim().slice('curl '.length);

      const reply = await curl([], url);
      assert.equal(reply.code, 0, reply.stderr);
      assert.equal(reply.status, 200);
      assert.match(
        reply.body,
        /^hello from the service behind the tunnel \(you asked for \/through-the-tunnel\)/,
      );

      // The first thing a new user runs should not tell them to fix something (a token about to expire, say).
      const complaints = demo.output.filter((l) => /^\[(server|client)\] (warn|error|fatal)/.test(l.text));
      assert.deepEqual(
        complaints.map((l) => l.text),
        [],
      );

      demo.kill('SIGINT');
      const exit = await demo.exited;
      assert.equal(exit.code, 0);
      await demo.waitForOutput(/^stopped: /, 1000);
      assert.ok(
        demo.outputContains('stopped: server exited 0, client exited 0'),
        `both programs stopped cleanly:\n${demo.tail(5)}`,
      );
    }),
);
