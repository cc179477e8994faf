// The admin status page in a real headless browser (Debian's chromium driven by playwright-core): sign in
// with the admin token, see the client, its proxy and public address (a compressed one marked so), a live
// connection appear and go, and its byte counts and throughput grow while data flows.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { test } from 'node:test';
import { type Browser, chromium, type Page } from 'playwright-core';
import { eventually, freePorts, withHarness } from './lib/processes.js';
import { startEchoServer } from './lib/services.js';
import { startTunnel } from './lib/tunnel.js';

const CHROMIUM = '/usr/bin/chromium';
const ADMIN_TOKEN = 'status-page-admin-token-0123456789';

/** "1.5 MiB" -> bytes (what the page shows, read back the way a person would). */
function parseBytes(text: string): number {
  const match = /^([\d.]+) (B|KiB|MiB|GiB)$/.exec(text.trim());
  assert.ok(match, `not a byte count: ${JSON.stringify(text)}`);
  const power = ['B', 'KiB', 'MiB', 'GiB'].indexOf(match[2]!);
  return Number(match[1]) * 1024 ** power;
}

async function text(page: Page, selector: string): Promise<string> {
  return ((await page.locator(selector).first().textContent({ timeout: 5000 })) ?? '').trim();
}

/** A visitor that keeps sending through the tunnel (and reading the echo) until stopped. */
function streamingVisitor(port: number) {
  const sock = net.connect({ host: '127.0.0.1', port });
  sock.on('data', () => {});
  sock.on('error', () => {});
  const chunk = Buffer.alloc(32 * 1024, 0x61);
  const timer = setInterval(() => sock.write(chunk), 25);
  return {
    stop: () => {
      clearInterval(timer);
      sock.destroy();
    },
  };
}

test(
  'status page in chromium: client, proxy, public address, a live connection and growing bytes',
  {
    timeout: 120_000,
    skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed (.ci/run installs it)`,
  },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0);
      h.onCleanup(() => echo.close());
      const [remotePort, packedPort] = await freePorts(2);
      const { server, publicPort } = await startTunnel(
        h,
        [
          { name: 'web', local: `127.0.0.1:${echo.port}`, remotePort: remotePort! },
          { name: 'packed', local: `127.0.0.1:${echo.port}`, remotePort: packedPort!, compression: true },
        ],
        { tokenName: 'homelab', server: { admin: { token: ADMIN_TOKEN } } },
      );

      const browser: Browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: [
          '--headless',
          '--no-sandbox',
          '--disable-gpu',
          '--disable-quic',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
        ],
      });
      h.onCleanup(() => browser.close());
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
      const problems: string[] = [];
      page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
      page.on('console', (msg) => {
        // The one 401 is the wrong token below, on purpose.
        if (msg.type() === 'error' && !/401/.test(msg.text())) problems.push(`console: ${msg.text()}`);
      });

      await page.goto(`${server.adminUrl}/`);
      assert.equal(await page.title(), 'porthole status');
      assert.ok(await page.locator('#login').isVisible(), 'a sign-in form first');
      assert.ok(!(await page.locator('#status').isVisible()), 'no data before signing in');

      await page.fill('#token', 'not-the-admin-token-at-all');
      await page.click('#login button[type=submit]');
      await eventually(
        'the wrong token to be refused',
        async () => /refused/.test(await text(page, '#login-error')),
        10_000,
      );

      await page.fill('#token', ADMIN_TOKEN);
      await page.click('#login button[type=submit]');
      await page.locator('#status').waitFor({ state: 'visible', timeout: 10_000 });
      await eventually(
        'the client to be listed',
        async () => (await text(page, '#count-clients')) === '1',
        10_000,
      );
      assert.equal(await text(page, '#clients tbody tr td.name'), 'homelab');
      const proxyRow = page.locator('#proxies tbody tr[data-proxy="homelab/web"]');
      assert.equal(await proxyRow.locator('td.name').textContent(), 'web');
      const packedRow = page.locator('#proxies tbody tr[data-proxy="homelab/packed"]');
      assert.equal(await packedRow.locator('td.name').textContent(), 'packed (compressed)');
      assert.equal(await proxyRow.locator('td.addr').textContent(), `127.0.0.1:${publicPort}`);
      assert.equal(await proxyRow.locator('td.open').textContent(), '0');
      assert.equal(await text(page, '#count-connections'), '0');
      assert.ok(await page.locator('#connections-empty').isVisible(), '"No open connections." while idle');

      // A connection opens and data flows: the page shows it and its bytes grow.
      const visitor = streamingVisitor(publicPort);
      h.onCleanup(() => visitor.stop());
      // The page asks for clients and connections in two requests, so one refresh can fall between the
      // connection's arrival at the two: wait for both to show it.
      await eventually(
        'the live connection to show',
        async () =>
          (await text(page, '#count-connections')) === '1' &&
          (await proxyRow.locator('td.open').textContent()) === '1',
        10_000,
      );
      const connRow = page.locator('#connections tbody tr').first();
      assert.match((await connRow.textContent()) ?? '', /homelab\s*web\s*127\.0\.0\.1:\d+/);
      const firstIn = parseBytes((await proxyRow.locator('td.bytes-in').textContent()) ?? '');
      await eventually(
        'bytes in to grow',
        async () =>
          parseBytes((await proxyRow.locator('td.bytes-in').textContent()) ?? '') > firstIn + 256 * 1024,
        10_000,
      );
      const rate = (await proxyRow.locator('td.rate').textContent()) ?? '';
      assert.match(rate, /^[\d.]+ (KiB|MiB)\/s$/, `throughput shown: ${rate}`);
      assert.match(await text(page, '#state'), /^live, updated/);

      const shot = process.env.PORTHOLE_STATUS_SCREENSHOT ?? h.path('status-page.png');
      await page.screenshot({ path: shot, fullPage: true });
      t.diagnostic(`screenshot: ${shot}`);

      // The connection closes: the count drops back and the total counts it.
      visitor.stop();
      await eventually(
        'the connection to go and the total to count it',
        async () =>
          (await text(page, '#count-connections')) === '0' &&
          (await proxyRow.locator('td.total').textContent()) === '1',
        10_000,
      );
      assert.ok(await page.locator('#connections-empty').isVisible());

      await page.click('#signout');
      assert.ok(await page.locator('#login').isVisible(), 'signed out: back to the form');
      assert.equal(await page.evaluate('sessionStorage.length'), 0, 'the token is gone from the tab');
      assert.deepEqual(problems, []);
    }),
);
