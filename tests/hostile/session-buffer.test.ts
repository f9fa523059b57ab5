/**
 * Per-stream limits (the window, the v1 brake) bound each stream; a peer opening many streams to
 * readers that do not read is bounded by `maxSessionBufferBytes`, all streams together: past it
 * the control connection is not read until half of it is written.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FrameType } from "../../src/protocol/constants.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { readBytes, until } from "../helpers/net.js";
import {
  encodeFrame,
  fillSocket,
  rawSession,
  type StalledVisitor,
  stalledVisitor,
} from "../helpers/raw-peer.js";

const KiB = 1024;
const MiB = 1024 * KiB;

test("v1: streams each under maxStreamBufferBytes but together over maxSessionBufferBytes pause the control connection, and every byte arrives", async (t) => {
  const server = new TunnelServer({ maxStreamBufferBytes: MiB, maxSessionBufferBytes: MiB });
  t.after(() => server.stop());
  await server.start(0, "127.0.0.1");
  const { socket: control, publicPort } = await rawSession(t, server.port!, null);
  const [tunnel] = [...server.tunnels];
  const visitors: Array<StalledVisitor & { sent: number }> = [];
  for (let i = 0; i < 3; i++) {
    visitors.push({ ...(await stalledVisitor(t, server, publicPort)), sent: 0 });
  }
  for (const entry of visitors)
    entry.sent = await fillSocket(control, entry.streamId, entry.accepted);

  // 512 KiB more each: no stream reaches its own 1 MiB brake, the three together pass 1 MiB.
  const more = Buffer.alloc(512 * KiB, 0x62);
  for (const entry of visitors) {
    control.write(encodeFrame(entry.streamId, FrameType.DATA, more));
    entry.sent += more.length;
  }
  await until(() => tunnel!.socket.isPaused(), 5_000, "the control connection paused");
  const waiting = visitors.reduce((sum, { accepted }) => sum + accepted.writableLength, 0);
  assert.ok(waiting <= MiB + 600 * KiB, `${waiting} bytes wait for the visitors`);

  // Readers catch up: reading resumes and every byte arrives.
  for (const entry of visitors) {
    entry.visitor.resume();
    const got = await readBytes(entry.visitor, entry.sent, 20_000);
    assert.equal(got.length, entry.sent);
  }
  await until(() => !tunnel!.socket.isPaused(), 5_000, "reading again");
});

test("v1: a stream held under the socket's highWaterMark lets the control connection go once written", async (t) => {
  // The brake (8 KiB) is under the visitor socket's highWaterMark (16 KiB or more): a write that
  // stops the control connection did not fill the socket's buffer, so no 'drain' will follow it.
  const brake = 8 * KiB;
  const server = new TunnelServer({ maxStreamBufferBytes: brake });
  t.after(() => server.stop());
  await server.start(0, "127.0.0.1");
  const { socket: control, publicPort } = await rawSession(t, server.port!, null);
  const [tunnel] = [...server.tunnels];
  const { visitor, accepted, streamId } = await stalledVisitor(t, server, publicPort);
  assert.ok(accepted.writableHighWaterMark > brake);
  // Small frames, each sent once the last one was read (one per read, so each is a write of its
  // own), until the kernel's buffers are full and the brake holds.
  const part = Buffer.alloc(4 * KiB, 0x63);
  const frame = encodeFrame(streamId, FrameType.DATA, part);
  const session = tunnel!.session;
  const readBefore = session.bytesIn;
  let sent = 0;
  while (!tunnel!.socket.isPaused()) {
    control.write(frame);
    sent += part.length;
    const wire = (sent / part.length) * frame.length;
    const deadline = Date.now() + 5_000;
    while (session.bytesIn - readBefore < wire) {
      if (Date.now() > deadline) throw new Error("a frame was not read");
      await new Promise((resolve) => setImmediate(resolve));
    }
    if (sent >= 64 * MiB) throw new Error("the brake never held");
  }
  assert.ok(accepted.writableLength < accepted.writableHighWaterMark, "no 'drain' is due");
  visitor.resume();
  const got = await readBytes(visitor, sent, 20_000);
  assert.equal(got.length, sent);
  await until(() => !tunnel!.socket.isPaused(), 5_000, "reading again");
  // And it carries on.
  control.write(encodeFrame(streamId, FrameType.DATA, Buffer.from("more")));
  assert.equal((await readBytes(visitor, 4)).toString(), "more");
});
