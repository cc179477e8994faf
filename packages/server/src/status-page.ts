// The admin status page: static HTML, CSS and script (they hold no data, so they are served without the
// token). The script asks for the admin token once, keeps it in sessionStorage (this tab only, gone when
// the tab closes; never in a cookie, so other sites cannot make the browser send it), and polls the JSON API
// every second with `Authorization: Bearer`. Everything is rendered with textContent (no HTML injection
// from client or proxy names). Kept free of backticks and "${" so it can live in template literals.

export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>porthole status</title>
<link rel="stylesheet" href="/status.css">
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<script src="/status.js" defer></script>
</head>
<body>
<header>
  <h1>porthole</h1>
  <span id="state" class="state">not signed in</span>
  <button id="signout" type="button" hidden>Sign out</button>
</header>
<main>
  <form id="login" class="login" hidden>
    <h2>Sign in</h2>
    <p>Paste the admin token (the server's <code>[admin] token_file</code>). It is kept in this tab only.</p>
    <label for="token">Admin token</label>
    <input id="token" name="token" type="password" autocomplete="off" required>
    <button type="submit">Show status</button>
    <p id="login-error" class="error" role="alert"></p>
  </form>
  <div id="status" hidden>
    <section class="cards">
      <div class="card"><span class="label">Clients</span><span id="count-clients" class="value">0</span></div>
      <div class="card"><span class="label">Proxies</span><span id="count-proxies" class="value">0</span></div>
      <div class="card"><span class="label">Open connections</span><span id="count-connections" class="value">0</span></div>
      <div class="card"><span class="label">Throughput</span><span id="throughput" class="value">0 B/s</span></div>
    </section>
    <section>
      <h2>Clients</h2>
      <table id="clients">
        <thead><tr><th>Client</th><th>From</th><th>Connected</th><th>Version</th><th>Proxies</th></tr></thead>
        <tbody></tbody>
      </table>
      <p id="clients-empty" class="empty">No clients connected.</p>
    </section>
    <section>
      <h2>Proxies</h2>
      <table id="proxies">
        <thead><tr><th>Client</th><th>Proxy</th><th>Type</th><th>Public address</th><th class="num">Open</th>
        <th class="num">Total</th><th class="num">In</th><th class="num">Out</th><th class="num">Throughput</th></tr></thead>
        <tbody></tbody>
      </table>
      <p id="proxies-empty" class="empty">No proxies registered.</p>
    </section>
    <section>
      <h2>Live connections</h2>
      <table id="connections">
        <thead><tr><th class="num">#</th><th>Client</th><th>Proxy</th><th>Visitor</th><th class="num">Age</th>
        <th class="num">In</th><th class="num">Out</th></tr></thead>
        <tbody></tbody>
      </table>
      <p id="connections-empty" class="empty">No open connections.</p>
    </section>
  </div>
</main>
</body>
</html>
`;

export const STATUS_PAGE_CSS = `:root {
  color-scheme: light;
  --fg: #1d2330; --muted: #687086; --line: #e3e6ee; --bg: #f6f7fb; --card: #fff; --accent: #2f6fde;
  --ok: #1f8a4c; --bad: #c0392b;
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: center; gap: 16px; padding: 12px 24px; background: #1d2330; color: #fff; }
header h1 { margin: 0; font-size: 18px; letter-spacing: .5px; }
.state { font-size: 13px; color: #c9cfdd; }
.state.live::before { content: ""; display: inline-block; width: 8px; height: 8px; border-radius: 50%; background: #39d37a; margin-right: 6px; }
.state.down::before { content: ""; display: inline-block; width: 8px; height: 8px; border-radius: 50%; background: #ff6b5b; margin-right: 6px; }
header button { margin-left: auto; }
main { max-width: 1200px; margin: 0 auto; padding: 20px 24px 40px; }
h2 { font-size: 15px; margin: 24px 0 8px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; display: flex; flex-direction: column; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .4px; }
.card .value { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
table { width: 100%; border-collapse: collapse; background: var(--card); border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { background: #fafbfd; color: var(--muted); font-weight: 600; font-size: 12px; }
tr:last-child td { border-bottom: 0; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
td.addr { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
.empty { color: var(--muted); margin: 6px 2px; }
.login { max-width: 420px; margin: 48px auto; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 20px 24px; }
.login h2 { margin-top: 0; }
.login label { display: block; font-weight: 600; margin: 12px 0 4px; }
.login input { width: 100%; padding: 8px; border: 1px solid var(--line); border-radius: 6px; font: inherit; }
button { font: inherit; padding: 6px 14px; border-radius: 6px; border: 1px solid var(--accent); background: var(--accent); color: #fff; cursor: pointer; }
.login button { margin-top: 12px; }
.error { color: var(--bad); min-height: 1.4em; }
`;

export const STATUS_PAGE_JS = `'use strict';
(function () {
  var KEY = 'porthole-admin-token';
  var POLL_MS = 1000;
  var timer = null;
  var previous = null;

  function byId(id) { return document.getElementById(id); }
  function token() { return sessionStorage.getItem(KEY); }

  function formatBytes(n) {
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(1)) + ' ' + units[i];
  }
  function formatRate(bytesPerSecond) { return formatBytes(bytesPerSecond) + '/s'; }
  function formatAge(ms) {
    var s = Math.floor(ms / 1000);
    if (s < 60) return s + 's';
    var m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + (s % 60) + 's';
    var h = Math.floor(m / 60);
    if (h < 48) return h + 'h ' + (m % 60) + 'm';
    return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
  }

  function cell(tr, text, className) {
    var td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }
  function fill(tableId, rows, build) {
    var body = byId(tableId).querySelector('tbody');
    var fresh = document.createElement('tbody');
    rows.forEach(function (row) { fresh.appendChild(build(row)); });
    body.replaceWith(fresh);
    byId(tableId).hidden = rows.length === 0;
    byId(tableId + '-empty').hidden = rows.length !== 0;
  }

  function setState(text, className) {
    var state = byId('state');
    state.textContent = text;
    state.className = 'state ' + (className || '');
  }

  function showLogin(message) {
    if (timer) { clearTimeout(timer); timer = null; }
    previous = null;
    byId('status').hidden = true;
    byId('signout').hidden = true;
    byId('login').hidden = false;
    byId('login-error').textContent = message || '';
    setState('not signed in');
    byId('token').focus();
  }

  function showStatus() {
    byId('login').hidden = true;
    byId('status').hidden = false;
    byId('signout').hidden = false;
    refresh();
  }

  function AuthError() {}

  function getJson(path) {
    return fetch(path, { headers: { Authorization: 'Bearer ' + token() }, cache: 'no-store' }).then(
      function (res) {
        if (res.status === 401) throw new AuthError();
        if (!res.ok) throw new Error('HTTP ' + res.status + ' from ' + path);
        return res.json();
      },
    );
  }

  function refresh() {
    timer = null;
    Promise.all([getJson('/api/clients'), getJson('/api/connections')]).then(
      function (results) {
        render(results[0].clients, results[1].connections);
        timer = setTimeout(refresh, POLL_MS);
      },
      function (err) {
        if (err instanceof AuthError) {
          sessionStorage.removeItem(KEY);
          showLogin('That token was refused. Check the server\\'s [admin] token_file.');
          return;
        }
        setState('cannot reach the server: ' + err.message, 'down');
        timer = setTimeout(refresh, POLL_MS);
      },
    );
  }

  function render(clients, connections) {
    var now = Date.now();
    var proxies = [];
    clients.forEach(function (c) { c.proxies.forEach(function (p) { proxies.push(p); }); });

    var rates = {};
    var totalRate = 0;
    var counts = {};
    proxies.forEach(function (p) {
      var key = p.client + '/' + p.name;
      var moved = p.bytes_in + p.bytes_out;
      counts[key] = moved;
      var before = previous ? previous.counts[key] : undefined;
      if (before !== undefined && now > previous.at) {
        var rate = Math.max(0, (moved - before) * 1000 / (now - previous.at));
        rates[key] = rate;
        totalRate += rate;
      }
    });
    previous = { at: now, counts: counts };

    byId('count-clients').textContent = String(clients.length);
    byId('count-proxies').textContent = String(proxies.length);
    byId('count-connections').textContent = String(connections.length);
    byId('throughput').textContent = formatRate(totalRate);

    fill('clients', clients, function (c) {
      var tr = document.createElement('tr');
      tr.dataset.client = c.name;
      cell(tr, c.name, 'name');
      cell(tr, c.remote_addr, 'addr');
      var connected = cell(tr, formatAge(now - Date.parse(c.connected_at)) + ' ago');
      connected.title = c.connected_at;
      cell(tr, c.client_version);
      cell(tr, c.proxies.map(function (p) { return p.name; }).join(', ') || '(none)');
      return tr;
    });
    fill('proxies', proxies, function (p) {
      var key = p.client + '/' + p.name;
      var tr = document.createElement('tr');
      tr.dataset.proxy = key;
      cell(tr, p.client);
      // Facts about how it is served, beside its name: few proxies have any.
      var facts = [];
      if (p.group) facts.push('group ' + p.group);
      if (p.compression) facts.push('compressed');
      cell(tr, facts.length ? p.name + ' (' + facts.join(', ') + ')' : p.name, 'name');
      cell(tr, p.type);
      // A routed proxy's names, then the port they are asked for on.
      cell(tr, p.hosts && p.hosts.length ? p.hosts.join(', ') + ' via ' + p.public_addr : p.public_addr, 'addr');
      cell(tr, String(p.open_connections), 'num open');
      cell(tr, String(p.connections_total), 'num total');
      cell(tr, formatBytes(p.bytes_in), 'num bytes-in').title = p.bytes_in + ' bytes';
      cell(tr, formatBytes(p.bytes_out), 'num bytes-out').title = p.bytes_out + ' bytes';
      cell(tr, rates[key] === undefined ? '-' : formatRate(rates[key]), 'num rate');
      return tr;
    });
    fill('connections', connections, function (c) {
      var tr = document.createElement('tr');
      tr.dataset.conn = String(c.conn);
      cell(tr, c.conn === null ? '-' : String(c.conn), 'num');
      cell(tr, c.client);
      cell(tr, c.proxy);
      cell(tr, c.remote_addr, 'addr');
      cell(tr, formatAge(c.age_ms), 'num');
      cell(tr, formatBytes(c.bytes_in), 'num bytes-in');
      cell(tr, formatBytes(c.bytes_out), 'num bytes-out');
      return tr;
    });
    setState('live, updated ' + new Date(now).toLocaleTimeString(), 'live');
  }

  document.addEventListener('DOMContentLoaded', function () {
    byId('login').addEventListener('submit', function (event) {
      event.preventDefault();
      var value = byId('token').value.trim();
      if (!value) return;
      sessionStorage.setItem(KEY, value);
      byId('token').value = '';
      showStatus();
    });
    byId('signout').addEventListener('click', function () {
      sessionStorage.removeItem(KEY);
      showLogin('');
    });
    if (token()) showStatus();
    else showLogin('');
  });
})();
`;

/** A porthole: a ring with a bolt at each quarter. */
export const STATUS_PAGE_ICON = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">
<circle cx="16" cy="16" r="12" fill="#9fc3ff" stroke="#1d2330" stroke-width="5"/>
<circle cx="16" cy="3.5" r="1.6" fill="#fff"/><circle cx="16" cy="28.5" r="1.6" fill="#fff"/>
<circle cx="3.5" cy="16" r="1.6" fill="#fff"/><circle cx="28.5" cy="16" r="1.6" fill="#fff"/>
</svg>
`;
