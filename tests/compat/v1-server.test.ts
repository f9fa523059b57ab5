/**
 * Our TunnelClient, with extensions enabled, against a raw v1 server (tests/helpers/v1-peer): the
 * client must send a valid v1 handshake, never a frame type outside 1..3, and respect
 * backpressure so a slow visitor cannot grow its memory without bound.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type { Socket } from "node:net";
import { type TestContext, test } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import { readsStopped } from "../../src/mux/read-gate.js";
import type { TunnelClientOptions } from "../../src/options.js";
import {
  connect,
  echoService,
  onceWithin,
  pseudoRandomBytes,
  readAll,
  readBytes,
  recordingService,
  sha256,
  startService,
  until,
} from "../helpers/net.js";
import {
  heartbeatsElapsed,
  type RawV1Server,
  startV1Server,
  V1_CLOSE,
  V1_DATA,
  V1_ERROR,
  type V1ServerTunnel,
  v1Frame,
} from "../helpers/v1-peer.js";

const CREDENTIALS = { id: "allowed-client", token: "t0k" };

async function ourClient(
  t: TestContext,
  raw: RawV1Server,
  localServicePort: number,
  options: Partial<TunnelClientOptions> = {},
): Promise<{ client: TunnelClient; tunnel: V1ServerTunnel; port: number; control: Socket }> {
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: raw.controlPort,
    localServiceHost: "127.0.0.1",
    localServicePort,
    authenticationCredentials: CREDENTIALS,
    reconnectInitialDelayMs: 50,
    heartbeatIntervalMs: 20,
    ...options,
  });
  t.after(() => client.stop());
  let control: Socket | null = null;
  client.events.on("tunnel-connection-established", ({ clientConnection }) => {
    control = clientConnection;
  });
  const tunnelSeen = raw.nextTunnel();
  const port = await client.start();
  return { client, tunnel: await tunnelSeen, port, control: control! };
}

/** The client spoke only v1 to the raw server. */
function assertPureV1(tunnel: V1ServerTunnel): void {
  assert.deepEqual(tunnel.unknownTypes, [], "frame types outside 1..3");
  for (const frame of tunnel.frames) assert.ok(frame.type >= 1 && frame.type <= 3);
  assert.equal(tunnel.control.destroyed, false, "the v1 server kept the connection");
}

test("v1 server: the tunnel works and the handshake is v1 JSON plus the reserved w3p key", async (t) => {
  const service = await echoService(t);
  const raw = await startV1Server(t);
  const { client, tunnel, port } = await ourClient(t, raw, service.port);
  assert.equal(port, tunnel.publicPort);
  assert.equal(client.assignedPort, tunnel.publicPort);
  // Valid v1: one JSON object whose credentials are untouched; the only extra key is "w3p".
  const handshake = JSON.parse(tunnel.handshakeBody.toString("utf8"));
  assert.equal(typeof handshake, "object");
  assert.deepEqual(Object.keys(handshake).sort(), ["id", "token", "w3p"]);
  assert.equal(handshake.id, CREDENTIALS.id);
  assert.equal(handshake.token, CREDENTIALS.token);
  assert.equal(typeof handshake.w3p.v, "number");
  assert.ok(Array.isArray(handshake.w3p.ext));
  const visitor = await connect(t, tunnel.publicPort);
  visitor.write("hello from a v1 server");
  assert.equal((await readBytes(visitor, 22)).toString(), "hello from a v1 server");
  assertPureV1(tunnel);
});

test("v1 server: extensions:false sends exactly the credentials", async (t) => {
  const service = await echoService(t);
  const raw = await startV1Server(t);
  const { tunnel } = await ourClient(t, raw, service.port, { extensions: false });
  assert.equal(tunnel.handshakeBody.toString("utf8"), JSON.stringify(CREDENTIALS));
  const visitor = await connect(t, tunnel.publicPort);
  visitor.write("plain");
  assert.equal((await readBytes(visitor, 5)).toString(), "plain");
  assertPureV1(tunnel);
});

