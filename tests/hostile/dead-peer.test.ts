/**
 * Dead peers: a client that vanishes without a FIN (simulated by a raw peer that completes the
 * extension handshake, then stops reading and never answers a ping) is found by the heartbeat,
 * and so is a silent server; a peer that stops reading while we write is found by the write-stall
 * timeout. Also checks the defaults bound detection to a minute and enable TCP keepalive.
 */
import assert from "node:assert/strict";
import net, { type Socket } from "node:net";
import { type TestContext, test } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import { ErrorCodes, type TunnelError } from "../../src/errors.js";
import { DEFAULT_SESSION_CONFIG } from "../../src/mux/session-config.js";
import { resolveCommon } from "../../src/options.js";
import { FrameType } from "../../src/protocol/constants.js";
import type { ClientTunnel } from "../../src/server/client-tunnel.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  closeServer,
  connect,
  echoService,
  listen,
  onceWithin,
  pseudoRandomBytes,
  readBytes,
  sha256,
  startTunnel,
  until,
} from "../helpers/net.js";
import {
  answeringServer,
  backlogBound,
  closedWithin,
  encodeHandshake,
  portRefuses,
  rawConnect,
  rawSession,
  readHandshake,
  serverErrorFor,
  u32,
} from "../helpers/raw-peer.js";
import { v1Frame } from "../helpers/v1-peer.js";

const INTERVAL_MS = 100;
const TIMEOUT_MS = 400;
const SLACK_MS = 2_000;

test("the server finds a client that went silent and closes its public port", async (t) => {
  const service = await echoService(t);
  const heartbeat = { heartbeatIntervalMs: INTERVAL_MS, heartbeatTimeoutMs: TIMEOUT_MS };
  const { server, client, controlPort, publicPort } = await startTunnel(
    t,
    service.port,
    heartbeat,
    heartbeat,
  );
  let healthyDropped = false;
  client.events.on("tunnel-disconnected", () => {
    healthyDropped = true;
  });

  const created = onceWithin<{ clientTunnel: ClientTunnel }>(server.events, "tunnel-created");
  const raw = await rawSession(t, controlPort, ["open", "flow", "fin", "ping", "goaway"]);
  const { clientTunnel } = await created;
  // From here the raw peer is "unplugged": it reads nothing and answers no ping.
  raw.socket.pause();
  const silentSince = Date.now();
  const destroyed = onceWithin(server.events, "tunnel-destroyed", TIMEOUT_MS + SLACK_MS);
  const err = await serverErrorFor(server, raw.socket, ["tunnel-error"], TIMEOUT_MS + SLACK_MS);
  const detectedAfter = Date.now() - silentSince;
  assert.equal(err.code, ErrorCodes.PEER_TIMEOUT);
  assert.ok(detectedAfter >= TIMEOUT_MS - 50, `declared dead after ${detectedAfter} ms`);
  assert.ok(detectedAfter < TIMEOUT_MS + SLACK_MS, `declared dead after ${detectedAfter} ms`);
  await destroyed;
  assert.equal(clientTunnel.isClosed, true);
  assert.equal(clientTunnel.socket.destroyed, true, "the server dropped the connection");
  // Plugged back in, the peer finds its connection closed.
  raw.socket.resume();
  await closedWithin(raw.socket, SLACK_MS);
  assert.ok(await portRefuses(raw.publicPort), "its public port is closed");

  // The healthy client answered every ping meanwhile and still echoes.
  assert.equal(healthyDropped, false);
  const visitor = await connect(t, publicPort);
  visitor.write("alive");
  assert.equal((await readBytes(visitor, 5)).toString(), "alive");
});

