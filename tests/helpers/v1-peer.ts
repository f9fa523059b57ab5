/**
 * A minimal W3P v1 peer written from /work/shared/PROTOCOL-v1.md alone, with no code from src/:
 * the "other end" of the compatibility tests. It behaves as a plain v1 implementation would:
 * the client dials its local service on the first frame of an unknown stream id, the server sends
 * visitor bytes as data frames, and both destroy the connection on any frame type outside 1..3.
 * Both record every frame they receive so tests can assert what went over the wire.
 *
 * Backpressure is the sensible v1 kind: a peer whose local socket is full stops reading the whole
 * control connection until it drains (v1 has nothing finer), and local sockets are paused while
 * the control connection is full.
 */
import { EventEmitter, once } from "node:events";
import { readFileSync } from "node:fs";
import net, { type AddressInfo, type Server, type Socket } from "node:net";
import type { TestContext } from "node:test";
import { fileURLToPath } from "node:url";
import { echoService, onceWithin, startTunnel, WAIT_MS } from "./net.js";

export const V1_MAGIC = Buffer.from("W3PTUNL", "ascii");
export const V1_DATA = 0x01;
export const V1_CLOSE = 0x02;
export const V1_ERROR = 0x03;
const V1_TYPES = new Set([V1_DATA, V1_CLOSE, V1_ERROR]);

/** `MAGIC + u32 length + JSON`: the first message each way. */
export function v1Handshake(message: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(message), "utf8");
  const length = Buffer.alloc(4);
  length.writeUInt32BE(json.length, 0);
  return Buffer.concat([V1_MAGIC, length, json]);
}

/** `u32 length + u32 stream id + u8 type + payload`. */
export function v1Frame(streamId: number, type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(9);
  header.writeUInt32BE(5 + payload.length, 0);
  header.writeUInt32BE(streamId, 4);
  header[8] = type;
  return Buffer.concat([header, payload]);
}

export interface RawFrame {
  streamId: number;
  type: number;
  payload: Buffer;
}

/**
 * Incremental reader of one direction: magic, handshake body, then frames. It knows nothing of
 * types; the peers decide what an unknown type means.
 */
export class RawFrameReader {
  private chunks: Buffer[] = [];
  private length = 0;
  private stage: "magic" | "handshake" | "frames" = "magic";
  private failed = false;

  constructor(
    private readonly sink: {
      handshake(body: Buffer): void;
      frame(frame: RawFrame): void;
      badInput(reason: string): void;
    },
  ) {}

  push(chunk: Buffer): void {
    if (this.failed) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
    for (;;) {
      if (this.failed) return;
      if (this.stage === "magic") {
        if (this.length < V1_MAGIC.length) return;
        if (!this.take(V1_MAGIC.length).equals(V1_MAGIC)) {
          this.fail("bad magic");
          return;
        }
        this.stage = "handshake";
        continue;
      }
      if (this.length < 4) return;
      const bodyLength = this.peekU32();
      if (this.length < 4 + bodyLength) return;
      this.take(4);
      const body = this.take(bodyLength);
      if (this.stage === "handshake") {
        this.stage = "frames";
        this.sink.handshake(body);
        continue;
      }
      if (body.length < 5) {
        this.fail("frame body shorter than 5 bytes");
        return;
      }
      this.sink.frame({
        streamId: body.readUInt32BE(0),
        type: body[4]!,
        payload: body.subarray(5),
      });
    }
  }

  private fail(reason: string): void {
    this.failed = true;
    this.chunks = [];
    this.length = 0;
    this.sink.badInput(reason);
  }

  private peekU32(): number {
    if (this.chunks[0]!.length < 4) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!.readUInt32BE(0);
  }

  private take(n: number): Buffer {
    if (this.chunks[0]!.length < n) this.chunks = [Buffer.concat(this.chunks)];
    const first = this.chunks[0]!;
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.length -= n;
    return out;
  }
}

/** What one side of a v1 tunnel saw: every frame, by type, and the out-of-spec ones. */
export interface FrameLog {
  /** Every frame received after the handshake, payload length only. */
  frames: Array<{ streamId: number; type: number; length: number }>;
  /** Types outside 1..3 that arrived (a v1 peer dies on the first). */
  unknownTypes: number[];
}

/**
 * Relays one side's local sockets over the control socket, v1 style. Shared by the raw client
 * and the raw server; `onNewStream` decides what a data frame for an unknown id means.
 */
