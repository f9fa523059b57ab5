import type { EventEmitter } from "node:events";
import type { AddressInfo, Socket } from "node:net";
import type { ClientConnection } from "./client/client-connection.js";
import { debug } from "./debug.js";
import { ErrorCodes, TunnelError } from "./errors.js";
import type { StreamMeta } from "./mux/stream-meta.js";
import type { ClientTunnel } from "./server/client-tunnel.js";

/**
 * Payload of each TunnelServer event (`undefined` = the event has no payload). A type, not an
 * interface: it satisfies `Record<string, unknown>`, as W3P's event maps did.
 */
export type ServerEvents = {
  "main-server-start": { port: number; secure: boolean };
  "main-server-error": { err: TunnelError };
  "main-server-end": undefined;
  "client-connected": { clientTunnel: ClientTunnel };
  "client-protocol-confirmed": { clientTunnel: ClientTunnel };
  "client-authentication-failed": { clientTunnel: ClientTunnel; err: TunnelError };
  "client-error": { clientTunnel: ClientTunnel; err: TunnelError };
  "client-disconnected": { clientTunnel: ClientTunnel };
  "tunnel-created": {
    clientTunnel: ClientTunnel;
    clientAuthenticationCredentials: Record<string, unknown>;
    secure: boolean;
  };
  "tunnel-error": { clientTunnel: ClientTunnel; err: TunnelError };
  "tunnel-destroyed": { clientTunnel: ClientTunnel };
  "visitor-connected": {
    clientTunnel: ClientTunnel;
    visitorSocket: Socket;
    streamId: number;
    service: string;
  };
  "visitor-disconnected": {
    clientTunnel: ClientTunnel;
    visitorSocket: Socket;
    streamId: number;
    service: string;
  };
  "visitor-error": {
    clientTunnel: ClientTunnel;
    visitorSocket: Socket;
    err: TunnelError;
    streamId: number;
    service: string;
  };
  /** A visitor was turned away (stream limit, rate limit, port held for a lease). */
  "visitor-rejected": {
    clientTunnel: ClientTunnel | null;
    visitorSocket: Socket;
    err: TunnelError;
  };
  "data-from-visitor": { clientTunnel: ClientTunnel; visitorSocket: Socket; data: Buffer };
  "data-to-visitor": { clientTunnel: ClientTunnel; visitorSocket: Socket; data: Buffer };
  /** A control connection was dropped before it got a ClientTunnel (limits, throttling). */
  "connection-rejected": { remoteAddress: string; remotePort: number; err: TunnelError };
  /** The TLS handshake on the control port failed. */
  "client-tls-error": { remoteAddress: string; remotePort: number; err: TunnelError };
  /** A heartbeat round trip to a client completed. */
  heartbeat: { clientTunnel: ClientTunnel; rttMs: number };
  error: { err: TunnelError };
};

/** Payload of each TunnelClient event (`undefined` = the event has no payload). */
export type ClientEvents = {
  "tunnel-connection-established": { clientConnection: ClientConnection };
  "authentication-credentials-sent": {
    clientConnection: ClientConnection;
    authenticationCredentials: Record<string, unknown>;
  };
  "tunnel-protocol-confirmed": { clientConnection: ClientConnection };
  "authentication-acknowledged": {
    clientConnection: ClientConnection;
    assignedPort: number;
    /** Public port of every service (one entry for the single-service form). */
    services: { name: string; port: number }[];
  };
  /** The server refused the credentials (or the requested ports); the client backs off. */
  "authentication-rejected": {
    clientConnection: ClientConnection;
    err: TunnelError;
    retryAfterMs: number | null;
  };
  "tunnel-error": { clientConnection: ClientConnection; err: TunnelError };
  "tunnel-disconnected": { clientConnection: ClientConnection; hadError: boolean };
  "tunnel-reconnect-queued": { timeout: number };
  "tunnel-client-end": undefined;
  "service-connected": {
    serviceSocket: Socket;
    streamId: number;
    service: string;
    /** Who the visitor is (open extension); null behind a v1 server. */
    visitor: StreamMeta | null;
  };
  "service-disconnected": { serviceSocket: Socket; streamId: number; service: string };
  "service-error": { serviceSocket: Socket; err: TunnelError; streamId: number; service: string };
  /** A stream the server opened was refused (stream limit, unknown service): ERROR sent back. */
  "stream-rejected": {
    clientConnection: ClientConnection;
    streamId: number;
    service: string;
    err: TunnelError;
  };
  "data-to-service": { clientConnection: ClientConnection; data: Buffer };
  "data-from-service": { clientConnection: ClientConnection; data: Buffer };
  /** The server said it is going away (stopping); the client will reconnect. */
  "server-going-away": { clientConnection: ClientConnection; err: TunnelError };
  heartbeat: { clientConnection: ClientConnection; rttMs: number };
  error: { err: TunnelError };
};

