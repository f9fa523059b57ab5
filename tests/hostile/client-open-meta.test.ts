/**
 * An evil server sending OPEN frames whose visitor metadata a real server never sends. The client
 * must never throw: odd but valid addresses still give a PROXY header the service can parse,
 * over-long fields close the connection with W3P_ERR_MALFORMED_FRAME, a local service that is
 * down is reported on the stream as usual, and an id opened again right after its CLOSE is a new
 * stream.
 */
import assert from "node:assert/strict";
import net, { type Socket } from "node:net";
import { type TestContext, test } from "node:test";
import type { TunnelClient } from "../../src/client/tunnel-client.js";
import { ErrorCodes, type TunnelError } from "../../src/errors.js";
import type { TunnelClientOptions } from "../../src/options.js";
import { FrameType } from "../../src/protocol/constants.js";
import {
  listen,
  onceWithin,
  readBytes,
  recordingService,
  startService,
  until,
} from "../helpers/net.js";
import {
  answeringServer,
  backlogBound,
  clientOfRawServer,
  closedWithin,
  encodeFrame,
  encodeHandshake,
  floodUntilUnread,
  within,
} from "../helpers/raw-peer.js";

const EXT = ["open", "flow", "fin", "ping", "goaway", "services"];
/** The ack of a server that agrees to every extension. */
const EXT_ACK = { port: 40000, w3p: { v: 2, ext: EXT, win: 262144 } };

/**
 * An evil server that answers the handshake with `ack` and then `first`; `control` is its end of
 * the control connection once it has.
 */
async function ackingServer(
  t: TestContext,
  ack: Record<string, unknown>,
  first: Buffer = Buffer.alloc(0),
): Promise<{ port: number; control: Promise<Socket> }> {
  let accepted: (socket: Socket) => void = () => {};
  const control = new Promise<Socket>((resolve) => {
    accepted = resolve;
  });
  const evil = await answeringServer(t, (socket) => {
    socket.write(Buffer.concat([encodeHandshake(ack), first]));
    accepted(socket);
  });
  return { port: evil.port, control };
}

/** An evil server that acks every extension, then sends `frames` on the control connection. */
async function openWith(
  t: TestContext,
  servicePort: number,
  proxyProtocol: 1 | 2,
  frames: Buffer[],
): Promise<{ client: TunnelClient; control: Promise<Socket> }> {
  const evil = await ackingServer(t, EXT_ACK, Buffer.concat(frames));
  const client = clientOfRawServer(t, evil.port, servicePort, {
    proxyProtocol,
    localConnectTimeoutMs: 2_000,
  });
  return { client, control: evil.control };
}

const open = (streamId: number, meta: Record<string, unknown>) =>
  encodeFrame(streamId, FrameType.OPEN, Buffer.from(JSON.stringify(meta)));

for (const version of [1, 2] as const) {
  test(`PROXY v${version}: an address with a zone full of colons reaches the service as a plain address`, async (t) => {
    const heads: Buffer[] = [];
    const service = await startService(t, (socket) => socket.on("data", (d) => heads.push(d)));
    const meta = {
      family: "IPv6",
      address: "fe80::1%a:b:c:d:e:f:1:2:3",
      port: 5000,
      publicPort: 40000,
      localAddress: "1:2:3:4:5:6:7:8%x:y",
    };
    const { client } = await openWith(t, service.port, version, [open(1, meta)]);
    const connected = await onceWithin<{ visitor: unknown }>(client.events, "service-connected");
    assert.deepEqual(connected.visitor, meta, "the event carries what the server sent");
    const accepted = [...service.sockets][0]!;
    const header = await readBytes(accepted, version === 1 ? 10 : 16);
    if (version === 1) {
      const line = Buffer.concat([header, ...heads]).toString("latin1");
      assert.match(line, /^PROXY TCP6 fe80::1 1:2:3:4:5:6:7:8 5000 40000\r\n/);
    } else {
      assert.equal(header.subarray(0, 12).toString("hex"), "0d0a0d0a000d0a515549540a");
      assert.equal(header[13], 0x21, "TCP over IPv6");
    }
    assert.equal(client.isConnected, true, "the tunnel stays up");
  });
}

