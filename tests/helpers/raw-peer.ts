/**
 * Raw W3P peers for hostile-input tests: a socket that speaks (or mangles) the wire protocol by
 * hand against a TunnelServer, and an "evil server" that answers a TunnelClient with whatever a
 * test wants. Everything registers its cleanup with the test context.
 */
import net, { type Socket } from "node:net";
import type { TestContext } from "node:test";
import type { TunnelClient } from "../../src/client/tunnel-client.js";
import { ErrorCodes, type TunnelError } from "../../src/errors.js";
import type { ServerEvents } from "../../src/events.js";
import type { TunnelClientOptions } from "../../src/options.js";
import { ALL_EXTENSIONS, FrameType, MAGIC } from "../../src/protocol/constants.js";
import { encodeFrame, encodeHandshake } from "../../src/protocol/encode.js";
import type { TunnelServer } from "../../src/server/tunnel-server.js";
import { closed, closeServer, connect, listen, onceWithin, trackSockets, WAIT_MS } from "./net.js";
import { makeClient } from "./ops.js";

export { encodeFrame, encodeHandshake, MAGIC };

/** Every code a TunnelError may carry: what "only coded errors" checks against. */
export const KNOWN_CODES: ReadonlySet<string> = new Set(Object.values(ErrorCodes));

/** `u32` big-endian, for hand-made length prefixes. */
export function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value >>> 0, 0);
  return out;
}

/** A frame whose length prefix says `length` whatever follows (for lies about the size). */
export function framePrefix(length: number, streamId = 1, type = 1): Buffer {
  return Buffer.concat([u32(length), u32(streamId), Buffer.from([type])]);
}

/** The handshake an extension client sends: credentials plus a `w3p` block. */
export function extensionHandshake(
  credentials: Record<string, unknown> = {},
  ext: readonly string[] = ALL_EXTENSIONS,
): Buffer {
  return encodeHandshake({ ...credentials, w3p: { v: 2, ext, win: 262144 } });
}

/** A raw TCP connection whose errors are swallowed (the peer resetting us is expected). */
export async function rawConnect(
  t: TestContext,
  port: number,
  options: Partial<net.TcpNetConnectOpts> = {},
): Promise<Socket> {
  const socket = net.connect({ host: "127.0.0.1", port, ...options });
  socket.on("error", () => {});
  t.after(() => socket.destroy());
  await onceWithin(socket, "connect");
  return socket;
}

/** Resolves with how long `socket` took to close (see `closed`). */
export const closedWithin = closed;

/**
 * Reads one handshake message (`MAGIC + u32 length + JSON`) from a socket; resolves with the
 * parsed JSON and whatever bytes came after it. Rejects if the magic is wrong or the socket closes.
 */
export function readHandshake(
  socket: Socket,
  ms = WAIT_MS,
): Promise<{ message: Record<string, unknown>; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buffered = Buffer.alloc(0);
    const timer = setTimeout(() => finish(new Error("readHandshake timed out")), ms);
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (buffered.length < MAGIC.length + 4) return;
      if (!buffered.subarray(0, MAGIC.length).equals(MAGIC)) {
        finish(new Error("readHandshake: bad magic"));
        return;
      }
      const length = buffered.readUInt32BE(MAGIC.length);
      const end = MAGIC.length + 4 + length;
      if (buffered.length < end) return;
      try {
        const message = JSON.parse(buffered.subarray(MAGIC.length + 4, end).toString("utf8"));
        finish(null, { message, rest: buffered.subarray(end) });
      } catch (err) {
        finish(err as Error);
      }
    };
    const onClose = () => finish(new Error("readHandshake: closed before a full handshake"));
    const finish = (
      err: Error | null,
      value?: { message: Record<string, unknown>; rest: Buffer },
    ) => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("close", onClose);
      if (err) reject(err);
      else resolve(value!);
    };
    socket.on("data", onData);
    socket.on("close", onClose);
  });
}

export interface RawSession {
  socket: Socket;
  /** The server's ack, parsed. */
  ack: Record<string, unknown>;
  publicPort: number;
}

