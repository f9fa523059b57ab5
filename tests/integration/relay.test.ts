import assert from "node:assert/strict";
import { test } from "node:test";
import {
  connect,
  echoService,
  pseudoRandomBytes,
  readAll,
  readBytes,
  sha256,
  startService,
  startTunnel,
} from "../helpers/net.js";

test("a visitor's bytes reach the local service and the echo comes back", async (t) => {
  const service = await echoService(t);
  const { publicPort } = await startTunnel(t, service.port);
  const visitor = await connect(t, publicPort);
  visitor.write("hello tunnel");
  assert.equal((await readBytes(visitor, 12)).toString(), "hello tunnel");
});

test("100 concurrent visitors each echo 1 MiB intact", async (t) => {
  const service = await echoService(t);
  const { publicPort } = await startTunnel(t, service.port);
  const runs = Array.from({ length: 100 }, async (_, i) => {
    const payload = pseudoRandomBytes(1 << 20, i + 1);
    const visitor = await connect(t, publicPort);
    const received = readBytes(visitor, payload.length, 60_000);
    visitor.write(payload);
    const echoed = await received;
    visitor.destroy();
    assert.equal(sha256(echoed), sha256(payload), `visitor ${i}`);
  });
  await Promise.all(runs);
});

test("64 MiB each way on one visitor arrive intact", async (t) => {
  const size = 64 << 20;
  const upload = pseudoRandomBytes(size, 7);
  const download = pseudoRandomBytes(size, 9);
  let uploadedHash = "";
  const service = await startService(t, (socket) => {
    const chunks: Buffer[] = [];
    let length = 0;
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      length += chunk.length;
      if (length === size) {
        uploadedHash = sha256(Buffer.concat(chunks));
        socket.end(download);
      }
    });
  });
  const { publicPort } = await startTunnel(t, service.port);
  const visitor = await connect(t, publicPort);
  const received = readAll(visitor, 120_000);
  visitor.write(upload);
  const got = await received;
  assert.equal(uploadedHash, sha256(upload));
  assert.equal(got.length, size);
  assert.equal(sha256(got), sha256(download));
});

test("a service that speaks first greets the visitor before it sends anything", async (t) => {
  const service = await startService(t, (socket) => socket.write("SSH-2.0-Test\r\n"));
  for (const extensions of [true, false] as const) {
    const { publicPort } = await startTunnel(t, service.port, { extensions }, { extensions });
    const visitor = await connect(t, publicPort);
    assert.equal((await readBytes(visitor, 14)).toString(), "SSH-2.0-Test\r\n");
    visitor.destroy();
  }
});
