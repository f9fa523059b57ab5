import net, { type AddressInfo, type Server } from "node:net";
import type { TlsOptions } from "node:tls";
import { ErrorCodes, TunnelError, toTunnelError } from "../errors.js";
import { tlsModule } from "../lazy-builtins.js";

/** Creates a public listener whose sockets are handed to `onVisitor` (after TLS, if any). */
export function createPublicServer(
  tlsOptions: TlsOptions | false,
  onVisitor: (socket: net.Socket) => void,
): Server {
  if (tlsOptions) {
    // No allowHalfOpen on the listener: with it, a visitor that gives up during the TLS handshake
    // is not noticed until the handshake timeout. Streams that negotiated half-close set it on
    // their socket once it is accepted (ClientTunnel.acceptVisitor).
    const server = tlsModule().createServer(tlsOptions, onVisitor);
    // A visitor whose TLS handshake fails never becomes a stream. Node leaves the socket open
    // after some failures (the handshake timeout among them), so close it here.
    server.on("tlsClientError", (_err, socket) => socket.destroy());
    return server;
  }
  return net.createServer({ allowHalfOpen: true, noDelay: true }, onVisitor);
}

/** Listens on `port` (0 = any); rejects with a coded error instead of emitting 'error'. */
export function listen(
  server: Server,
  port: number,
  host: string | undefined,
): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      server.off("listening", onListening);
      const code =
        err.code === "EADDRINUSE" || err.code === "EACCES"
          ? ErrorCodes.PORT_UNAVAILABLE
          : ErrorCodes.LISTEN_FAILED;
      reject(toTunnelError(err, code, `cannot listen on ${host ?? "*"}:${port}`));
    };
    const onListening = () => {
      server.off("error", onError);
      resolve(server.address() as AddressInfo);
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen({ port, host, exclusive: true });
  });
}

export function inRanges(port: number, ranges: ReadonlyArray<[number, number]>): boolean {
  return ranges.some(([low, high]) => port >= low && port <= high);
}

/**
 * Binds a public listener: on `requested` when given (it must lie in `ranges`, if any), else on
 * a free port of `ranges` (tried from a random point, so clients spread out), else on any port.
 */
/** Why a port asked for by number cannot be had (outside the ranges, held), or null. */
export function requestedPortRefusal(
  requested: number,
  ranges: ReadonlyArray<[number, number]> | null,
  isHeld: (port: number) => boolean,
): TunnelError | null {
  if (ranges && !inRanges(requested, ranges)) {
    return new TunnelError(
      ErrorCodes.PORT_NOT_ALLOWED,
      `port ${requested} is outside the allowed ranges`,
    );
  }
  if (isHeld(requested)) {
    return new TunnelError(
      ErrorCodes.PORT_UNAVAILABLE,
      `port ${requested} is held by another client`,
    );
  }
  return null;
}

export async function bindPublicPort(
  server: Server,
  host: string | undefined,
  ranges: ReadonlyArray<[number, number]> | null,
  requested: number | undefined,
  isHeld: (port: number) => boolean,
): Promise<AddressInfo> {
  if (requested) {
    const refusal = requestedPortRefusal(requested, ranges, isHeld);
    if (refusal) throw refusal;
    return listen(server, requested, host);
  }
  if (!ranges) return listen(server, 0, host);
  const candidates: number[] = [];
  for (const [low, high] of ranges) for (let p = low; p <= high; p++) candidates.push(p);
  const start = Math.floor(Math.random() * candidates.length);
  for (let i = 0; i < candidates.length; i++) {
    const port = candidates[(start + i) % candidates.length]!;
    if (isHeld(port)) continue;
    try {
      return await listen(server, port, host);
    } catch (err) {
      if ((err as TunnelError).code !== ErrorCodes.PORT_UNAVAILABLE) throw err;
    }
  }
  throw new TunnelError(ErrorCodes.PORT_UNAVAILABLE, "no port of the allowed ranges is free");
}

/** Closes a listener; resolves when it is closed (already-closed counts as closed). */
export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      resolve();
      return;
    }
    server.close(() => resolve());
  });
}