/**
 * Node's EventEmitter type map: each event's listener arguments as a tuple. An event without a
 * payload takes none, or an explicit `undefined` (`emit("main-server-end", undefined)`, as W3P).
 */
export type EventArgs<Events> = {
  [K in keyof Events]: Events[K] extends undefined ? [payload?: undefined] : [Events[K]];
};

type EventName<Events> = Extract<keyof Events, string>;
/** Events whose payload is `undefined`: they may be emitted without one. */
type PayloadlessName<Events> = {
  [K in EventName<Events>]: Events[K] extends undefined ? K : never;
}[EventName<Events>];

/**
 * An EventEmitter whose methods know each event's name and payload: a wrong name or payload does
 * not compile. Every method takes the payload as `Events[K]` for a type parameter `K`, the shape
 * W3P's `TypeSafeEventEmitter` had, so code generic over the event name (a helper forwarding any
 * event) compiles against it as it did there.
 */
export interface TypedEventEmitter<Events> extends EventEmitter {
  on<K extends EventName<Events>>(eventName: K, listener: (payload: Events[K]) => void): this;
  once<K extends EventName<Events>>(eventName: K, listener: (payload: Events[K]) => void): this;
  off<K extends EventName<Events>>(eventName: K, listener: (payload: Events[K]) => void): this;
  addListener<K extends EventName<Events>>(
    eventName: K,
    listener: (payload: Events[K]) => void,
  ): this;
  removeListener<K extends EventName<Events>>(
    eventName: K,
    listener: (payload: Events[K]) => void,
  ): this;
  prependListener<K extends EventName<Events>>(
    eventName: K,
    listener: (payload: Events[K]) => void,
  ): this;
  prependOnceListener<K extends EventName<Events>>(
    eventName: K,
    listener: (payload: Events[K]) => void,
  ): this;
  removeAllListeners(eventName?: EventName<Events>): this;
  emit<K extends EventName<Events>>(eventName: K, payload: Events[K]): boolean;
  emit(eventName: PayloadlessName<Events>): boolean;
  listenerCount(
    eventName: EventName<Events>,
    listener?: (payload: Events[EventName<Events>]) => void,
  ): number;
  // biome-ignore lint/complexity/noBannedTypes: the return type of Node's own `listeners`
  listeners(eventName: EventName<Events>): Function[];
  // biome-ignore lint/complexity/noBannedTypes: the return type of Node's own `rawListeners`
  rawListeners(eventName: EventName<Events>): Function[];
}

export type ServerEventEmitter = TypedEventEmitter<ServerEvents>;
export type ClientEventEmitter = TypedEventEmitter<ClientEvents>;

/**
 * Emits without ever throwing into the library: a listener that throws is reported on `error`
 * (when someone listens) or the debug log, and the connection it was about carries on.
 * The `error` event itself is emitted only when it has a listener, so an unobserved error never
 * crashes the host process.
 */
export function safeEmit<Events>(
  emitter: TypedEventEmitter<Events>,
  event: keyof Events & string,
  ...args: unknown[]
): void {
  const untyped = emitter as unknown as EventEmitter;
  if (untyped.listenerCount(event) === 0) {
    if (event === "error") debug("unobserved error: %o", args[0]);
    return;
  }
  try {
    untyped.emit(event, ...args);
  } catch (thrown) {
    debug("listener for %s threw: %o", event, thrown);
    if (event !== "error" && untyped.listenerCount("error") > 0) {
      const err = new TunnelError(ErrorCodes.LISTENER_THREW, `a "${event}" listener threw`, {
        cause: thrown,
      });
      try {
        untyped.emit("error", { err });
      } catch (again) {
        debug("error listener threw: %o", again);
      }
    }
  }
}

export function hasListeners(emitter: EventEmitter<never> | EventEmitter, event: string): boolean {
  return (emitter as EventEmitter).listenerCount(event) > 0;
}

export type { AddressInfo };