test("v1 server: no ping, window or FIN ever goes to it, and it is never timed out", async (t) => {
  // A service that half-closes: with `fin` negotiated this would be a FIN frame; toward a v1
  // server it must become a plain CLOSE once the socket is done.
  const service = await startService(t, (socket) => {
    let seen = 0;
    socket.on("data", (chunk: Buffer) => {
      socket.write(chunk);
      seen += chunk.length;
      if (seen === 400_000) socket.end();
    });
  });
  const raw = await startV1Server(t);
  const { client, tunnel } = await ourClient(t, raw, service.port, { heartbeatTimeoutMs: 100 });
  const visitor = await connect(t, tunnel.publicPort);
  const everything = readAll(visitor);
  visitor.write(pseudoRandomBytes(400_000, 3));
  assert.equal((await everything).length, 400_000);
  await until(() => tunnel.frames.some((f) => f.type === V1_CLOSE), 10_000, "CLOSE frame");
  // Ten heartbeat round trips of an extension tunnel with the same interval: more than our
  // client's heartbeat timeout. Had it pinged, the v1 server would have dropped it.
  await heartbeatsElapsed(t, 20, 10);
  assert.equal(client.isConnected, true);
  assert.equal(client.rttMs, null);
  assertPureV1(tunnel);
});

test("v1 server: 16 MiB each way arrive intact", async (t) => {
  const service = await echoService(t);
  const raw = await startV1Server(t);
  const { tunnel } = await ourClient(t, raw, service.port);
  const visitor = await connect(t, tunnel.publicPort);
  const payload = pseudoRandomBytes(16 << 20, 11);
  const echoed = readBytes(visitor, payload.length, 30_000);
  visitor.write(payload);
  const got = await echoed;
  assert.equal(got.length, payload.length);
  assert.equal(sha256(got), sha256(payload));
  assertPureV1(tunnel);
});

test("v1 server: close and error frames in both directions", async (t) => {
  let serviceSockets = 0;
  const service = await startService(t, (socket) => {
    serviceSockets++;
    socket.on("data", (chunk: Buffer) => {
      if (chunk.toString() === "quit") socket.destroy();
      else socket.write(chunk);
    });
    // Told the visitor left (our end), it leaves too; the client waits for that before closing.
    socket.on("end", () => socket.end());
  });
  const raw = await startV1Server(t);
  const { client, tunnel } = await ourClient(t, raw, service.port);

  // The visitor leaves: the server sends CLOSE, our client closes the service connection.
  const first = await connect(t, tunnel.publicPort);
  first.write("one");
  await readBytes(first, 3);
  const serviceGone = onceWithin(client.events, "service-disconnected");
  first.end();
  await serviceGone;

  // The service leaves: our client sends CLOSE, the server closes the visitor.
  const second = await connect(t, tunnel.publicPort);
  second.write("two");
  await readBytes(second, 3);
  const secondDone = readAll(second);
  second.write("quit");
  await secondDone;
  await until(() => tunnel.frames.some((f) => f.streamId === 2 && f.type === V1_CLOSE));

  // The service cannot be reached: our client answers the stream with ERROR.
  await service.close();
  const third = await connect(t, tunnel.publicPort);
  third.on("error", () => {});
  const thirdDone = readAll(third);
  third.write("three");
  await thirdDone;
  await until(() => tunnel.frames.some((f) => f.streamId === 3 && f.type === V1_ERROR));
  assert.equal(serviceSockets, 2);
  assertPureV1(tunnel);
});

test("v1 server: bytes it sent before reading our CLOSE do not open the stream again", async (t) => {
  // The first chunk each service connection gets; "quit" makes the service leave.
  const firstChunks: string[] = [];
  const service = await startService(t, (socket) => {
    socket.once("data", (chunk: Buffer) => {
      firstChunks.push(chunk.toString());
      if (chunk.toString() === "quit") socket.destroy();
    });
  });
  const raw = await startV1Server(t);
  const { client, tunnel } = await ourClient(t, raw, service.port);
  const opened = () => client.stats().services[0]!.streamsTotal;
  const send = (streamId: number, text: string) =>
    tunnel.control.write(v1Frame(streamId, V1_DATA, Buffer.from(text)));

  // The service leaves stream 1000, so our client closes it...
  send(1000, "quit");
  await until(() =>
    tunnel.frames.some((f) => f.streamId === 1000 && (f.type === V1_CLOSE || f.type === V1_ERROR)),
  );
  // ...while the server still had bytes on the way for it: late, not a new stream. Frames are
  // handled in order, so once stream 1001 reached the service, 1000's late bytes were handled.
  send(1000, "late bytes");
  send(1001, "next");
  await until(() => firstChunks.includes("next"));
  assert.equal(opened(), 2, "streams 1000 and 1001, not 1000 twice");
  assert.ok(!firstChunks.includes("late bytes"));

  // An empty DATA frame is how a server announces a new stream: the id opens again.
  tunnel.control.write(v1Frame(1000, V1_DATA));
  send(1000, "again");
  await until(() => firstChunks.includes("again"));
  assert.equal(opened(), 3);
  assertPureV1(tunnel);
});