test("the client finds a silent server and reconnects", async (t) => {
  const evil = await answeringServer(t, (socket) => {
    // Ack with the ping extension, then play dead: read nothing, answer nothing.
    socket.write(encodeHandshake({ port: 40000, w3p: { v: 2, ext: ["ping"], win: 262144 } }));
    socket.pause();
  });
  const { accepted } = evil;
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: evil.port,
    reconnectInitialDelayMs: 20,
    heartbeatIntervalMs: INTERVAL_MS,
    heartbeatTimeoutMs: TIMEOUT_MS,
  });
  t.after(() => client.stop());
  const acked = onceWithin(client.events, "authentication-acknowledged");
  const failed = onceWithin<{ err: TunnelError }>(client.events, "tunnel-error", 5_000);
  void client.start();
  await acked;
  const silentSince = Date.now();
  const { err } = await failed;
  const detectedAfter = Date.now() - silentSince;
  assert.equal(err.code, ErrorCodes.PEER_TIMEOUT);
  assert.ok(detectedAfter < TIMEOUT_MS + SLACK_MS, `declared dead after ${detectedAfter} ms`);
  accepted[0]!.resume();
  await closedWithin(accepted[0]!, SLACK_MS);
  // It dials again by itself.
  if (accepted.length < 2) await onceWithin(evil.server, "connection", SLACK_MS);
  assert.ok(accepted.length >= 2);
});

// A visitor writing 1 MiB at a time fills the control socket's queue past its limit at once; one
// writing 40 KiB at a time is read in 40 KiB chunks, so the queue in front of the dead peer may
// never reach the limit: the stall must be seen from the lack of progress alone.
for (const chunkBytes of [1 << 20, 40 * 1024]) {
  test(`a peer that stops reading while we write is dropped after writeStallTimeoutMs (visitor writes ${chunkBytes >> 10} KiB at a time)`, async (t) => {
    const server = new TunnelServer({
      writeStallTimeoutMs: 300,
      controlWriteBufferBytes: 64 * 1024,
    });
    t.after(() => server.stop());
    const controlPort = await server.start(0, "127.0.0.1");
    // A v1 peer (no ping, so only the stall can find it) that never reads.
    const raw = await rawSession(t, controlPort, null);
    raw.socket.pause();
    const visitor = await rawConnect(t, raw.publicPort);
    const err = serverErrorFor(server, raw.socket, ["tunnel-error"], 20_000);
    // Flood until the kernel buffers are full and the server's writes stall.
    const chunk = Buffer.alloc(chunkBytes, 0x61);
    const flood = setInterval(() => {
      if (!visitor.destroyed && visitor.writableLength < 4 << 20) visitor.write(chunk);
    }, 5);
    try {
      assert.equal((await err).code, ErrorCodes.PEER_TIMEOUT);
    } finally {
      clearInterval(flood);
    }
    await closedWithin(visitor, SLACK_MS);
    raw.socket.destroy();
  });
}

test("a peer that reads slowly but steadily is not taken for a dead one (writeStallTimeoutMs)", async (t) => {
  const server = new TunnelServer({
    writeStallTimeoutMs: 1_000,
    controlWriteBufferBytes: 64 * 1024,
  });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const tunnelErrors: string[] = [];
  server.events.on("tunnel-error", ({ err }) => tunnelErrors.push(err.code));
  const created = onceWithin<{ clientTunnel: ClientTunnel }>(server.events, "tunnel-created");
  const raw = await rawSession(t, controlPort, null);
  const control = (await created).clientTunnel.socket;
  raw.socket.pause();
  const visitor = await rawConnect(t, raw.publicPort);
  const chunk = Buffer.alloc(1 << 20, 0x61);
  const flood = setInterval(() => {
    if (!visitor.destroyed && visitor.writableLength < 4 << 20) visitor.write(chunk);
  }, 5);
  let read = 0;
  let readThisTick = 0;
  let samples = 0;
  let samplesQueued = 0;
  raw.socket.on("data", (data: Buffer) => {
    read += data.length;
    readThisTick += data.length;
    if (readThisTick >= 256 * 1024) raw.socket.pause();
  });
  let reader: NodeJS.Timeout | undefined;
  try {
    // Once the kernel's buffers are full, bytes wait on the server's side of the connection...
    await until(() => control.writableLength > 0, 10_000, "the server's writes to queue");
    // ...and stay waiting while the peer reads 256 KiB every 25 ms (10 MiB/s), far slower than
    // the flood. TCP lets the server's writes complete in bursts (about every 150 ms here), so
    // this is a slow peer, not a dead one.
    reader = setInterval(() => {
      samples++;
      if (control.writableLength > 0) samplesQueued++;
      readThisTick = 0;
      raw.socket.resume();
    }, 25);
    await until(() => read >= 32 << 20 || tunnelErrors.length > 0, 20_000, "32 MiB read slowly");
  } finally {
    clearInterval(flood);
    clearInterval(reader);
  }
  assert.deepEqual(tunnelErrors, [], "no stall reported");
  assert.ok(samplesQueued > samples * 0.8, `writes were queued (${samplesQueued}/${samples})`);
});