test("OPEN for an id the server closed an instant ago opens a new stream while the old one drains", async (t) => {
  // The service never ends its side, so the old stream waits (up to closeGraceMs) for its local
  // connection to close after the server's CLOSE.
  const service = await recordingService(t);
  const { received } = service;
  const meta = { family: "IPv4", address: "203.0.113.9", port: 5000, publicPort: 40000 };
  const openMeta = Buffer.from(JSON.stringify(meta));
  const { client, control } = await openWith(t, service.port, 1, []);
  const server = await control;
  const errors: unknown[] = [];
  client.events.on("tunnel-error", (e) => errors.push(e));
  server.write(
    Buffer.concat([
      encodeFrame(7, FrameType.OPEN, openMeta),
      encodeFrame(7, FrameType.DATA, Buffer.from("one")),
    ]),
  );
  await until(() => received[0]?.endsWith("one") === true);
  server.write(
    Buffer.concat([
      encodeFrame(7, FrameType.CLOSE),
      encodeFrame(7, FrameType.OPEN, openMeta),
      encodeFrame(7, FrameType.DATA, Buffer.from("two")),
    ]),
  );
  await until(() => received[1]?.endsWith("two") === true);
  assert.equal(service.sockets.size, 2, "the old connection still drains beside the new one");
  const [stats] = client.stats().services;
  assert.deepEqual([stats!.streamsActive, stats!.bytesIn], [2, 6], "both streams counted");
  assert.deepEqual(errors, []);
  assert.equal(client.isConnected, true, "the tunnel stays up");
  // An OPEN for a stream the server has not closed is still a protocol error.
  server.write(encodeFrame(7, FrameType.OPEN, openMeta));
  const { err } = await onceWithin<{ err: TunnelError }>(client.events, "tunnel-error");
  assert.equal(err.code, ErrorCodes.UNEXPECTED_FRAME);
});

test("a stream retired for its id's reopening still counts against maxStreams until its socket closes", async (t) => {
  const service = await startService(t, () => {});
  const evil = await ackingServer(t, EXT_ACK);
  const client = clientOfRawServer(t, evil.port, service.port, { maxStreams: 1 });
  const server = await evil.control;
  const open7 = encodeFrame(7, FrameType.OPEN, Buffer.from('{"service":"default"}'));
  server.write(open7);
  await onceWithin(client.events, "service-connected");
  // The service never ends its side, so stream 7's connection lingers after the CLOSE.
  server.write(Buffer.concat([encodeFrame(7, FrameType.CLOSE), open7]));
  const { err } = await onceWithin<{ err: TunnelError }>(client.events, "stream-rejected");
  assert.equal(err.code, ErrorCodes.TOO_MANY_STREAMS);
  assert.equal(service.sockets.size, 1, "no second local connection");
  assert.equal(client.isConnected, true);
});

test("OPEN metadata with an over-long field closes the connection with W3P_ERR_MALFORMED_FRAME", async (t) => {
  const service = await startService(t, () => {});
  const meta = { family: "IPv6", address: `::1%${"x".repeat(5_000)}`, port: 1, publicPort: 2 };
  const { client, control } = await openWith(t, service.port, 2, [open(1, meta)]);
  const { err } = await onceWithin<{ err: TunnelError }>(client.events, "tunnel-error");
  assert.equal(err.code, ErrorCodes.MALFORMED_FRAME);
  await closedWithin(await control);
  assert.equal(service.sockets.size, 0, "no local connection was opened");
});

