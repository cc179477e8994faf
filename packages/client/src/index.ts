export { PortholeClient, type RunOutcome } from './client.js';
export { type ClientConfig, type ClientFlags, loadClientConfig, type ProxyConfig } from './config.js';
export { DialError, dial } from './dialer.js';
export { serveStream } from './local-connector.js';
export { Backoff } from './reconnect.js';
