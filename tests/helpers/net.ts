/**
 * Test helpers: ephemeral listeners, local services, raw sockets and event waits. Every helper
 * registers its own cleanup with the test context so a failing test still leaves nothing open.
 */
import { createHash } from "node:crypto";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import net, { type AddressInfo, type Server, type Socket } from "node:net";
import type { TestContext } from "node:test";
import tls from "node:tls";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import type { TunnelClientOptions, TunnelServerOptions } from "../../src/options.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";

const certDir = new URL("../../certs/", import.meta.url);
export const CERT = readFileSync(new URL("localhost.crt", certDir));
export const KEY = readFileSync(new URL("localhost.key", certDir));

/** Generous bound for "it happens"; tests never wait on sleeps. */
export const WAIT_MS = 10_000;

type Cleanup = () => unknown;

/** Registers cleanups that run in reverse order after the test, whatever its outcome. */
export function cleanupStack(t: TestContext): (fn: Cleanup) => void {
  const fns: Cleanup[] = [];
  t.after(async () => {
    for (const fn of fns.reverse()) {
      try {
        await fn();
      } catch {
        // cleanup is best effort
      }
    }
  });
  return (fn) => {
    fns.push(fn);
  };
}

/** Waits for one emission of `event` (resolving with its first argument) or fails after `ms`. */
export async function onceWithin<T = unknown>(
  emitter: NodeJS.EventEmitter,
  event: string,
  ms = WAIT_MS,
): Promise<T> {
  const [value] = await once(emitter, event, { signal: AbortSignal.timeout(ms) });
  return value as T;
}

/** Rejects if `promise` has not settled within `ms` (so a hang fails instead of stalling CI). */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `predicate` on each event-loop turn (setImmediate), failing after `ms`. */
export async function until(
  predicate: () => boolean,
  ms = WAIT_MS,
  what = "condition",
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

export async function listen(server: Server, host = "127.0.0.1"): Promise<number> {
  server.listen(0, host);
  await once(server, "listening");
  return (server.address() as AddressInfo).port;
}

/** Tracks every socket a server accepts so cleanup can destroy them. */
export function trackSockets(server: Server): Set<Socket> {
  const sockets = new Set<Socket>();
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  return sockets;
}

export async function closeServer(server: Server, sockets?: Set<Socket>): Promise<void> {
  for (const socket of sockets ?? []) socket.destroy();
  if (!server.listening) return;
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

export interface LocalService {
  server: Server;
  port: number;
  sockets: Set<Socket>;
  close(): Promise<void>;
}

/** A TCP service on an ephemeral port; `onConnection` decides what it does. */
export async function startService(
  t: TestContext,
  onConnection: (socket: Socket) => void,
  host = "127.0.0.1",
): Promise<LocalService> {
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.on("error", () => {});
    onConnection(socket);
  });
  const sockets = trackSockets(server);
  const port = await listen(server, host);
  const service = { server, port, sockets, close: () => closeServer(server, sockets) };
  t.after(() => service.close());
  return service;
}

/**
 * A service that never ends its side (a half-closed connection stays open) and records, in the
 * order connections arrived, the text each one received.
 */
export async function recordingService(
  t: TestContext,
): Promise<LocalService & { received: string[] }> {
  const received: string[] = [];
  const service = await startService(t, (socket) => {
    const index = received.push("") - 1;
    socket.on("data", (chunk: Buffer) => {
      received[index] += chunk.toString();
    });
  });
  return { ...service, received };
}

/** Echoes everything back and ends when the peer ends. */
export function echoService(t: TestContext, host = "127.0.0.1"): Promise<LocalService> {
  return startService(t, (socket) => socket.pipe(socket), host);
}

export interface TunnelPair {
  server: TunnelServer;
  client: TunnelClient;
  controlPort: number;
  publicPort: number;
}

