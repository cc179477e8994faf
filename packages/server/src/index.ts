export { FailureLimiter, UpgradeAuthenticator } from './auth.js';
export { ClientSession } from './client-session.js';
export { loadServerConfig, type ServerConfig } from './config.js';
export { ControlEndpoint } from './control-endpoint.js';
export { PortholeServer } from './server.js';
export { TcpProxyListener } from './tcp-proxy-listener.js';