class V1Relay {
  readonly streams = new Map<number, Socket>();
  private readonly fullLocals = new Set<Socket>();
  private controlFull = false;

  constructor(
    private readonly control: Socket,
    private readonly log: FrameLog,
    private readonly onNewStream: (streamId: number) => Socket | null,
    private readonly emitter: EventEmitter,
  ) {
    control.on("drain", () => {
      this.controlFull = false;
      for (const socket of this.streams.values()) socket.resume();
    });
  }

  /** Maps a local socket to a stream id and relays it: data, close, error. */
  attach(streamId: number, socket: Socket): void {
    this.streams.set(streamId, socket);
    let failed = false;
    socket.on("data", (chunk: Buffer) => {
      if (this.control.destroyed) return;
      if (!this.control.write(v1Frame(streamId, V1_DATA, chunk))) {
        this.controlFull = true;
        for (const local of this.streams.values()) local.pause();
      }
    });
    if (this.controlFull) socket.pause();
    socket.on("drain", () => {
      this.fullLocals.delete(socket);
      if (this.fullLocals.size === 0) this.control.resume();
    });
    socket.on("error", () => {
      failed = true;
    });
    socket.on("close", () => {
      this.releaseLocal(socket);
      if (this.streams.get(streamId) !== socket) return;
      this.streams.delete(streamId);
      if (!this.control.destroyed) {
        this.control.write(v1Frame(streamId, failed ? V1_ERROR : V1_CLOSE));
      }
      this.emitter.emit("stream-closed", streamId);
    });
  }

  frame({ streamId, type, payload }: RawFrame): void {
    this.log.frames.push({ streamId, type, length: payload.length });
    this.emitter.emit("frame", { streamId, type, payload });
    if (!V1_TYPES.has(type)) {
      // A v1 peer knows nothing else: it drops the connection.
      this.log.unknownTypes.push(type);
      this.control.destroy();
      return;
    }
    let socket = this.streams.get(streamId);
    if (type === V1_DATA) {
      if (!socket) {
        socket = this.onNewStream(streamId) ?? undefined;
        if (!socket) return;
        this.attach(streamId, socket);
      }
      // A socket still connecting queues the bytes itself (PROTOCOL-v1 "Flow" 5).
      if (payload.length > 0 && !socket.write(Buffer.from(payload))) {
        this.fullLocals.add(socket);
        this.control.pause();
      }
      return;
    }
    if (!socket) return;
    // close or error: destroy the local socket and forget the mapping, without answering.
    this.streams.delete(streamId);
    this.releaseLocal(socket);
    if (type === V1_CLOSE) socket.end(() => socket.destroy());
    else socket.destroy();
  }

  destroyAll(): void {
    for (const socket of this.streams.values()) socket.destroy();
    this.streams.clear();
  }

  private releaseLocal(socket: Socket): void {
    if (this.fullLocals.delete(socket) && this.fullLocals.size === 0) this.control.resume();
  }
}

export interface V1ClientOptions {
  controlPort: number;
  controlHost?: string;
  servicePort: number;
  serviceHost?: string;
  credentials?: Record<string, unknown>;
}

/** A raw v1 client: the events are `frame` (RawFrame), `stream-opened` and `stream-closed` (id). */
export class RawV1Client extends EventEmitter implements FrameLog {
  readonly socket: Socket;
  readonly frames: FrameLog["frames"] = [];
  readonly unknownTypes: number[] = [];
  /** The ack body, as received. */
  ackBody: Buffer | null = null;
  ack: Record<string, unknown> | null = null;
  port = 0;
  /** Stream ids the client dialled its service for, in order. */
  readonly opened: number[] = [];
  private readonly relay: V1Relay;

  constructor(options: V1ClientOptions) {
    super();
    const socket = net.connect({
      port: options.controlPort,
      host: options.controlHost ?? "127.0.0.1",
    });
    this.socket = socket;
    socket.on("error", () => {});
    this.relay = new V1Relay(
      socket,
      this,
      (streamId) => {
        const local = net.connect({
          port: options.servicePort,
          host: options.serviceHost ?? "127.0.0.1",
        });
        this.opened.push(streamId);
        this.emit("stream-opened", streamId);
        return local;
      },
      this,
    );
    const reader = new RawFrameReader({
      handshake: (body) => {
        this.ackBody = body;
        const ack = JSON.parse(body.toString("utf8")) as Record<string, unknown>;
        this.ack = ack;
        this.port = Number(ack.port);
        this.emit("ack", ack);
      },
      frame: (frame) => this.relay.frame(frame),
      badInput: () => socket.destroy(),
    });
    socket.on("data", (chunk: Buffer) => reader.push(chunk));
    socket.on("close", () => this.relay.destroyAll());
    socket.write(v1Handshake(options.credentials ?? { id: "allowed-client" }));
  }

