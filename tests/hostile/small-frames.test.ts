/**
 * Frames that carry (almost) nothing: a peer sending empty or 1-byte DATA frames, or granting
 * credit a byte at a time, must not turn each frame into a queued write of its own. Byte limits
 * (window, v1 brake, write limit) cannot see such writes: each costs a few hundred bytes of
 * bookkeeping, and destroying a socket with millions queued blocks the event loop for seconds.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { test } from "node:test";
import { FrameType } from "../../src/protocol/constants.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { connect, onceWithin, readBytes, startService, until, WAIT_MS } from "../helpers/net.js";
import {
  answeringServer,
  clientOfRawServer,
  encodeFrame,
  encodeHandshake,
  fillSocket,
  rawConnect,
  rawSession,
  readHandshake,
  stalledVisitor,
  u32,
} from "../helpers/raw-peer.js";

const FRAMES = 40_000;
/** Queued writes allowed on a socket after the flood: a few tail blocks, not one per frame. */
const FEW_WRITES = 200;

/**
 * Counts the library's writes to `socket` from now on. Queued or handed to the kernel in one
 * writev, each write is an entry of its own until it completes: their number is what matters.
 */
function countWrites(socket: Socket): () => number {
  let writes = 0;
  const write = socket.write;
  socket.write = function (this: Socket, ...args: Parameters<Socket["write"]>) {
    writes++;
    return write.apply(this, args);
  } as Socket["write"];
  return () => writes;
}

async function startServer(t: import("node:test").TestContext): Promise<TunnelServer> {
  const server = new TunnelServer();
  t.after(() => server.stop());
  await server.start(0, "127.0.0.1");
  return server;
}

/** Bytes of `frames` once written, after the server read them all (its counter of bytes in). */
async function serverRead(server: TunnelServer, bytes: number): Promise<void> {
  await until(() => server.stats().tunnels[0]!.bytesIn >= bytes, WAIT_MS, "server read all");
}

test("empty and 1-byte DATA frames to a visitor that does not read: a few queued writes, every byte in order", async (t) => {
  for (const ext of [null, ["flow"]] as const) {
    const server = await startServer(t);
    const { socket: control, publicPort } = await rawSession(t, server.port!, ext);
    const {
      visitor,
      accepted: visitorSocket,
      streamId,
    } = await stalledVisitor(t, server, publicPort);
    const baseline = server.stats().tunnels[0]!.bytesIn;
    const filled = await fillSocket(control, streamId, visitorSocket);
    const fillFrames = Math.ceil(filled / (64 * 1024)) * 9;

    // Half empty frames, half 1-byte frames numbering themselves: order is checked at the end.
    const frames: Buffer[] = [];
    const marks = Buffer.alloc(FRAMES / 2);
    for (let i = 0; i < FRAMES / 2; i++) {
      marks[i] = i % 251;
      frames.push(encodeFrame(streamId, FrameType.DATA, Buffer.alloc(0)));
      frames.push(encodeFrame(streamId, FrameType.DATA, marks.subarray(i, i + 1)));
    }
    const flood = Buffer.concat(frames);
    const writes = countWrites(visitorSocket);
    control.write(flood);
    await serverRead(server, baseline + filled + fillFrames + flood.length);
    const label = ext ? "ext" : "v1";
    assert.ok(writes() < FEW_WRITES, `${label}: ${writes()} writes to the visitor`);

    visitor.resume();
    const got = await readBytes(visitor, filled + marks.length);
    assert.ok(got.subarray(filled).equals(marks), "the 1-byte payloads arrive whole and in order");
    await server.stop();
  }
});

test("a client that grants credit a byte at a time while not reading: the server's queue holds a few frames, not one per grant", async (t) => {
  const server = await startServer(t);
  const control = await rawConnect(t, server.port!);
  const acked = readHandshake(control);
  control.write(encodeHandshake({ id: "dribble", w3p: { v: 2, ext: ["flow"], win: 1 } }));
  await acked;
  const streams: number[] = [];
  server.events.on("visitor-connected", ({ streamId }) => streams.push(streamId));
  for (let i = 0; i < 4; i++) {
    const visitor = await connect(t, server.stats().tunnels[0]!.services[0]!.port);
    visitor.write(Buffer.alloc(64 * 1024, 0x62));
  }
  await until(() => streams.length === 4);
  control.pause(); // reads nothing from here on
  const [tunnel] = [...server.tunnels];
  // One WINDOW(+1) per stream, over and over, until well past the control socket's write limit.
  const round = Buffer.concat(streams.map((id) => encodeFrame(id, FrameType.WINDOW, u32(1))));
  const grants = Buffer.concat(Array.from({ length: 4_000 }, () => round));
  let sent = 0;
  while (tunnel!.socket.writableLength < 1 << 20 && sent < 256 << 20) {
    control.write(grants);
    sent += grants.length;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  const writes = countWrites(tunnel!.socket);
  for (let i = 0; i < 20; i++) control.write(grants);
  await serverRead(server, sent + 20 * grants.length);
  assert.ok(writes() < FEW_WRITES, `${writes()} writes to the control socket for 320,000 grants`);
});

test("empty DATA frames to a local service that does not read: the client queues a few writes", async (t) => {
  let serviceSide: Socket | null = null;
  const service = await startService(t, (socket) => {
    socket.pause();
    serviceSide = socket;
  });
  let control: Socket | null = null;
  let written = 0;
  const send = (bytes: Buffer) => {
    written += bytes.length;
    return control!.write(bytes);
  };
  const evil = await answeringServer(t, (socket) => {
    control = socket;
    send(encodeHandshake({ port: 1 }));
  });
  const client = clientOfRawServer(t, evil.port, service.port, { extensions: false });
  await onceWithin(client.events, "authentication-acknowledged");
  const connected = onceWithin<{ serviceSocket: Socket }>(client.events, "service-connected");
  send(encodeFrame(7, FrameType.DATA, Buffer.from("x"))); // v1: the first frame opens stream 7
  const { serviceSocket } = await connected;
  const chunk = Buffer.alloc(64 * 1024, 0x63);
  let filled = 1;
  while (serviceSocket.writableLength === 0) {
    send(encodeFrame(7, FrameType.DATA, chunk));
    filled += chunk.length;
    await new Promise((resolve) => setTimeout(resolve, 1));
    assert.ok(filled < 64 << 20, "the service's socket never filled");
  }
  const empty = encodeFrame(7, FrameType.DATA, Buffer.alloc(0));
  const writes = countWrites(serviceSocket);
  send(Buffer.concat(Array.from({ length: FRAMES }, () => empty)));
  send(encodeFrame(7, FrameType.DATA, Buffer.from("end")));
  await until(() => client.stats().bytesIn >= written, WAIT_MS, "client read all");
  assert.ok(writes() < FEW_WRITES, `${writes()} writes to the service for ${FRAMES} frames`);
  serviceSide!.resume();
  const got = await readBytes(serviceSide!, filled + 3);
  assert.equal(got.subarray(filled).toString(), "end");
});