test("the defaults find a dead peer within 60 s and enable TCP keepalive", async (t) => {
  const d = DEFAULT_SESSION_CONFIG;
  // Worst case: the peer dies right after a check; found at the first tick past the timeout.
  assert.ok(d.heartbeatTimeoutMs + d.heartbeatIntervalMs <= 60_000);
  assert.ok(d.heartbeatIntervalMs > 0 && d.heartbeatIntervalMs < d.heartbeatTimeoutMs);
  assert.ok(d.writeStallTimeoutMs > 0 && d.writeStallTimeoutMs <= 60_000);
  const common = resolveCommon({});
  assert.ok(common.keepAliveMs > 0 && common.keepAliveMs <= 60_000);
  assert.ok(common.handshakeTimeoutMs > 0 && common.handshakeTimeoutMs <= 60_000);

  // Both ends of a control connection turn keepalive on (spied, then restored).
  const calls: Array<{ socket: Socket; enable: boolean | undefined; delay: number | undefined }> =
    [];
  const original = net.Socket.prototype.setKeepAlive;
  net.Socket.prototype.setKeepAlive = function (this: Socket, enable?: boolean, delay?: number) {
    calls.push({ socket: this, enable, delay });
    return original.call(this, enable, delay);
  };
  t.after(() => {
    net.Socket.prototype.setKeepAlive = original;
  });
  const service = await echoService(t);
  const { server } = await startTunnel(t, service.port);
  net.Socket.prototype.setKeepAlive = original;
  const [tunnel] = [...server.tunnels];
  const serverSide = calls.find((c) => c.socket === tunnel!.socket);
  assert.deepEqual(serverSide && [serverSide.enable, serverSide.delay], [true, 15_000]);
  const clientSide = calls.find(
    (c) => c.socket !== tunnel!.socket && c.socket.remotePort === server.port,
  );
  assert.deepEqual(clientSide && [clientSide.enable, clientSide.delay], [true, 15_000]);
});

