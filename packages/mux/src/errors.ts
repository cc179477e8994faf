/** Error codes carried by mux errors; callers switch on `err.code`, never on the message. */
export type MuxErrorCode =
  | 'ERR_STREAM_RESET'
  | 'ERR_SESSION_CLOSED'
  | 'ERR_SESSION_GOAWAY'
  | 'ERR_STREAM_OPEN_TIMEOUT'
  | 'ERR_TOO_MANY_STREAMS'
  | 'ERR_MUX_PROTOCOL'
  | 'ERR_KEEPALIVE_TIMEOUT';

export class MuxError extends Error {
  readonly code: MuxErrorCode;
  constructor(code: MuxErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MuxError';
    this.code = code;
  }
}