/**
 * A raw client that completes the handshake (v1 when `ext` is null) and then does whatever the
 * test makes it do. It never answers pings on its own.
 */
export async function rawSession(
  t: TestContext,
  controlPort: number,
  ext: readonly string[] | null = null,
  credentials: Record<string, unknown> = { id: "raw" },
  connectOptions: Partial<net.TcpNetConnectOpts> = {},
): Promise<RawSession> {
  const socket = await rawConnect(t, controlPort, connectOptions);
  const acked = readHandshake(socket);
  socket.write(ext ? extensionHandshake(credentials, ext) : encodeHandshake(credentials));
  const { message } = await acked;
  return { socket, ack: message, publicPort: message.port as number };
}

type ErrorEvent = "client-error" | "tunnel-error";

/**
 * Waits for the server's coded error about the control connection `socket` (matched by its
 * local port, which is the server's view of the remote port). Start waiting before provoking it.
 */
export function serverErrorFor(
  server: TunnelServer,
  socket: Socket,
  events: readonly ErrorEvent[] = ["client-error", "tunnel-error"],
  ms = WAIT_MS,
): Promise<TunnelError> {
  return new Promise((resolve, reject) => {
    const listeners: Array<[ErrorEvent, (payload: ServerEvents[ErrorEvent]) => void]> = [];
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no ${events.join("/")} for port ${socket.localPort} within ${ms} ms`));
    }, ms);
    const cleanup = () => {
      clearTimeout(timer);
      for (const [event, listener] of listeners) server.events.off(event, listener);
    };
    for (const event of events) {
      const listener = ({ clientTunnel, err }: ServerEvents[ErrorEvent]) => {
        if (clientTunnel.remotePort !== socket.localPort) return;
        cleanup();
        resolve(err);
      };
      listeners.push([event, listener]);
      server.events.on(event, listener);
    }
  });
}

/** Waits for `connection-rejected` from `localAddress` (a loopback alias keeps tests apart). */
export function rejectionFrom(
  server: TunnelServer,
  predicate: (payload: ServerEvents["connection-rejected"]) => boolean,
  ms = WAIT_MS,
): Promise<ServerEvents["connection-rejected"]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      server.events.off("connection-rejected", listener);
      reject(new Error(`no matching connection-rejected within ${ms} ms`));
    }, ms);
    const listener = (payload: ServerEvents["connection-rejected"]) => {
      if (!predicate(payload)) return;
      clearTimeout(timer);
      server.events.off("connection-rejected", listener);
      resolve(payload);
    };
    server.events.on("connection-rejected", listener);
  });
}

/**
 * A raw TCP server on an ephemeral port (no half-open: a peer's FIN closes the socket, so tests
 * can wait for 'close'). `onConnection` plays the evil server.
 */
export async function evilServer(
  t: TestContext,
  onConnection: (socket: Socket) => void,
): Promise<{ server: net.Server; port: number; sockets: Set<Socket> }> {
  const server = net.createServer((socket) => {
    socket.on("error", () => {});
    onConnection(socket);
  });
  const sockets = trackSockets(server);
  const port = await listen(server);
  t.after(() => closeServer(server, sockets));
  return { server, port, sockets };
}

/**
 * An evil server that reads each client's handshake and hands it to `reply`, which answers as the
 * test needs; a connection that never sends a whole handshake is destroyed. `accepted` holds
 * every connection in arrival order.
 */
export async function answeringServer(
  t: TestContext,
  reply: (socket: Socket, handshake: Record<string, unknown>, rest: Buffer) => void,
): Promise<{ server: net.Server; port: number; accepted: Socket[] }> {
  const accepted: Socket[] = [];
  const { server, port } = await evilServer(t, (socket) => {
    accepted.push(socket);
    readHandshake(socket)
      .then(({ message, rest }) => reply(socket, message, rest))
      .catch(() => socket.destroy());
  });
  return { server, port, accepted };
}

/**
 * A started TunnelClient that dials a raw server on `serverPort` for one local service on
 * 127.0.0.1; it does not redial within a test, and is stopped after it.
 */
export function clientOfRawServer(
  t: TestContext,
  serverPort: number,
  servicePort: number,
  options: Partial<TunnelClientOptions> = {},
): TunnelClient {
  const client = makeClient(t, serverPort, {
    localServicePort: servicePort,
    reconnectInitialDelayMs: 60_000,
    reconnectMaxDelayMs: 60_000,
    ...options,
  });
  client.start().catch(() => {});
  return client;
}

/**
 * Writes `burst` over `socket` again and again (letting the event loop run between bursts) until
 * the peer's end, `peerSocket` in this process, stops reading, or `maxBytes` are written. Reports
 * the most the peer had queued toward us meanwhile.
 */
export async function floodUntilUnread(
  socket: Socket,
  peerSocket: Socket,
  burst: Buffer,
  maxBytes = 48 << 20,
): Promise<{ stoppedReading: boolean; peakQueued: number; bursts: number }> {
  let peakQueued = 0;
  let bursts = 0;
  while (bursts * burst.length < maxBytes && !peerSocket.isPaused()) {
    socket.write(burst);
    bursts++;
    await new Promise((resolve) => setImmediate(resolve));
    peakQueued = Math.max(peakQueued, peerSocket.writableLength);
  }
  return { stoppedReading: peerSocket.isPaused(), peakQueued, bursts };
}

/**
 * The most a session may queue toward a peer that does not read its answers: four times its write
 * limit (`controlWriteBufferBytes`, never below the socket's highWaterMark) and a read, plus the
 * answers to the rest of the chunk that crossed it.
 */
export function backlogBound(socket: Socket, controlWriteBufferBytes: number): number {
  const writeLimit = Math.max(controlWriteBufferBytes, socket.writableHighWaterMark);
  return 4 * writeLimit + 64 * 1024 + 64 * 1024;
}

/** True when nothing listens on `port` any more (a connection attempt is refused). */
export function portRefuses(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.once("connect", () => {
      // A held port (lease) accepts and then closes at once; that is not "refused".
      socket.destroy();
      resolve(false);
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code === "ECONNREFUSED"));
  });
}

/** Deterministic PRNG (mulberry32): every randomized test prints and reuses its seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** External memory now (ArrayBuffers hold every socket chunk and frame copy). */
export function arrayBufferBytes(): number {
  return process.memoryUsage().arrayBuffers;
}

/** Resolves as `promise` does, or rejects after `ms` (the timer is cleared either way). */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A visitor that reads nothing, and the server's side of it with its stream id. */
export interface StalledVisitor {
  visitor: Socket;
  /** The server's socket of this visitor. */
  accepted: Socket;
  streamId: number;
}

/** Connects a visitor to `publicPort` that reads nothing (paused) until the test resumes it. */
export async function stalledVisitor(
  t: TestContext,
  server: TunnelServer,
  publicPort: number,
): Promise<StalledVisitor> {
  const accepted = onceWithin<{ visitorSocket: Socket; streamId: number }>(
    server.events,
    "visitor-connected",
  );
  const visitor = await connect(t, publicPort);
  visitor.pause();
  const { visitorSocket, streamId } = await accepted;
  return { visitor, accepted: visitorSocket, streamId };
}

/**
 * Writes DATA for `streamId` over `control` until the server cannot hand it to `target` at once
 * (the kernel's buffers toward a reader that does not read are full, and a write stays queued).
 * Returns the payload bytes sent.
 */
export async function fillSocket(
  control: Socket,
  streamId: number,
  target: Socket,
): Promise<number> {
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  let sent = 0;
  while (target.writableLength === 0) {
    control.write(encodeFrame(streamId, FrameType.DATA, chunk));
    sent += chunk.length;
    await new Promise((resolve) => setTimeout(resolve, 1));
    if (sent >= 64 << 20) throw new Error("the socket never filled");
  }
  return sent;
}