test("v1 server: an id it closed and picks again at once is a new stream, while the old one still drains", async (t) => {
  // The service never ends its side: after the server's CLOSE our client ends the old
  // connection and waits (up to closeGraceMs) for it to close.
  const service = await recordingService(t);
  const { received } = service;
  const raw = await startV1Server(t);
  const { client, tunnel } = await ourClient(t, raw, service.port, { closeGraceMs: 30_000 });
  const send = (...frames: Buffer[]) => tunnel.control.write(Buffer.concat(frames));
  send(v1Frame(7, V1_DATA, Buffer.from("one")));
  await until(() => received[0] === "one");
  // W3P picks stream ids at random: the next visitor may get 7 again, right after its CLOSE.
  send(v1Frame(7, V1_CLOSE), v1Frame(7, V1_DATA, Buffer.from("two")));
  send(v1Frame(7, V1_DATA, Buffer.from("+three")));
  await until(() => received[1] === "two+three");
  assert.deepEqual(received, ["one", "two+three"]);
  assert.equal(service.sockets.size, 2, "the old connection still drains beside the new one");
  assert.equal(client.stats().services[0]!.streamsTotal, 2);
  assertPureV1(tunnel);
});

test("v1 server: a visitor that never reads does not grow the client's memory", async (t) => {
  const total = 160 << 20;
  const block = pseudoRandomBytes(1 << 20, 21);
  let written = 0;
  let producer: Socket | null = null;
  const service = await startService(t, (socket) => {
    producer = socket;
    socket.once("data", () => {
      // Writes `total` bytes as fast as the socket takes them, honouring backpressure.
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
  });
  const raw = await startV1Server(t);
  const { client, tunnel, control } = await ourClient(t, raw, service.port);
  const serviceConnected = onceWithin<{ serviceSocket: Socket }>(
    client.events,
    "service-connected",
  );
  const baseline = process.memoryUsage().arrayBuffers;
  const visitor = await connect(t, tunnel.publicPort);
  visitor.write("go");
  const { serviceSocket } = await serviceConnected;
  // Steady state: our client stopped reading the service, and the service cannot write more.
  await until(
    () =>
      readsStopped(serviceSocket) && producer !== null && (producer as Socket).writableNeedDrain,
    20_000,
    "backpressure to reach the service",
  );
  const clientBuffered = serviceSocket.readableLength + control.writableLength;
  const grown = process.memoryUsage().arrayBuffers - baseline;
  t.diagnostic(
    `service wrote ${(written / 2 ** 20).toFixed(0)} MiB before blocking; client buffers ${clientBuffered} bytes; arrayBuffers +${(grown / 2 ** 20).toFixed(1)} MiB`,
  );
  assert.ok(written < total, "the service was held back");
  assert.ok(clientBuffered < 4 << 20, `client buffers ${clientBuffered} bytes`);
  // Loose: garbage not yet collected counts too. Unbounded buffering would add the whole total.
  assert.ok(grown < total / 2, `arrayBuffers grew by ${grown} bytes`);

  // Resume the reader: every byte arrives, in order.
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
  assertPureV1(tunnel);
});

test("v1 server: a client with several services gets one port, served by its first service", async (t) => {
  const first = await startService(t, (socket) => socket.end("first"));
  const second = await startService(t, (socket) => socket.end("second"));
  const raw = await startV1Server(t);
  const { client, tunnel } = await ourClient(t, raw, 0, {
    services: [
      { name: "web", localPort: first.port },
      { name: "admin", localPort: second.port },
    ],
  });
  assert.deepEqual(
    client.stats().services.map((s) => [s.name, s.publicPort]),
    [
      ["web", tunnel.publicPort],
      ["admin", null],
    ],
  );
  const visitor = await connect(t, tunnel.publicPort);
  const reply = readAll(visitor);
  visitor.write("which?");
  assert.equal((await reply).toString(), "first");
  assertPureV1(tunnel);
});
