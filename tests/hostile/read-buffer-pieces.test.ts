/**
 * A busy socket reads into a 64 KiB buffer it keeps (src/mux/reusable-reads.ts). A peer that then
 * sends small pieces must not make each piece hold a read buffer of its own: the memory held for
 * what it sent stays close to what it sent. Measured as live ArrayBuffer memory after collecting
 * garbage, in this process (the server runs here).
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { type TestContext, test } from "node:test";
import v8 from "node:v8";
import vm from "node:vm";
import { isReusingReads } from "../../src/mux/reusable-reads.js";
import { FrameType } from "../../src/protocol/constants.js";
import type { ClientTunnel } from "../../src/server/client-tunnel.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { onceWithin } from "../helpers/net.js";
import { encodeFrame, rawSession, stalledVisitor, u32 } from "../helpers/raw-peer.js";

v8.setFlagsFromString("--expose-gc");
const collectGarbage = vm.runInNewContext("gc") as () => void;

const PIECES = 120;
const PIECE_BYTES = 600;
/** Before the fix each piece held 64 KiB: 7.5 MiB for 70 KiB sent. */
const MAX_GROWTH = 2 * 1024 * 1024;

/** ArrayBuffer memory still referred to (backing stores are freed a turn after collection). */
async function liveArrayBufferBytes(): Promise<number> {
  collectGarbage();
  await new Promise((resolve) => setImmediate(resolve));
  collectGarbage();
  return process.memoryUsage().arrayBuffers;
}

/** Waits, turn by turn, until `count()` reaches `target`: each piece is then a read of its own. */
async function reached(count: () => number, target: number, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (count() < target) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/**
 * Writes PIECES pieces of `fill` to `socket`, each once the last was read (`count()` reaches
 * `countBefore` plus the pieces so far), and returns the live ArrayBuffer growth over `before`.
 */
async function growthOverPieces(
  socket: Socket,
  count: () => number,
  countBefore: number,
  fill: number,
  before: number,
): Promise<number> {
  const piece = Buffer.alloc(PIECE_BYTES, fill);
  let expected = countBefore;
  for (let i = 0; i < PIECES; i++) {
    socket.write(piece);
    expected += PIECE_BYTES;
    await reached(count, expected, `piece ${i} to be read`);
  }
  return (await liveArrayBufferBytes()) - before;
}

async function startServer(t: TestContext, options = {}) {
  const server = new TunnelServer(options);
  t.after(() => server.stop());
  return { server, controlPort: await server.start(0, "127.0.0.1") };
}

/** Sends large pieces (`sendLarge` waits until each is read) until `socket` reads into a reusable buffer. */
async function untilReusing(socket: Socket, sendLarge: () => Promise<void>): Promise<void> {
  for (let attempt = 0; attempt < 10 && !isReusingReads(socket); attempt++) await sendLarge();
  assert.ok(isReusingReads(socket), "the socket switched to a reusable buffer");
}

test("a frame sent in small pieces holds its bytes on the server, not a read buffer per piece", async (t) => {
  const { server, controlPort } = await startServer(t);
  const created = onceWithin<{ clientTunnel: ClientTunnel }>(server.events, "tunnel-created");
  const raw = await rawSession(t, controlPort, ["open", "fin"]);
  raw.socket.setNoDelay(true);
  const { clientTunnel } = await created;
  const bytesIn = () => clientTunnel.stats().bytesIn;
  // A DATA frame for a stream that does not exist is dropped; its read switches the connection.
  const large = encodeFrame(12345, FrameType.DATA, Buffer.alloc(60_000));
  await untilReusing(clientTunnel.socket, async () => {
    const target = bytesIn() + large.length;
    raw.socket.write(large);
    await reached(bytesIn, target, "the large frame to be read");
  });
  const before = await liveArrayBufferBytes();
  // A CLOSE frame may carry up to maxFrameBytes: announced at 1 MiB, sent in 600-byte pieces.
  raw.socket.write(Buffer.concat([u32(1024 * 1024 + 5), u32(777), Buffer.from([FrameType.CLOSE])]));
  const grown = await growthOverPieces(raw.socket, bytesIn, bytesIn() + 9, 0x41, before);
  t.diagnostic(`${PIECES} x ${PIECE_BYTES} B of one frame: live ArrayBuffers +${grown} bytes`);
  assert.ok(grown < MAX_GROWTH, `live ArrayBuffers grew by ${grown} bytes`);
  assert.ok(!raw.socket.destroyed, "the session is kept: the frame is allowed");
});

test("a visitor sending small pieces while the control connection is backed up holds no read buffer per piece", async (t) => {
  // No flow extension (no credit limit) and a large write limit: only the kernel's buffers and
  // the write queue stand between the visitors and the client, which reads nothing.
  const { server, controlPort } = await startServer(t, {
    controlWriteBufferBytes: 64 * 1024 * 1024,
  });
  const created = onceWithin<{ clientTunnel: ClientTunnel }>(server.events, "tunnel-created");
  const raw = await rawSession(t, controlPort, ["open", "fin"]);
  raw.socket.pause();
  const { clientTunnel } = await created;
  const fromVisitors = () => clientTunnel.stats().services[0]!.bytesOut;

  // Visitor A's socket switches with one large read while the control connection takes it all.
  const a = await stalledVisitor(t, server, raw.publicPort);
  a.visitor.setNoDelay(true);
  await untilReusing(a.accepted, async () => {
    const target = fromVisitors() + 64 * 1024;
    a.visitor.write(Buffer.alloc(64 * 1024, 0x61));
    await reached(fromVisitors, target, "A's large write to be read");
  });
  // Visitor B fills the control connection until the server's writes to it queue. Its pieces are
  // under the size that switches a socket, and each is read before the next is sent: B is quiet
  // (nothing of it left to read) once the queue has formed.
  const b = await stalledVisitor(t, server, raw.publicPort);
  const fill = Buffer.alloc(16 * 1024, 0x62);
  for (let sent = 0; clientTunnel.socket.writableLength === 0; sent += fill.length) {
    if (sent > 64 * 1024 * 1024) throw new Error("the control connection never backed up");
    const target = fromVisitors() + fill.length;
    b.visitor.write(fill);
    await reached(fromVisitors, target, "B's piece to be read");
  }
  assert.ok(!isReusingReads(b.accepted), "B's pieces did not switch its socket");

  const before = await liveArrayBufferBytes();
  const grown = await growthOverPieces(a.visitor, fromVisitors, fromVisitors(), 0x63, before);
  t.diagnostic(`${PIECES} x ${PIECE_BYTES} B behind a full control connection: +${grown} bytes`);
  assert.ok(clientTunnel.socket.writableLength > 0, "the control connection stayed backed up");
  assert.ok(grown < MAX_GROWTH, `live ArrayBuffers grew by ${grown} bytes`);
});
