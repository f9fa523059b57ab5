/**
 * CLOSE from the peer means "deliver what is queued, then close". A local socket closed while it
 * still has bytes we have not read is reset by the kernel, which discards what we wrote and it
 * has not sent yet; so after CLOSE the library ends its side, reads on (dropping the bytes), and
 * closes once the local side has closed too (or `closeGraceMs` passed).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { FrameType } from "../../src/protocol/constants.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { onceWithin, readAll, startService, until } from "../helpers/net.js";
import {
  answeringServer,
  clientOfRawServer,
  encodeFrame,
  encodeHandshake,
  fillSocket,
  rawSession,
  stalledVisitor,
} from "../helpers/raw-peer.js";

test("client: a stream's data and CLOSE in one write reach a service that greeted first, whole", async (t) => {
  const received: Promise<Buffer>[] = [];
  const service = await startService(t, (socket) => {
    socket.write(Buffer.alloc(4771, 0x41)); // a greeting the client will not have read
    received.push(readAll(socket));
    socket.on("end", () => socket.end());
  });
  const payload = Buffer.alloc(190_104, 0x62);
  const evil = await answeringServer(t, (socket) => {
    socket.write(encodeHandshake({ port: 1 }));
    // v1: the first DATA opens stream 1; CLOSE right behind it.
    socket.write(
      Buffer.concat([
        encodeFrame(1, FrameType.DATA, payload),
        encodeFrame(1, FrameType.CLOSE, Buffer.alloc(0)),
      ]),
    );
  });
  const client = clientOfRawServer(t, evil.port, service.port, { extensions: false });
  await onceWithin(client.events, "service-disconnected");
  assert.equal(received.length, 1);
  const got = await received[0]!;
  assert.equal(got.length, payload.length, "every byte before the end");
});

test("server: CLOSE behind data for a slow visitor that sends something meanwhile: every byte arrives", async (t) => {
  const server = new TunnelServer();
  t.after(() => server.stop());
  await server.start(0, "127.0.0.1");
  const { socket: control, publicPort } = await rawSession(t, server.port!, null);
  const {
    visitor,
    accepted: visitorSocket,
    streamId,
  } = await stalledVisitor(t, server, publicPort);
  // A busy visitor (a 64 KiB read): the server then stops its kernel reads when it pauses it.
  const upload = Buffer.alloc(64 * 1024, 0x75);
  let uploaded = 0;
  control.on("data", (data: Buffer) => {
    uploaded += data.length;
  });
  visitor.write(upload);
  await until(() => uploaded >= upload.length, 5_000, "upload relayed");
  // Fill the visitor's buffers, so the server's writes are still going on when CLOSE comes.
  const sent = await fillSocket(control, streamId, visitorSocket);
  control.write(encodeFrame(streamId, FrameType.CLOSE, Buffer.alloc(0)));
  await until(() => visitorSocket.writableEnded, 5_000, "CLOSE handled");
  visitor.write("late words"); // reaches the server after it handled CLOSE
  // The visitor reads until the server has handed its last bytes to the kernel, and stops there:
  // what the kernel still holds for it is lost if the server's socket is reset now.
  const chunks: Buffer[] = [];
  visitor.on("data", (data: Buffer) => chunks.push(data));
  visitorSocket.once("finish", () => visitor.pause());
  visitor.resume();
  await until(() => visitorSocket.writableFinished, 20_000, "the server's writes done");
  await new Promise((resolve) => setImmediate(resolve));
  const ended = onceWithin(visitor, "end", 20_000);
  visitor.resume();
  await ended;
  assert.equal(Buffer.concat(chunks).length, sent);
});
