export { PortholeClient, type RunOutcome } from './client.js';
export { ClientAdmin } from './client-admin.js';
export { type ClientConfig, type ClientFlags, loadClientConfig, type ProxyConfig } from './config.js';
export { DialError, dial } from './dialer.js';
export { serveStream } from './local-connector.js';
export { Backoff } from './reconnect.js';
export { diffProxies, needsReconnect } from './reload.js';
export { type ClientStatus, SessionStatus } from './session-status.js';
export { formatStatus } from './status-command.js';
