export { MuxError, type MuxErrorCode } from './errors.js';
export { GoAwayCode, INITIAL_WINDOW } from './frame.js';
export { DEFAULT_MAX_STREAM_WINDOW, Session, type SessionOptions } from './session.js';
export { Stream } from './stream.js';
export { type WebSocketDuplexOptions, type WebSocketLike, webSocketDuplex } from './websocket-duplex.js';