test("OPEN metadata over 4 KiB, or nested past 32 levels, closes the connection with W3P_ERR_MALFORMED_FRAME", async (t) => {
  const base = { family: "IPv4", address: "203.0.113.7", port: 1, publicPort: 2 };
  const cases: Array<[string, Buffer]> = [
    // Unknown fields are ignored, but not read past the size cap.
    ["over 4 KiB", Buffer.from(JSON.stringify({ ...base, extra: "x".repeat(4_096) }))],
    ["nested 33 deep", Buffer.from(`{"x":${"[".repeat(32)}${"]".repeat(32)}}`)],
  ];
  for (const [what, payload] of cases) {
    const service = await startService(t, () => {});
    const frame = encodeFrame(1, FrameType.OPEN, payload);
    const { client, control } = await openWith(t, service.port, 2, [frame]);
    const { err } = await onceWithin<{ err: TunnelError }>(client.events, "tunnel-error");
    assert.equal(err.code, ErrorCodes.MALFORMED_FRAME, what);
    await closedWithin(await control);
    assert.equal(service.sockets.size, 0, `${what}: no local connection was opened`);
    await client.stop();
  }
});

test("a GOAWAY reason too large or too deep to read is taken as a plain going away", async (t) => {
  const reasons: Array<[Buffer, string]> = [
    [Buffer.from(JSON.stringify({ code: "W3P_ERR_GOING_AWAY", message: "bye" })), "bye"],
    [
      Buffer.from(JSON.stringify({ code: "W3P_ERR_GOING_AWAY", message: "x".repeat(5_000) })),
      "peer is going away",
    ],
    [
      Buffer.from(
        `{"code":"W3P_ERR_GOING_AWAY","message":"deep","x":${"[".repeat(40)}${"]".repeat(40)}}`,
      ),
      "peer is going away",
    ],
  ];
  for (const [body, message] of reasons) {
    const evil = await ackingServer(t, EXT_ACK, encodeFrame(0, FrameType.GOAWAY, body));
    const client = clientOfRawServer(t, evil.port, 1);
    const { err } = await onceWithin<{ err: TunnelError }>(client.events, "server-going-away");
    assert.equal(err.code, ErrorCodes.GOING_AWAY);
    assert.equal(err.message, message);
    await client.stop();
  }
});

test("OPEN toward a local service that is down: a stream error, no crash, the tunnel stays up", async (t) => {
  const probe = net.createServer();
  const deadPort = await listen(probe);
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const meta = { family: "IPv6", address: "fe80::1%a:b:c:d:e:f:1:2:3", port: 1, publicPort: 2 };
  const { client } = await openWith(t, deadPort, 2, [open(1, meta), open(3, meta)]);
  const first = await onceWithin<{ err: TunnelError }>(client.events, "service-error");
  assert.equal(first.err.code, ErrorCodes.LOCAL_CONNECT_FAILED);
  assert.equal(client.isConnected, true);
});

/**
 * An evil server that sends `ack` and `first`, then floods stream opens the client must refuse
 * (`opens` again and again) and reads none of the ERRORs: the client stops reading it with its
 * queue bounded, and once the server reads again it answers every open.
 */