/** A TunnelServer and a TunnelClient on loopback, both stopped after the test. */
export async function startTunnel(
  t: TestContext,
  localServicePort: number,
  serverOptions: TunnelServerOptions = {},
  clientOptions: Partial<TunnelClientOptions> = {},
): Promise<TunnelPair> {
  const server = new TunnelServer(serverOptions);
  t.after(() => server.stop());
  const controlPort = await server.start(0, serverOptions.host ?? "127.0.0.1");
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServiceHost: "127.0.0.1",
    localServicePort,
    reconnectInitialDelayMs: 50,
    ...clientOptions,
  } as TunnelClientOptions);
  t.after(() => client.stop());
  const publicPort = await withTimeout(client.start(), WAIT_MS, "the tunnel to come up");
  return { server, client, controlPort, publicPort };
}

/**
 * Opens a plain TCP connection and waits until it is up. Half-open is off by default (as for a
 * typical visitor: the peer's FIN closes it); half-close tests pass `{ allowHalfOpen: true }`.
 */
export async function connect(
  t: TestContext,
  port: number,
  host = "127.0.0.1",
  options: { allowHalfOpen?: boolean } = {},
): Promise<Socket> {
  const socket = net.connect({ port, host, allowHalfOpen: options.allowHalfOpen ?? false });
  // A reset from the tunnel is an outcome tests assert on through 'close', not a crash.
  socket.on("error", () => {});
  t.after(() => socket.destroy());
  await onceWithin(socket, "connect");
  return socket;
}

/**
 * Opens a TLS connection to a port served with the test certificate (`certs/localhost.*`) and
 * waits until its handshake is done; `options` override the defaults (another CA, half-open).
 */
export async function tlsConnect(
  t: TestContext,
  port: number,
  options: tls.ConnectionOptions = {},
): Promise<tls.TLSSocket> {
  const socket = tls.connect({
    host: "127.0.0.1",
    port,
    ca: CERT,
    servername: "localhost",
    ...options,
  });
  socket.on("error", () => {});
  t.after(() => socket.destroy());
  await onceWithin(socket, "secureConnect");
  return socket;
}

/** A connected pair on loopback: `accepted` is the server side, `dialer` the client side. */
export async function socketPair(t: TestContext): Promise<{ accepted: Socket; dialer: Socket }> {
  const server = net.createServer();
  const sockets = trackSockets(server);
  const port = await listen(server);
  t.after(() => closeServer(server, sockets));
  const accepted = once(server, "connection");
  const dialer = await connect(t, port);
  const [socket] = (await accepted) as [Socket];
  socket.on("error", () => {});
  return { accepted: socket, dialer };
}

/** Collects everything a socket sends until it ends or closes. */
export function readAll(socket: Socket, ms = WAIT_MS): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => reject(new Error("readAll timed out")), ms);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    const finish = () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    };
    socket.once("end", finish);
    socket.once("close", finish);
  });
}

/** Reads until at least `n` bytes arrived (or fails after `ms`); returns exactly what came. */
export function readBytes(socket: Socket, n: number, ms = WAIT_MS): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`readBytes: got ${length} of ${n} bytes`));
    }, ms);
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      length += chunk.length;
      if (length >= n) {
        cleanup();
        resolve(Buffer.concat(chunks));
      }
    };
    const onClose = () => {
      cleanup();
      reject(new Error(`readBytes: closed after ${length} of ${n} bytes`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("close", onClose);
    };
    socket.on("data", onData);
    socket.on("close", onClose);
  });
}

/**
 * Resolves when the socket is fully closed (at once if it already is) with the ms that took, or
 * rejects after `ms`.
 */
export function closed(socket: Socket, ms = WAIT_MS): Promise<number> {
  const startedAt = Date.now();
  if (socket.closed) return Promise.resolve(0);
  // Not events.once: that rejects on 'error', and a reset is one of the ways to close.
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off("close", onClose);
      reject(new Error(`socket still open after ${ms} ms`));
    }, ms);
    const onClose = () => {
      clearTimeout(timer);
      resolve(Date.now() - startedAt);
    };
    socket.once("close", onClose);
  });
}

export function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Deterministic pseudo-random bytes (xorshift), so failures reproduce. */
export function pseudoRandomBytes(length: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
