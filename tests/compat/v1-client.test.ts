/**
 * Our TunnelServer, with every extension enabled, against a raw v1 client (tests/helpers/v1-peer):
 * the client must never see a frame type or ack key it does not know, and every v1 flow works.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type { Socket } from "node:net";
import type { TestContext } from "node:test";
import { test } from "node:test";
import type { TunnelError } from "../../src/errors.js";
import { readsStopped } from "../../src/mux/read-gate.js";
import type { TunnelServerOptions } from "../../src/options.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  connect,
  echoService,
  onceWithin,
  pseudoRandomBytes,
  readAll,
  readBytes,
  sha256,
  startService,
  until,
} from "../helpers/net.js";
import {
  heartbeatsElapsed,
  type RawV1Client,
  startV1Client,
  V1_CLOSE,
  V1_DATA,
  v1Frame,
  v1Handshake,
} from "../helpers/v1-peer.js";

async function ourServer(t: TestContext, options: TunnelServerOptions = {}) {
  const server = new TunnelServer({ extensions: true, heartbeatIntervalMs: 20, ...options });
  t.after(() => server.stop());
  const port = await server.start(0, "127.0.0.1");
  return { server, port };
}

/** What a v1 client may ever see: an ack of `{port}` only, and frame types 1..3. */
function assertPureV1(client: RawV1Client): void {
  assert.deepEqual(Object.keys(client.ack ?? {}), ["port"], "ack keys");
  assert.ok(Number.isInteger(client.port) && client.port > 0, "ack port");
  assert.deepEqual(client.unknownTypes, [], "frame types outside 1..3");
  for (const frame of client.frames) assert.ok(frame.type >= 1 && frame.type <= 3);
}

test("v1 client: echo through our server, ack is exactly {port}", async (t) => {
  const service = await echoService(t);
  const { port } = await ourServer(t);
  const client = await startV1Client(t, { controlPort: port, servicePort: service.port });
  assert.match(client.ackBody!.toString(), /^\{"port":\d+\}$/);
  const visitor = await connect(t, client.port);
  visitor.write("hello v1");
  assert.equal((await readBytes(visitor, 8)).toString(), "hello v1");
  assertPureV1(client);
});

test("v1 client: two concurrent visitors get their own streams", async (t) => {
  const service = await echoService(t);
  const { port } = await ourServer(t);
  const client = await startV1Client(t, { controlPort: port, servicePort: service.port });
  const [a, b] = await Promise.all([connect(t, client.port), connect(t, client.port)]);
  const payloadA = pseudoRandomBytes(300_000, 1);
  const payloadB = pseudoRandomBytes(300_000, 2);
  const gotA = readBytes(a, payloadA.length);
  const gotB = readBytes(b, payloadB.length);
  a.write(payloadA);
  b.write(payloadB);
  assert.equal(sha256(await gotA), sha256(payloadA));
  assert.equal(sha256(await gotB), sha256(payloadB));
  assert.equal(new Set(client.opened).size, 2);
  assertPureV1(client);
});

test("v1 client: a visitor that closes makes the server send CLOSE for its stream", async (t) => {
  const service = await echoService(t);
  const { port } = await ourServer(t);
  const client = await startV1Client(t, { controlPort: port, servicePort: service.port });
  const visitor = await connect(t, client.port);
  visitor.write("x");
  await readBytes(visitor, 1);
  const [streamId] = client.opened;
  visitor.end();
  await until(() => client.count(streamId!, V1_CLOSE) === 1, 10_000, "CLOSE frame");
  await until(() => client.streams.size === 0, 10_000, "local socket released");
  assertPureV1(client);
});

test("v1 client: the service closing ends the visitor's connection", async (t) => {
  const service = await startService(t, (socket) => {
    socket.once("data", () => socket.end("bye"));
  });
  const { server, port } = await ourServer(t);
  const client = await startV1Client(t, { controlPort: port, servicePort: service.port });
  const visitor = await connect(t, client.port);
  const gone = onceWithin(server.events, "visitor-disconnected");
  const received = readAll(visitor);
  visitor.write("hi");
  assert.equal((await received).toString(), "bye");
  await gone;
  const [streamId] = client.opened;
  await until(() => client.streams.size === 0, 10_000, "v1 client forgot the stream");
  assert.equal(client.count(streamId!, V1_CLOSE), 0, "the client closed first: no CLOSE echoed");
  assertPureV1(client);
});

test("v1 client: an unreachable service makes the client send ERROR and the visitor is reset", async (t) => {
  const gone = await startService(t, () => {});
  const deadPort = gone.port;
  await gone.close();
  const { server, port } = await ourServer(t);
  const client = await startV1Client(t, { controlPort: port, servicePort: deadPort });
  const visitor = await connect(t, client.port);
  const disconnected = onceWithin(server.events, "visitor-disconnected");
  const err = await onceWithin<NodeJS.ErrnoException>(visitor, "error");
  assert.equal(err.code, "ECONNRESET", "ERROR resets the visitor");
  await disconnected;
  const [streamId] = client.opened;
  await until(() => client.streams.size === 0, 10_000, "v1 client forgot the stream");
  assert.equal(client.count(streamId!, V1_CLOSE), 0);
  assertPureV1(client);
});

