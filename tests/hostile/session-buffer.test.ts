/**
 * Per-stream limits (the window, the v1 brake) bound each stream; a peer opening many streams to
 * readers that do not read is bounded by `maxSessionBufferBytes`, all streams together: past it
 * the control connection is not read until half of it is written.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { test } from "node:test";
import { FrameType } from "../../src/protocol/constants.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { connect, onceWithin, readBytes, until } from "../helpers/net.js";
import { encodeFrame, rawSession } from "../helpers/raw-peer.js";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Sends DATA for `streamId` until the server cannot hand it to `target` at once. */
async function fillSocket(control: Socket, streamId: number, target: Socket): Promise<number> {
  const chunk = Buffer.alloc(64 * KiB, 0x61);
  let sent = 0;
  while (target.writableLength === 0) {
    control.write(encodeFrame(streamId, FrameType.DATA, chunk));
    sent += chunk.length;
    await new Promise((resolve) => setTimeout(resolve, 1));
    assert.ok(sent < 64 * MiB, "the visitor's socket never filled");
  }
  return sent;
}

test("v1: streams each under maxStreamBufferBytes but together over maxSessionBufferBytes pause the control connection, and every byte arrives", async (t) => {
  const server = new TunnelServer({ maxStreamBufferBytes: MiB, maxSessionBufferBytes: MiB });
  t.after(() => server.stop());
  await server.start(0, "127.0.0.1");
  const { socket: control, publicPort } = await rawSession(t, server.port!, null);
  const [tunnel] = [...server.tunnels];
  const visitors: Array<{ visitor: Socket; accepted: Socket; streamId: number; sent: number }> = [];
  for (let i = 0; i < 3; i++) {
    const accepted = onceWithin<{ visitorSocket: Socket; streamId: number }>(
      server.events,
      "visitor-connected",
    );
    const visitor = await connect(t, publicPort);
    visitor.pause();
    const { visitorSocket, streamId } = await accepted;
    visitors.push({ visitor, accepted: visitorSocket, streamId, sent: 0 });
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
