/**
 * Every error this library reports is a `TunnelError` with a stable `code`. Match on `code`, never
 * on the message text: messages may be reworded, codes are part of the public API.
 */
export const ErrorCodes = {
  /** The first bytes of a connection were not the `W3PTUNL` magic. */
  BAD_MAGIC: "W3P_ERR_BAD_MAGIC",
  /** TLS bytes on a plain port, or plain bytes where TLS was expected. */
  TLS_MISMATCH: "W3P_ERR_TLS_MISMATCH",
  /** The TLS handshake on the control connection failed (bad certificate, protocol, reset). */
  TLS_HANDSHAKE: "W3P_ERR_TLS_HANDSHAKE",
  /** A frame announced a length above `maxFrameBytes`. */
  FRAME_TOO_LARGE: "W3P_ERR_FRAME_TOO_LARGE",
  /** A handshake announced a length above `maxHandshakeBytes`. */
  HANDSHAKE_TOO_LARGE: "W3P_ERR_HANDSHAKE_TOO_LARGE",
  /** The handshake body was not a JSON object (or the ack had no valid port). */
  BAD_HANDSHAKE: "W3P_ERR_BAD_HANDSHAKE",
  /** Handshake and filter decision (client: the ack) not done within `handshakeTimeoutMs`. */
  HANDSHAKE_TIMEOUT: "W3P_ERR_HANDSHAKE_TIMEOUT",
  /** A frame body too short for its type, or a payload of the wrong size. */
  MALFORMED_FRAME: "W3P_ERR_MALFORMED_FRAME",
  /** A frame type this session did not negotiate. */
  UNKNOWN_FRAME_TYPE: "W3P_ERR_UNKNOWN_FRAME_TYPE",
  /** Bytes arrived before the handshake was answered, where the protocol allows none. */
  UNEXPECTED_FRAME: "W3P_ERR_UNEXPECTED_FRAME",
  /** The server's `connectionFilter` refused the credentials (or threw / rejected). */
  AUTH_REJECTED: "W3P_ERR_AUTH_REJECTED",
  /** Too many failed authentications from this address: the attempt was dropped unread. */
  AUTH_THROTTLED: "W3P_ERR_AUTH_THROTTLED",
  /** `maxPendingConnections` unauthenticated connections are already open. */
  TOO_MANY_PENDING: "W3P_ERR_TOO_MANY_PENDING",
  /** `maxClients` tunnels are already connected. */
  TOO_MANY_CLIENTS: "W3P_ERR_TOO_MANY_CLIENTS",
  /** A client asked for more than `maxServicesPerClient` services. */
  TOO_MANY_SERVICES: "W3P_ERR_TOO_MANY_SERVICES",
  /** The client's ports would take the server past `maxPublicPorts` or `maxPublicPortsPerAddress`. */
  TOO_MANY_PORTS: "W3P_ERR_TOO_MANY_PORTS",
  /** The server holds `maxConnections` connections (visitors: all but those kept for clients). */
  TOO_MANY_CONNECTIONS: "W3P_ERR_TOO_MANY_CONNECTIONS",
  /** `maxStreams` streams are already open on this tunnel (or client). */
  TOO_MANY_STREAMS: "W3P_ERR_TOO_MANY_STREAMS",
  /** A peer sent more than its flow-control window allowed. */
  FLOW_VIOLATION: "W3P_ERR_FLOW_VIOLATION",
  /** The peer missed heartbeats for `heartbeatTimeoutMs`, or a write stalled that long. */
  PEER_TIMEOUT: "W3P_ERR_PEER_TIMEOUT",
  /** The peer announced it is going away (server or client stopping). */
  GOING_AWAY: "W3P_ERR_GOING_AWAY",
  /** The connection closed before the handshake completed, or in the middle of a frame. */
  CONNECTION_CLOSED: "W3P_ERR_CONNECTION_CLOSED",
  /** A socket error on the control connection (the original error is `cause`). */
  SOCKET: "W3P_ERR_SOCKET",
  /** The local service refused or failed the connection for a stream. */
  LOCAL_CONNECT_FAILED: "W3P_ERR_LOCAL_CONNECT_FAILED",
  /** The local service did not accept the connection within `localConnectTimeoutMs`. */
  LOCAL_CONNECT_TIMEOUT: "W3P_ERR_LOCAL_CONNECT_TIMEOUT",
  /** A stream saw no traffic for `streamIdleTimeoutMs`. */
  STREAM_IDLE: "W3P_ERR_STREAM_IDLE",
  /** The tunnel's client has not read what the server sent it: new visitors are refused until it has. */
  TUNNEL_BACKLOG: "W3P_ERR_TUNNEL_BACKLOG",
  /** Too many new visitors per second from one address. */
  VISITOR_RATE: "W3P_ERR_VISITOR_RATE",
  /** A listener could not bind (port in use, permission). `cause` holds the system error. */
  LISTEN_FAILED: "W3P_ERR_LISTEN_FAILED",
  /** The requested public port is outside `allowedPorts`. */
  PORT_NOT_ALLOWED: "W3P_ERR_PORT_NOT_ALLOWED",
  /** The requested public port is taken, or no port of the allowed ranges is free. */
  PORT_UNAVAILABLE: "W3P_ERR_PORT_UNAVAILABLE",
  /** A visitor reached a public port held for a client that is away (lease). */
  PORT_HELD: "W3P_ERR_PORT_HELD",
  /** The server opened a stream for a service this client does not have. */
  UNKNOWN_SERVICE: "W3P_ERR_UNKNOWN_SERVICE",
  /** An option had an invalid value. */
  INVALID_OPTION: "W3P_ERR_INVALID_OPTION",
  /** `start()` on a server that is already starting or listening. */
  ALREADY_RUNNING: "W3P_ERR_ALREADY_RUNNING",
  /** The operation was cancelled by `stop()`. */
  STOPPED: "W3P_ERR_STOPPED",
  /** A listener installed by the application threw; the library caught it. */
  LISTENER_THREW: "W3P_ERR_LISTENER_THREW",
} as const;

export type TunnelErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class TunnelError extends Error {
  readonly code: TunnelErrorCode;

  constructor(code: TunnelErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TunnelError";
    this.code = code;
  }
}

/** Wraps anything thrown or emitted by Node into a coded error, keeping the original as `cause`. */
export function toTunnelError(err: unknown, code: TunnelErrorCode, context: string): TunnelError {
  if (err instanceof TunnelError) return err;
  const detail = err instanceof Error ? err.message : String(err);
  return new TunnelError(code, `${context}: ${detail}`, { cause: err });
}

/**
 * A TunnelError without a stack trace, for what a peer can cause at a high rate (a refused
 * visitor or stream, a visitor's socket error): its stack would show only library internals, and
 * capturing one costs about 5 µs, a quarter of the CPU in an open/close flood.
 */
export function stacklessError(
  code: TunnelErrorCode,
  message: string,
  options?: { cause?: unknown },
): TunnelError {
  return withoutStack(() => new TunnelError(code, message, options));
}

/** `toTunnelError` for errors a peer can cause at a high rate (see `stacklessError`). */
export function toStacklessError(
  err: unknown,
  code: TunnelErrorCode,
  context: string,
): TunnelError {
  return withoutStack(() => toTunnelError(err, code, context));
}

/** Runs `make` with stack capture off, for the errors it builds. */
function withoutStack<T>(make: () => T): T {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return make();
  } finally {
    Error.stackTraceLimit = limit;
  }
}