async function floodOfRefusedOpens(
  t: TestContext,
  ack: Record<string, unknown>,
  first: Buffer,
  opens: Buffer,
  opensPerBurst: number,
  clientOptions: Partial<TunnelClientOptions> = {},
  floodBytes = 48 << 20,
): Promise<void> {
  const evil = await ackingServer(t, ack, first);
  // A service that holds every connection: with maxStreams 1 the first open stays open.
  const service = await startService(t, (socket) => socket.resume());
  const client = clientOfRawServer(t, evil.port, service.port, clientOptions);
  let rejected = 0;
  client.events.on("stream-rejected", () => rejected++);
  await onceWithin(client.events, "authentication-acknowledged");
  const control = await evil.control;
  control.pause(); // reads nothing for now: the client's answers can only queue up
  const clientSocket = client.tunnelSocketContext!;
  const flood = await floodUntilUnread(control, clientSocket, opens, floodBytes);
  assert.ok(
    flood.stoppedReading,
    "the client kept reading a server that reads none of its answers",
  );
  const bound = backlogBound(clientSocket, 256 * 1024);
  assert.ok(flood.peakQueued <= bound, `ERRORs queued: ${flood.peakQueued} (bound ${bound})`);
  assert.equal(client.isConnected, true, "the server is not cut off for it");
  // Once the server reads, the client reads on and answers every open it refuses.
  const expected = flood.bursts * opensPerBurst;
  const allRejected = new Promise<void>((resolve) => {
    if (rejected >= expected) resolve();
    client.events.on("stream-rejected", () => {
      if (rejected >= expected) resolve();
    });
  });
  control.resume();
  await within(allRejected, 20_000, `${expected} rejections (got ${rejected})`);
  assert.equal(rejected, expected);
}

test("a server that floods OPENs and never reads the ERRORs is no longer read until it does", async (t) => {
  // Every OPEN names a service the client does not have: each one is answered with an ERROR.
  const opensPerBurst = 4096;
  const burst = Buffer.concat(
    Array.from({ length: opensPerBurst }, (_, i) => open(i + 1, { service: "none" })),
  );
  // Each 27-byte OPEN gets a 9-byte ERROR: the answers must outgrow what the kernel takes in
  // before the client holds back (send buffer up to 4 MiB, receive buffer up to tcp_rmem's
  // maximum, 32 MiB here): 128 MiB of opens, 43 MiB of answers. 48 MiB failed once.
  await floodOfRefusedOpens(t, EXT_ACK, Buffer.alloc(0), burst, opensPerBurst, {}, 128 << 20);
});

test("a v1 server that floods stream-opening DATA past maxStreams and never reads is no longer read until it does", async (t) => {
  // v1 opens a stream with the first (here empty) DATA frame for an unknown id. Stream 1 takes
  // the one stream maxStreams allows; every other id opened is answered with an ERROR.
  const opensPerBurst = 4096;
  const burst = Buffer.concat(
    Array.from({ length: opensPerBurst }, (_, i) => encodeFrame(i + 2, FrameType.DATA)),
  );
  const first = encodeFrame(1, FrameType.DATA);
  await floodOfRefusedOpens(t, { port: 40000 }, first, burst, opensPerBurst, { maxStreams: 1 });
});

test("a client that stopped reading a flooding server says why when its heartbeat gives up", async (t) => {
  const evil = await ackingServer(t, EXT_ACK);
  const client = clientOfRawServer(t, evil.port, 9, {
    // Short, but long enough that a busy machine's pause is not taken for silence.
    heartbeatIntervalMs: 250,
    heartbeatTimeoutMs: 1_000,
  });
  await onceWithin(client.events, "authentication-acknowledged");
  const control = await evil.control;
  control.pause();
  let gaveUp = false;
  // A generous bound: on a loaded machine the flood takes a while to fill the kernel's buffers
  // (10 s was once too short while the rest of the suite ran).
  const failed = onceWithin<{ err: TunnelError }>(client.events, "tunnel-error", 30_000).finally(
    () => {
      gaveUp = true;
    },
  );
  const burst = Buffer.concat(
    Array.from({ length: 4096 }, (_, i) => open(i + 1, { service: "x" })),
  );
  // Opens keep coming (more than the kernel's buffers take of the answers), so the client stays
  // stopped until its heartbeat gives up on the server.
  while (!gaveUp) {
    if (control.writableLength < 8 << 20) control.write(burst);
    await new Promise((resolve) => setImmediate(resolve));
  }
  const { err } = await failed;
  assert.equal(err.code, ErrorCodes.PEER_TIMEOUT);
  assert.match(err.message, /bytes of ours unread/);
});