  get streams(): Map<number, Socket> {
    return this.relay.streams;
  }

  /** Frames of one type received for one stream. */
  count(streamId: number, type: number): number {
    return this.frames.filter((f) => f.streamId === streamId && f.type === type).length;
  }

  close(): void {
    this.socket.destroy();
    this.relay.destroyAll();
  }
}

/** Connects a raw v1 client and waits for the server's ack (fails if the server closes first). */
export async function startV1Client(
  t: TestContext,
  options: V1ClientOptions,
): Promise<RawV1Client> {
  const client = new RawV1Client(options);
  t.after(() => client.close());
  const closedEarly = once(client.socket, "close").then(() => {
    throw new Error("the server closed the v1 client before acknowledging");
  });
  await Promise.race([once(client, "ack", { signal: AbortSignal.timeout(WAIT_MS) }), closedEarly]);
  closedEarly.catch(() => {});
  return client;
}

/** One accepted control connection of the raw v1 server. */
export interface V1ServerTunnel extends FrameLog {
  control: Socket;
  /** The handshake JSON as sent by the client. */
  handshakeBody: Buffer;
  handshake: Record<string, unknown>;
  publicServer: Server;
  publicPort: number;
  visitors: Map<number, Socket>;
  /** Resolves when the control connection closed. */
  closed: Promise<void>;
}

export interface V1ServerOptions {
  /** The v1 connectionFilter: false closes the connection without a word. */
  accept?: (credentials: Record<string, unknown>) => boolean;
}

/**
 * A raw v1 server: checks the magic, reads the handshake, opens a public port, acks, and sends
 * each visitor's bytes as data frames (no empty frame on connect: v1 did not). Emits `tunnel`
 * (V1ServerTunnel) once the ack is sent and `frame` for every frame received.
 */
export class RawV1Server extends EventEmitter {
  readonly tunnels: V1ServerTunnel[] = [];
  controlPort = 0;
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly publicServers = new Set<Server>();

  constructor(private readonly options: V1ServerOptions = {}) {
    super();
    this.server = net.createServer((control) => this.onControl(control));
  }

  async listen(): Promise<number> {
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    this.controlPort = (this.server.address() as AddressInfo).port;
    return this.controlPort;
  }

  /** The next tunnel to be acknowledged. */
  async nextTunnel(ms = WAIT_MS): Promise<V1ServerTunnel> {
    const [tunnel] = await once(this, "tunnel", { signal: AbortSignal.timeout(ms) });
    return tunnel as V1ServerTunnel;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    const servers = [this.server, ...this.publicServers].filter((s) => s.listening);
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    socket.on("error", () => {});
  }

  private onControl(control: Socket): void {
    this.track(control);
    const closed = once(control, "close").then(() => undefined);
    // Frames that arrive in the handshake's chunk wait until the tunnel (and its relay) exists.
    const state: { relay: V1Relay | null; early: RawFrame[] } = { relay: null, early: [] };
    const reader = new RawFrameReader({
      handshake: (body) => {
        control.pause();
        void this.onHandshake(control, body, closed, state);
      },
      frame: (frame) => {
        if (state.relay) state.relay.frame(frame);
        else state.early.push(frame);
      },
      badInput: () => control.destroy(),
    });
    control.on("data", (chunk: Buffer) => reader.push(chunk));
  }

