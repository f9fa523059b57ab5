/**
 * Negotiation: an extension is used only when both sides announced it. A capture relay between
 * our client and our server decodes both directions to show exactly which frames were sent.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { type TestContext, test } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import type { TunnelClientOptions, TunnelServerOptions } from "../../src/options.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  connect,
  echoService,
  onceWithin,
  pseudoRandomBytes,
  readAll,
  readBytes,
  sha256,
} from "../helpers/net.js";
import {
  type FrameCapture,
  heartbeatsElapsed,
  RawFrameReader,
  startCapture,
  V1_DATA,
  v1Frame,
  v1Handshake,
} from "../helpers/v1-peer.js";

const ALL = ["open", "flow", "fin", "ping", "goaway", "services"];
const FAST_HEARTBEAT = { heartbeatIntervalMs: 20 };

/** Our server, a capture relay in front of it, and our client dialling the relay. */
async function capturedTunnel(
  t: TestContext,
  servicePort: number,
  serverOptions: TunnelServerOptions,
  clientOptions: Partial<TunnelClientOptions>,
): Promise<{ server: TunnelServer; client: TunnelClient; capture: FrameCapture; port: number }> {
  const server = new TunnelServer({ ...FAST_HEARTBEAT, ...serverOptions });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const capture = await startCapture(t, controlPort);
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: capture.port,
    localServiceHost: "127.0.0.1",
    localServicePort: servicePort,
    authenticationCredentials: { id: "pi-1" },
    ...FAST_HEARTBEAT,
    ...clientOptions,
  });
  t.after(() => client.stop());
  const port = await client.start();
  return { server, client, capture, port };
}

/** Moves 1 MiB both ways and half-closes, so every extension that is on shows its frames. */
async function exercise(t: TestContext, port: number): Promise<void> {
  const visitor = await connect(t, port);
  const payload = pseudoRandomBytes(1 << 20, 4);
  const echoed = readBytes(visitor, payload.length);
  visitor.write(payload);
  assert.equal(sha256(await echoed), sha256(payload));
  const rest = readAll(visitor);
  visitor.end();
  await rest;
  // Let a few heartbeat intervals (20 ms) pass: pings show up if they are on.
  await heartbeatsElapsed(t, FAST_HEARTBEAT.heartbeatIntervalMs, 4);
}

const union = (capture: FrameCapture) => new Set([...capture.types.up, ...capture.types.down]);

test("both sides announce: every extension is agreed and its frames are used", async (t) => {
  const service = await echoService(t);
  const { client, capture, port } = await capturedTunnel(t, service.port, {}, {});
  await exercise(t, port);
  const hello = capture.handshakes.up[0]!;
  const ack = capture.handshakes.down[0]!;
  assert.deepEqual((hello.w3p as { ext: string[] }).ext, ALL);
  assert.deepEqual((ack.w3p as { ext: string[] }).ext, ALL);
  assert.equal(ack.port, port);
  assert.ok(capture.types.down.has(0x04), "OPEN from the server");
  assert.ok(capture.types.up.has(0x05) && capture.types.down.has(0x05), "WINDOW both ways");
  assert.ok(capture.types.up.has(0x06) && capture.types.down.has(0x06), "FIN both ways");
  assert.ok(capture.types.up.has(0x07) && capture.types.down.has(0x08), "PING / PONG");
  assert.ok(client.rttMs !== null);
});

test("server extensions:false answers as v1: no w3p in the ack, only frame types 1..3", async (t) => {
  const service = await echoService(t);
  const { server, client, capture, port } = await capturedTunnel(
    t,
    service.port,
    { extensions: false },
    {},
  );
  await exercise(t, port);
  assert.ok(capture.handshakes.up[0]!.w3p, "the client still offered");
  assert.deepEqual(Object.keys(capture.handshakes.down[0]!), ["port"]);
  assert.deepEqual([...union(capture)].sort(), [1, 2]);
  assert.equal(client.rttMs, null);
  assert.equal([...server.tunnels][0]!.rttMs, null);
});

test("client extensions:false sends a pure v1 handshake and gets pure v1 back", async (t) => {
  const service = await echoService(t);
  const { server, capture, port } = await capturedTunnel(
    t,
    service.port,
    {},
    { extensions: false },
  );
  await exercise(t, port);
  assert.deepEqual(capture.handshakes.up[0], { id: "pi-1" });
  assert.deepEqual(Object.keys(capture.handshakes.down[0]!), ["port"]);
  assert.deepEqual([...union(capture)].sort(), [1, 2]);
  assert.equal([...server.tunnels][0]!.rttMs, null);
});

test("only the intersection is used: a client offering just ping gets PINGs but no OPEN", async (t) => {
  const server = new TunnelServer(FAST_HEARTBEAT);
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const socket = net.connect({ port: controlPort, host: "127.0.0.1" });
  t.after(() => socket.destroy());
  const frames: Array<{ streamId: number; type: number; length: number }> = [];
  let ack: Record<string, unknown> | null = null;
  const reader = new RawFrameReader({
    handshake: (body) => {
      ack = JSON.parse(body.toString("utf8"));
      socket.emit("ack");
    },
    frame: (frame) => {
      frames.push({ streamId: frame.streamId, type: frame.type, length: frame.payload.length });
      // Answer pings so the server keeps us; nothing else.
      if (frame.type === 0x07) socket.write(v1Frame(0, 0x08, Buffer.from(frame.payload)));
      socket.emit("frame");
    },
    badInput: () => socket.destroy(),
  });
  socket.on("data", (chunk: Buffer) => reader.push(chunk));
  socket.write(v1Handshake({ id: "raw", w3p: { v: 2, ext: ["ping", "future-thing"] } }));
  await onceWithin(socket, "ack");
  assert.deepEqual((ack!.w3p as { ext: string[] }).ext, ["ping"]);
  const pinged = () => frames.some((f) => f.type === 0x07);
  while (!pinged()) await onceWithin(socket, "frame");
  const visitor = await connect(t, ack!.port as number);
  while (frames.filter((f) => f.streamId !== 0).length === 0) await onceWithin(socket, "frame");
  const first = frames.find((f) => f.streamId !== 0)!;
  assert.equal(first.type, V1_DATA, "without `open` a stream starts with an empty DATA");
  assert.equal(first.length, 0);
  visitor.destroy();
  const types = new Set(frames.map((f) => f.type));
  for (const type of [0x04, 0x05, 0x06, 0x09]) assert.ok(!types.has(type), `type ${type}`);
});