test("v1 client: a server-first service greets the visitor (empty DATA opens the stream)", async (t) => {
  const service = await startService(t, (socket) => socket.write("SSH-2.0-Banner\r\n"));
  const { port } = await ourServer(t);
  const client = await startV1Client(t, { controlPort: port, servicePort: service.port });
  const visitor = await connect(t, client.port);
  assert.equal((await readBytes(visitor, 16)).toString(), "SSH-2.0-Banner\r\n");
  const first = client.frames[0]!;
  assert.equal(first.type, V1_DATA);
  assert.equal(first.length, 0, "the stream opens with an empty data frame");
  assertPureV1(client);
});

test("v1 client: 16 MiB each way through an echo service arrive intact", async (t) => {
  const service = await echoService(t);
  const { port } = await ourServer(t);
  const client = await startV1Client(t, { controlPort: port, servicePort: service.port });
  const visitor = await connect(t, client.port);
  const payload = pseudoRandomBytes(16 << 20, 5);
  const echoed = readBytes(visitor, payload.length, 30_000);
  visitor.write(payload);
  const got = await echoed;
  assert.equal(got.length, payload.length);
  assert.equal(sha256(got), sha256(payload));
  assertPureV1(client);
});

test("v1 client: a refused client is simply closed, with no bytes", async (t) => {
  const { server, port } = await ourServer(t, { connectionFilter: () => false });
  const failed = onceWithin(server.events, "client-authentication-failed");
  const socket = await connect(t, port);
  const everything = readAll(socket);
  socket.write(v1Handshake({ id: "not-allowed" }));
  assert.equal((await everything).length, 0);
  await failed;
});

test("v1 client: no ping reaches a silent v1 client and it is never timed out", async (t) => {
  const service = await echoService(t);
  const { server, port } = await ourServer(t, { heartbeatTimeoutMs: 100 });
  const client = await startV1Client(t, { controlPort: port, servicePort: service.port });
  const tunnel = [...server.tunnels][0]!;
  // Ten heartbeat round trips of an extension tunnel with the same interval: more than the v1
  // tunnel's heartbeat timeout. Pinging the v1 peer would have killed it (unknown type).
  await heartbeatsElapsed(t, 20, 10);
  assert.equal(tunnel.isClosed, false);
  assert.equal(tunnel.rttMs, null);
  const visitor = await connect(t, client.port);
  visitor.write("still here");
  assert.equal((await readBytes(visitor, 10)).toString(), "still here");
  assertPureV1(client);
});

test("v1 client: a frame type it never negotiated is a framing error (W3P_ERR_UNKNOWN_FRAME_TYPE)", async (t) => {
  const service = await echoService(t);
  const { server, port } = await ourServer(t);
  const client = await startV1Client(t, { controlPort: port, servicePort: service.port });
  const tunnelError = onceWithin<{ err: TunnelError }>(server.events, "tunnel-error");
  const closedByServer = onceWithin(client.socket, "close");
  client.socket.write(v1Frame(0, 0x07, Buffer.alloc(8)));
  const { err } = await tunnelError;
  assert.equal(err.code, "W3P_ERR_UNKNOWN_FRAME_TYPE");
  await closedByServer;
});

test("v1 client: a visitor that never reads holds at most maxStreamBufferBytes on the server", async (t) => {
  const total = 160 << 20;
  const block = pseudoRandomBytes(1 << 20, 23);
  let written = 0;
  let producer: Socket | null = null;
  const service = await startService(t, (socket) => {
    producer = socket;
    const pump = () => {
      while (written < total) {
        written += block.length;
        if (!socket.write(block)) {
          socket.once("drain", pump);
          return;
        }
      }
      socket.end();
    };
    pump();
  });
  const limit = 1 << 20;
  const { server, port } = await ourServer(t, { maxStreamBufferBytes: limit });
  const client = await startV1Client(t, { controlPort: port, servicePort: service.port });
  const connected = onceWithin<{ visitorSocket: Socket }>(server.events, "visitor-connected");
  const visitor = await connect(t, client.port);
  const { visitorSocket } = await connected;
  const tunnel = [...server.tunnels][0]!;
  // Steady state: the server stopped reading the control connection (the only v1 brake), so the
  // raw client stopped reading the service, which cannot write any more.
  await until(
    () =>
      readsStopped(tunnel.socket) &&
      visitorSocket.writableLength >= limit &&
      producer !== null &&
      (producer as Socket).writableNeedDrain,
    20_000,
    "backpressure to reach the service",
  );
  t.diagnostic(
    `service wrote ${(written / 2 ** 20).toFixed(0)} MiB before blocking; server holds ${visitorSocket.writableLength} bytes for the visitor`,
  );
  assert.ok(written < total, "the service was held back");
  assert.ok(
    visitorSocket.writableLength < limit * 2,
    `server holds ${visitorSocket.writableLength}`,
  );
  const hash = createHash("sha256");
  let received = 0;
  visitor.on("data", (chunk: Buffer) => {
    hash.update(chunk);
    received += chunk.length;
  });
  await onceWithin(visitor, "end", 30_000);
  const expected = createHash("sha256");
  for (let i = 0; i < total / block.length; i++) expected.update(block);
  assert.equal(received, total);
  assert.equal(hash.digest("hex"), expected.digest("hex"));
  assertPureV1(client);
});