test("a silent v1 peer is left to TCP keepalive: no ping is ever sent to it", async (t) => {
  const server = new TunnelServer({ heartbeatIntervalMs: INTERVAL_MS, heartbeatTimeoutMs: 200 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const raw = await rawSession(t, controlPort, null);
  const received: Buffer[] = [];
  raw.socket.on("data", (chunk: Buffer) => received.push(chunk));
  await rawConnect(t, raw.publicPort);
  // Negative check, so it needs a window: several heartbeat timeouts of silence.
  const destroyed = await onceWithin(server.events, "tunnel-destroyed", 1_000).then(
    () => true,
    () => false,
  );
  assert.equal(destroyed, false, "a v1 peer has no heartbeat to miss");
  const bytes = Buffer.concat(received);
  const types: number[] = [];
  for (let at = 0; at + 9 <= bytes.length; at += 4 + bytes.readUInt32BE(at))
    types.push(bytes[at + 8]!);
  assert.deepEqual(types, [FrameType.DATA], "only the visitor's empty data frame, no PING");
});

test("a client that stops reading gets no new visitors once the server's frames pile up (W3P_ERR_TUNNEL_BACKLOG)", async (t) => {
  const limit = 16 * 1024;
  const server = new TunnelServer({ controlWriteBufferBytes: limit, visitorsPerSecond: 1e6 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const created = onceWithin<{ clientTunnel: ClientTunnel }>(server.events, "tunnel-created");
  const raw = await rawSession(t, controlPort, ["open"]);
  const control = (await created).clientTunnel.socket;
  raw.socket.pause(); // reads nothing for now
  // A visitor uploading until the kernel's buffers toward the client are full: from then on the
  // server's frames wait in its queue.
  const uploader = await rawConnect(t, raw.publicPort);
  const chunk = Buffer.alloc(1 << 20, 0x61);
  const flood = setInterval(() => {
    if (!uploader.destroyed && uploader.writableLength < 4 << 20) uploader.write(chunk);
  }, 5);
  try {
    await until(() => control.writableLength > 0, 10_000, "the server's writes to queue");
  } finally {
    clearInterval(flood);
  }
  const refusals: TunnelError[] = [];
  server.events.on("visitor-rejected", ({ err }) => refusals.push(err));
  // Visitors arrive one after another and leave at once: each costs an OPEN and a CLOSE frame.
  let visitors = 0;
  while (refusals.length === 0 && visitors < 20_000) {
    const visitor = net.connect({ port: raw.publicPort, host: "127.0.0.1" });
    visitor.on("error", () => {});
    await onceWithin(visitor, "connect");
    visitor.destroy();
    visitors++;
  }
  assert.equal(refusals[0]?.code, ErrorCodes.TUNNEL_BACKLOG, `after ${visitors} visitors`);
  // The answers' bound, and the upload's frames that were queued first (up to the write limit
  // and a read).
  const writeLimit = Math.max(limit, control.writableHighWaterMark);
  const bound = backlogBound(control, limit) + writeLimit + 64 * 1024;
  assert.ok(control.writableLength <= bound, `queued: ${control.writableLength} (bound ${bound})`);
  // Once the client reads again, visitors get through again.
  raw.socket.resume();
  await until(() => control.writableLength === 0, 10_000, "the server's queue to drain");
  const connected = onceWithin(server.events, "visitor-connected");
  const visitor = await rawConnect(t, raw.publicPort);
  await connected;
  visitor.destroy();
  uploader.destroy();
});

test("a queue that is large with data alone (credit for many streams at once) still takes visitors", async (t) => {
  const STREAMS = 150;
  const server = new TunnelServer({ visitorsPerSecond: 1e6 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const created = onceWithin<{ clientTunnel: ClientTunnel }>(server.events, "tunnel-created");
  const raw = await rawConnect(t, controlPort);
  const acked = readHandshake(raw);
  // Each stream may send the client 1 KiB until the client grants more.
  raw.write(encodeHandshake({ id: "raw", w3p: { v: 2, ext: ["open", "flow"], win: 1024 } }));
  const { message } = await acked;
  const tunnel = (await created).clientTunnel;
  raw.resume(); // takes the OPENs and the first KiB of each stream
  const streamIds: number[] = [];
  server.events.on("visitor-connected", ({ streamId }) => streamIds.push(streamId));
  const upload = Buffer.alloc(64 * 1024, 0x62);
  for (let i = 0; i < STREAMS; i++) {
    const visitor = await rawConnect(t, message.port as number);
    visitor.write(upload);
  }
  await until(
    () => tunnel.stats().services[0]!.bytesOut === STREAMS * 1024,
    10_000,
    "1 KiB from every visitor, the rest waiting for credit",
  );
  raw.pause();
  // Credit for every stream at once: their 63 KiB each go out together, far more than the kernel
  // takes from a client that reads nothing.
  raw.write(Buffer.concat(streamIds.map((id) => v1Frame(id, FrameType.WINDOW, u32(1 << 20)))));
  const backlogLimit = 4 * Math.max(256 * 1024, tunnel.socket.writableHighWaterMark) + 64 * 1024;
  await until(() => tunnel.socket.writableLength >= backlogLimit, 10_000, "the queue to fill");
  const connected = onceWithin(server.events, "visitor-connected");
  await rawConnect(t, message.port as number);
  await connected;
  raw.destroy(); // stop() need not wait for a client that reads nothing
});

/** A local service that accepts and reads nothing until the test resumes its sockets. */
async function stalledService(t: TestContext): Promise<{ port: number; sockets: Socket[] }> {
  const sockets: Socket[] = [];
  const service = net.createServer((socket) => {
    socket.pause();
    sockets.push(socket);
  });
  const port = await listen(service);
  t.after(() => closeServer(service, new Set(sockets)));
  return { port, sockets };
}

/**
 * A v1 client (no flow control) whose one local service reads nothing, and the raw server it is
 * connected to, which has sent it v1 data until the client stopped reading the connection.
 */
async function v1ClientHeldByStuckService(t: TestContext) {
  const service = await stalledService(t);
  const evil = await answeringServer(t, (socket) => socket.write(encodeHandshake({ port: 40000 })));
  const { accepted } = evil;
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: evil.port,
    localServicePort: service.port,
    localServiceHost: "127.0.0.1",
    extensions: false,
    maxStreamBufferBytes: 64 * 1024,
    writeStallTimeoutMs: 400,
    reconnectInitialDelayMs: 60_000,
  });
  t.after(() => client.stop());
  const acked = onceWithin(client.events, "authentication-acknowledged");
  void client.start();
  await acked;
  const server = accepted[0]!;
  const frame = v1Frame(1, FrameType.DATA, Buffer.alloc(64 * 1024, 0x61));
  for (let sent = 0; server.writableLength < 1 << 20; sent += frame.length) {
    if (sent > 64 << 20) throw new Error("the client never stopped reading");
    server.write(frame);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  return { client, server, service };
}

test("a v1 client whose reads are held for a stuck local service still finds a server that reset", async (t) => {
  const { client, server } = await v1ClientHeldByStuckService(t);
  const disconnected = onceWithin<{ hadError: boolean }>(
    client.events,
    "tunnel-disconnected",
    5_000,
  );
  server.resetAndDestroy();
  assert.equal((await disconnected).hadError, true);
});

test("a client whose reads are held for slow local services does not take a pinging server for a dead one", async (t) => {
  const service = await stalledService(t);
  const heartbeat = { heartbeatIntervalMs: INTERVAL_MS, heartbeatTimeoutMs: TIMEOUT_MS };
  // The session's cap on bytes waiting for local sockets, under one stream's window: one
  // stream whose service does not read makes the client stop reading the connection.
  const { client, publicPort } = await startTunnel(t, service.port, heartbeat, {
    ...heartbeat,
    maxSessionBufferBytes: 64 * 1024,
  });
  const errors: TunnelError[] = [];
  client.events.on("tunnel-error", ({ err }) => errors.push(err));
  const payload = pseudoRandomBytes(16 << 20, 5);
  const visitor = await connect(t, publicPort);
  visitor.write(payload);
  await until(() => service.sockets.length === 1, 5_000, "the service to be dialled");
  // Held well past the heartbeat timeout, pings from the server waiting unread.
  let last = -1;
  await until(
    () => {
      const stalled = visitor.writableLength > 0 && visitor.writableLength === last;
      last = visitor.writableLength;
      return stalled;
    },
    10_000,
    "the visitor's writes to stall",
  );
  await new Promise((resolve) => setTimeout(resolve, 4 * TIMEOUT_MS));
  assert.deepEqual(
    errors.map((e) => e.message),
    [],
  );
  assert.equal(client.isConnected, true);
  // Everything arrives once the service reads.
  const local = service.sockets[0]!;
  const received = readBytes(local, payload.length, 20_000);
  local.resume();
  assert.equal(sha256(await received), sha256(payload));
  visitor.end();
});

test("a v1 client does not let a stuck local service hold the tunnel: the stream fails after writeStallTimeoutMs, and a server's end behind it is seen", async (t) => {
  const { client, server, service } = await v1ClientHeldByStuckService(t);
  // The server says goodbye with a FIN that waits behind everything the client has not read.
  const failed = onceWithin<{ err: TunnelError }>(client.events, "service-error", 5_000);
  const disconnected = onceWithin(client.events, "tunnel-disconnected", 10_000);
  server.end();
  assert.equal((await failed).err.code, ErrorCodes.PEER_TIMEOUT);
  // The client let go of the service connection (seen once the service reads on).
  service.sockets[0]!.resume();
  await closedWithin(service.sockets[0]!, 5_000);
  await disconnected;
});
