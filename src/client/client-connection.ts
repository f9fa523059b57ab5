import type { Socket } from "node:net";
import type { TunnelStream } from "../mux/tunnel-stream.js";

/**
 * The control connection as client events carry it (`clientConnection`): the Socket itself. W3P
 * passed an object holding that socket (`.socket`) and the service sockets by stream id
 * (`.destinationSockets`); both can be read on ours too, so code written for W3P keeps working.
 */
export type ClientConnection = Socket & {
  /** The connection itself (W3P's `clientConnection.socket`). */
  readonly socket: Socket;
  /** Local service sockets of the open streams, by stream id (a fresh snapshot at each read). */
  readonly destinationSockets: Map<number, Socket>;
};

/** Adds W3P's two read-only views to a control socket (not enumerable: logs stay unchanged). */
export function asClientConnection(
  socket: Socket,
  streams: ReadonlyMap<number, TunnelStream>,
): ClientConnection {
  Object.defineProperties(socket, {
    socket: { value: socket, enumerable: false, configurable: true },
    destinationSockets: {
      enumerable: false,
      configurable: true,
      get: () => {
        const sockets = new Map<number, Socket>();
        for (const [id, stream] of streams) sockets.set(id, stream.socket);
        return sockets;
      },
    },
  });
  return socket as ClientConnection;
}
