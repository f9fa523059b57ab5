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
