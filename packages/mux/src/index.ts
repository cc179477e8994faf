export { MuxError, type MuxErrorCode } from './errors.js';
export { GoAwayCode, INITIAL_WINDOW } from './frame.js';
export {
  DEFAULT_MAX_SESSION_WINDOW,
  DEFAULT_MAX_STREAM_WINDOW,
  Session,
  type SessionOptions,
} from './session.js';
export { Stream } from './stream.js';
export { CloseCode } from './websocket-frame.js';
export {
  acceptWebSocket,
  checkUpgradeRequest,
  type OpenWebSocketOptions,
  openWebSocket,
  type UpgradeCheck,
  WebSocketUpgradeError,
  webSocketAccept,
} from './websocket-handshake.js';
export { MAX_FRAME_PAYLOAD, WebSocketStream, type WebSocketStreamOptions } from './websocket-stream.js';