  private async onHandshake(
    control: Socket,
    body: Buffer,
    closed: Promise<void>,
    state: { relay: V1Relay | null; early: RawFrame[] },
  ): Promise<void> {
    let handshake: Record<string, unknown>;
    try {
      handshake = JSON.parse(body.toString("utf8")) as Record<string, unknown>;
    } catch {
      control.destroy();
      return;
    }
    if (this.options.accept && !this.options.accept(handshake)) {
      control.destroy();
      return;
    }
    let nextId = 1;
    const publicServer = net.createServer((visitor) => {
      this.track(visitor);
      if (!state.relay || control.destroyed) {
        visitor.destroy();
        return;
      }
      state.relay.attach(nextId++, visitor);
    });
    this.publicServers.add(publicServer);
    publicServer.listen(0, "127.0.0.1");
    await once(publicServer, "listening");
    const tunnel = {
      control,
      handshakeBody: Buffer.from(body),
      handshake,
      publicServer,
      publicPort: (publicServer.address() as AddressInfo).port,
      closed,
      frames: [],
      unknownTypes: [],
    } as unknown as V1ServerTunnel;
    // A v1 server opens streams only for visitors: frames for unknown ids are dropped.
    const relay = new V1Relay(control, tunnel, () => null, this);
    tunnel.visitors = relay.streams;
    closed.then(() => {
      relay.destroyAll();
      if (publicServer.listening) publicServer.close();
    });
    this.tunnels.push(tunnel);
    control.write(v1Handshake({ port: tunnel.publicPort }));
    state.relay = relay;
    for (const frame of state.early.splice(0)) relay.frame(frame);
    control.resume();
    this.emit("tunnel", tunnel);
  }
}

export async function startV1Server(
  t: TestContext,
  options: V1ServerOptions = {},
): Promise<RawV1Server> {
  const server = new RawV1Server(options);
  t.after(() => server.close());
  await server.listen();
  return server;
}

/**
 * A transparent TCP relay between a client and a server that decodes both directions (any frame
 * type) so a test can see exactly what was negotiated and sent.
 */
export class FrameCapture {
  /** Handshake JSON of the client (`up`) and server (`down`), one per connection. */
  readonly handshakes: { up: Record<string, unknown>[]; down: Record<string, unknown>[] } = {
    up: [],
    down: [],
  };
  /** Frame types seen in each direction. */
  readonly types: { up: Set<number>; down: Set<number> } = { up: new Set(), down: new Set() };
  port = 0;
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();

  constructor(targetPort: number, targetHost = "127.0.0.1") {
    this.server = net.createServer((inbound) => {
      const outbound = net.connect({ port: targetPort, host: targetHost });
      for (const socket of [inbound, outbound]) {
        this.sockets.add(socket);
        socket.on("error", () => {});
        socket.on("close", () => {
          this.sockets.delete(socket);
          inbound.destroy();
          outbound.destroy();
        });
      }
      this.tap(inbound, outbound, "up");
      this.tap(outbound, inbound, "down");
    });
  }

  async listen(): Promise<number> {
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    this.port = (this.server.address() as AddressInfo).port;
    return this.port;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    if (this.server.listening) await new Promise((resolve) => this.server.close(resolve));
  }

  private tap(from: Socket, to: Socket, direction: "up" | "down"): void {
    const reader = new RawFrameReader({
      handshake: (body) =>
        this.handshakes[direction].push(
          JSON.parse(body.toString("utf8")) as Record<string, unknown>,
        ),
      frame: (frame) => this.types[direction].add(frame.type),
      badInput: () => {},
    });
    from.on("data", (chunk: Buffer) => {
      reader.push(chunk);
      if (!to.write(chunk)) from.pause();
    });
    to.on("drain", () => from.resume());
    from.on("end", () => to.end());
  }
}

export async function startCapture(t: TestContext, targetPort: number): Promise<FrameCapture> {
  const capture = new FrameCapture(targetPort);
  t.after(() => capture.close());
  await capture.listen();
  return capture;
}

/** Every "- `name` ...: `hex`" bullet of PROTOCOL.md, by name (the doc's vector format). */
export function documentedVectors(): Map<string, Buffer> {
  const doc = readFileSync(fileURLToPath(new URL("../../PROTOCOL.md", import.meta.url)), "utf8");
  const found = new Map<string, Buffer>();
  const bullet = /^- `([a-z0-9-]+)`[^\n]*?(?:\n\s+)?`([0-9a-f ]+)`\s*$/gm;
  for (const match of doc.matchAll(bullet)) {
    found.set(match[1]!, Buffer.from(match[2]!.replace(/ /g, ""), "hex"));
  }
  return found;
}

/**
 * For negative checks ("no PING reached the v1 peer", "it was never timed out"): resolves after
 * `beats` heartbeat round trips of a separate extension tunnel with the same interval, so at
 * least that many intervals have passed, measured by events rather than a sleep.
 */
export async function heartbeatsElapsed(
  t: TestContext,
  heartbeatIntervalMs: number,
  beats: number,
): Promise<void> {
  const service = await echoService(t);
  const options = { heartbeatIntervalMs };
  const { client } = await startTunnel(t, service.port, options, options);
  for (let i = 0; i < beats; i++) await onceWithin(client.events, "heartbeat");
}
