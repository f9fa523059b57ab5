/**
 * Graceful stop: stop() twice returns the same Promise, start() after stop() works, stop()
 * resolves only when nothing is left open, and a peer that does not cooperate (does not read,
 * hangs in its TLS handshake) cannot hold stop() past `stopGraceMs`.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { test } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import { ErrorCodes } from "../../src/errors.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  CERT,
  connect,
  echoService,
  KEY,
  onceWithin,
  readBytes,
  startService,
  startTunnel,
  until,
} from "../helpers/net.js";
import {
  answeringServer,
  closedWithin,
  encodeFrame,
  encodeHandshake,
  evilServer,
  portRefuses,
  rawConnect,
  rawSession,
  readHandshake,
  within,
} from "../helpers/raw-peer.js";

const SLACK_MS = 2_000;

function serverSockets(server: TunnelServer): number {
  // Private on purpose: stop() must leave this empty, whatever the public stats say.
  return (server as unknown as { sockets: Set<Socket> }).sockets.size;
}

/**
 * An extension client (GOAWAY, no flow control) that never reads, with a visitor pushing until
 * the server's writes to it back up (kernel buffers, then the socket's own): a polite close of
 * its session cannot complete.
 */
async function stuckPeer(
  t: import("node:test").TestContext,
  server: TunnelServer,
  controlPort: number,
): Promise<Awaited<ReturnType<typeof rawSession>>> {
  const raw = await rawSession(t, controlPort, ["open", "fin", "goaway"]); // no flow: unbounded sends
  raw.socket.pause();
  const visitor = await rawConnect(t, raw.publicPort);
  const [tunnel] = [...server.tunnels];
  const chunk = Buffer.alloc(1 << 20, 0x62);
  await until(
    () => {
      if (visitor.writableLength < 4 << 20) visitor.write(chunk);
      return tunnel!.socket.writableLength > 0;
    },
    10_000,
    "the server's writes to back up",
  );
  return raw;
}

test("server.stop(): same Promise twice, nothing left open, start() again", async (t) => {
  const service = await echoService(t);
  const { server, client, controlPort, publicPort } = await startTunnel(t, service.port);
  const visitor = await rawConnect(t, publicPort);
  visitor.write("hi");
  await readBytes(visitor, 2);
  let ends = 0;
  server.events.on("main-server-end", () => ends++);
  const goingAway = onceWithin(client.events, "server-going-away");

  const first = server.stop();
  const second = server.stop();
  assert.equal(first, second, "the same Promise");
  await within(first, SLACK_MS, "stop");
  assert.equal(ends, 1);
  await goingAway;
  assert.equal(serverSockets(server), 0);
  assert.deepEqual(
    { ...server.stats(), tunnels: server.stats().tunnels.length },
    {
      listening: false,
      port: null,
      tunnels: 0,
      pendingConnections: 0,
      publicPorts: 0,
      heldPorts: [],
      connections: 0,
    },
  );
  await closedWithin(visitor, SLACK_MS);
  assert.ok(await portRefuses(controlPort), "control port closed");
  assert.ok(await portRefuses(publicPort), "public port closed");
  // Stopping a stopped server is a no-op.
  await within(server.stop(), SLACK_MS, "stop again");
  assert.equal(ends, 1);

  // start() after stop(): the same object serves again, and the client comes back to it.
  await client.stop();
  const again = await server.start(0, "127.0.0.1");
  const client2 = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: again,
    localServiceHost: "127.0.0.1",
    localServicePort: service.port,
  });
  t.after(() => client2.stop());
  const port2 = await client2.start();
  const visitor2 = await connect(t, port2);
  visitor2.write("again");
  assert.equal((await readBytes(visitor2, 5)).toString(), "again");
  await server.stop();
});

test("server: start() and stop() in the same tick leave nothing listening", async () => {
  const server = new TunnelServer();
  const events: string[] = [];
  server.events.on("main-server-start", () => events.push("start"));
  server.events.on("main-server-end", () => events.push("end"));
  const started = server.start(0, "127.0.0.1");
  const stopped = server.stop();
  const port = await started;
  await within(stopped, SLACK_MS, "stop");
  assert.deepEqual(events, ["start", "end"]);
  assert.equal(server.port, null);
  assert.ok(await portRefuses(port), "the listener that came up was closed");
  assert.equal(server.stats().listening, false);
});

test("server: stop() then start() without awaiting restarts once the stop is done", async () => {
  const server = new TunnelServer();
  const port = await server.start(0, "127.0.0.1");
  const stopped = server.stop();
  const restarted = server.start(port, "127.0.0.1");
  await stopped;
  assert.equal(await within(restarted, SLACK_MS, "restart"), port);
  assert.equal(server.stats().listening, true);
  // A second start while listening is refused, as an event and a rejection.
  const refused = onceWithin<{ err: { code: string } }>(server.events, "main-server-error");
  await assert.rejects(server.start(0, "127.0.0.1"), { code: ErrorCodes.ALREADY_RUNNING });
  assert.equal((await refused).err.code, ErrorCodes.ALREADY_RUNNING);
  await server.stop();
  assert.ok(await portRefuses(port));
});

test("server: a stop() in between calls off a queued start(); the last call wins", async () => {
  const server = new TunnelServer();
  const port = await server.start(0, "127.0.0.1");
  // stop(); start(); stop(): stopped, and the queued start rejected.
  const first = server.stop();
  const queued = server.start(port, "127.0.0.1");
  const second = server.stop();
  await assert.rejects(queued, { code: ErrorCodes.STOPPED });
  await within(Promise.all([first, second]), SLACK_MS, "stops");
  assert.equal(server.stats().listening, false);
  assert.ok(await portRefuses(port));
  // stop(); start(); stop(); start() on a running server: it ends up listening, once.
  await server.start(port, "127.0.0.1");
  const stops = [server.stop()];
  const calledOff = server.start(port, "127.0.0.1");
  stops.push(server.stop());
  const last = server.start(port, "127.0.0.1");
  await assert.rejects(calledOff, { code: ErrorCodes.STOPPED });
  assert.equal(await within(last, SLACK_MS, "the last start"), port);
  await Promise.all(stops);
  assert.equal(server.stats().listening, true);
  await server.stop();
});

test("client: stop(); start() without awaiting reconnects cleanly; stop() then closes it all", async (t) => {
  const service = await echoService(t);
  const { server, client } = await startTunnel(t, service.port);
  let reconnects = 0;
  client.events.on("tunnel-reconnect-queued", () => reconnects++);
  const stopped = client.stop();
  const restarted = client.start();
  await stopped;
  const port = await within(restarted, SLACK_MS, "restart");
  const visitor = await connect(t, port);
  visitor.write("ok");
  assert.equal((await readBytes(visitor, 2)).toString(), "ok");
  assert.equal(reconnects, 0, "the old connection's close was not taken for a loss");
  await within(client.stop(), SLACK_MS, "final stop");
  assert.equal(client.isConnected, false);
  assert.equal(client.isDestroyed, true);
  await until(() => server.tunnels.size === 0, SLACK_MS, "the tunnel to go");

  // stop(); start(); stop(): the queued start is called off.
  await client.start();
  const first = client.stop();
  const queued = client.start();
  const second = client.stop();
  await assert.rejects(queued, { code: ErrorCodes.STOPPED });
  await within(Promise.all([first, second]), SLACK_MS, "stops");
  assert.equal(client.isConnected, false);
  await until(() => server.tunnels.size === 0, SLACK_MS, "no tunnel left");

  // stop(); start(); stop(); start(): one connection, the last start's; nothing after the end.
  await client.start();
  let established = 0;
  client.events.on("tunnel-connection-established", () => established++);
  const stops = [client.stop()];
  const calledOff = client.start();
  stops.push(client.stop());
  const last = client.start();
  await assert.rejects(calledOff, { code: ErrorCodes.STOPPED });
  await within(last, SLACK_MS, "the last start");
  await Promise.all(stops);
  assert.equal(established, 1, "one control connection");
  assert.equal(server.tunnels.size, 1);
  const late: string[] = [];
  const ended = onceWithin(client.events, "tunnel-client-end");
  await within(client.stop(), SLACK_MS, "stop");
  await ended;
  client.events.on("tunnel-connection-established", () => late.push("established"));
  client.events.on("tunnel-disconnected", () => late.push("disconnected"));
  await until(() => server.tunnels.size === 0, SLACK_MS, "no tunnel left after the stop");
  assert.deepEqual(late, []);
});

test("connectionFilter that is not a function: W3P_ERR_INVALID_OPTION, from the constructor or the setter", () => {
  assert.throws(() => new TunnelServer({ connectionFilter: 5 as never }), {
    code: ErrorCodes.INVALID_OPTION,
  });
  const server = new TunnelServer();
  assert.throws(
    () => {
      server.connectionFilter = "yes" as never;
    },
    { code: ErrorCodes.INVALID_OPTION },
  );
  server.connectionFilter = null as never;
  assert.equal(server.connectionFilter({}), true, "null: everyone again");
});

test("server.stop() on a server that never started resolves at once", async () => {
  const server = new TunnelServer();
  await within(server.stop(), 100, "stop");
  await within(server.stop(), 100, "stop");
});

test("server.stop() destroys a peer that does not read after stopGraceMs", async (t) => {
  const server = new TunnelServer({ stopGraceMs: 300, closeGraceMs: 60_000 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const raw = await stuckPeer(t, server, controlPort);
  const startedAt = Date.now();
  await within(server.stop(), 300 + SLACK_MS, "stop with a stuck peer");
  const took = Date.now() - startedAt;
  assert.ok(took >= 250, `stop waited for the grace period (${took} ms)`);
  assert.equal(serverSockets(server), 0);
  raw.socket.resume();
  await closedWithin(raw.socket, SLACK_MS);
  t.diagnostic(`stop took ${took} ms with a peer that does not read`);
});

test("a closing session's flush deadline holds even if the peer trickles bytes", async (t) => {
  // closeGraceMs is the only limit here (stopGraceMs is far off): an idle timer would be reset
  // by every byte the peer sends and never fire.
  const server = new TunnelServer({ stopGraceMs: 60_000, closeGraceMs: 300 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const raw = await stuckPeer(t, server, controlPort);
  // One harmless byte at a time (a PING frame spelled out slowly), every 50 ms.
  const ping = encodeFrame(0, 0x07, Buffer.alloc(8));
  let sent = 0;
  const trickle = setInterval(() => {
    if (!raw.socket.destroyed)
      raw.socket.write(ping.subarray(sent % ping.length, (sent % ping.length) + 1));
    sent++;
  }, 50);
  t.after(() => clearInterval(trickle));
  const startedAt = Date.now();
  await within(server.stop(), 300 + SLACK_MS, "stop with a trickling peer");
  clearInterval(trickle);
  assert.equal(serverSockets(server), 0);
  t.diagnostic(`stop took ${Date.now() - startedAt} ms; the peer sent ${sent} bytes meanwhile`);
});

test("server.stop() is not held up by TLS handshakes that never finish", async (t) => {
  // stopGraceMs far off: connections still in their TLS handshake are dropped at once, without
  // waiting for it (there is nobody to say goodbye to yet).
  const server = new TunnelServer({
    tls: { mainServer: { key: KEY, cert: CERT }, tunnelServer: { key: KEY, cert: CERT } },
    stopGraceMs: 30_000,
    handshakeTimeoutMs: 60_000,
  });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    tls: { ca: CERT, servername: "localhost" },
    localServicePort: 1,
  });
  t.after(() => client.stop());
  const publicPort = await client.start();
  // Raw TCP to both TLS ports: the TLS handshake never starts.
  const stuckControl = await rawConnect(t, controlPort);
  const stuckVisitor = await rawConnect(t, publicPort);
  const startedAt = Date.now();
  await within(server.stop(), SLACK_MS, "stop with stuck TLS handshakes");
  t.diagnostic(`stop took ${Date.now() - startedAt} ms`);
  await closedWithin(stuckControl, SLACK_MS);
  await closedWithin(stuckVisitor, SLACK_MS);
  assert.equal(serverSockets(server), 0);
});

test("client.stop(): same Promise twice, no reconnect after, start() again", async (t) => {
  const service = await echoService(t);
  const { server, client, publicPort } = await startTunnel(t, service.port);
  const visitor = await rawConnect(t, publicPort);
  visitor.write("one");
  await readBytes(visitor, 3);
  let ends = 0;
  let queued = 0;
  client.events.on("tunnel-client-end", () => ends++);
  client.events.on("tunnel-reconnect-queued", () => queued++);
  const destroyed = onceWithin(server.events, "tunnel-destroyed");

  const first = client.stop();
  assert.equal(client.stop(), first, "the same Promise");
  await within(first, SLACK_MS, "client stop");
  await destroyed;
  assert.equal(ends, 1);
  assert.equal(client.isConnected, false);
  assert.equal(client.isDestroyed, true);
  const localSockets = (client as unknown as { localSockets: Set<Socket> }).localSockets;
  assert.equal(localSockets.size, 0, "local service connections closed");
  await closedWithin(visitor, SLACK_MS);
  assert.equal(queued, 0, "no reconnect after stop()");

  const port = await client.start();
  assert.equal(client.isDestroyed, false);
  const visitor2 = await connect(t, port);
  visitor2.write("two");
  assert.equal((await readBytes(visitor2, 3)).toString(), "two");
});

test("client.stop() before any ack rejects start() with W3P_ERR_STOPPED", async (t) => {
  // Nothing listens: the client is between attempts when it is stopped.
  const { port } = await evilServer(t, (socket) => socket.destroy());
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: port,
    reconnectInitialDelayMs: 10_000,
  });
  t.after(() => client.stop());
  const queued = onceWithin(client.events, "tunnel-reconnect-queued");
  const started = client.start();
  await queued;
  await within(client.stop(), SLACK_MS, "stop while waiting to reconnect");
  await assert.rejects(started, { code: ErrorCodes.STOPPED });

  // Stopped while the server holds the handshake unanswered: resolves promptly too.
  const held: Socket[] = [];
  const { port: silentPort } = await evilServer(t, (socket) => {
    held.push(socket);
    void readHandshake(socket).catch(() => {});
  });
  const client2 = new TunnelClient({ tunnelServerHost: "127.0.0.1", tunnelServerPort: silentPort });
  t.after(() => client2.stop());
  const sent = onceWithin(client2.events, "authentication-credentials-sent");
  const started2 = client2.start();
  await sent;
  await within(client2.stop(), SLACK_MS, "stop during the handshake");
  await assert.rejects(started2, { code: ErrorCodes.STOPPED });
  await closedWithin(held[0]!, SLACK_MS);
});

test("client.stop() destroys a server that does not read after stopGraceMs", async (t) => {
  // A local service that floods whoever connects: the client relays it to a server that never reads.
  const flood = Buffer.alloc(1 << 20, 0x66);
  const service = await startService(t, (socket) => {
    const pump = () => {
      while (!socket.destroyed && socket.write(flood)) {}
    };
    socket.on("drain", pump);
    pump();
  });
  const { port, accepted } = await answeringServer(t, (socket) => {
    // v1 ack, then the first frame for stream 1 makes the client dial its local service.
    socket.write(Buffer.concat([encodeHandshake({ port: 40000 }), encodeFrame(1, 1)]));
    socket.pause();
  });
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: port,
    localServiceHost: "127.0.0.1",
    localServicePort: service.port,
    extensions: false,
    stopGraceMs: 300,
  });
  t.after(() => client.stop());
  const connected = onceWithin(client.events, "service-connected");
  await client.start();
  await connected;
  const session = (client as unknown as { session: { socket: Socket } }).session;
  await until(() => session.socket.writableLength > 0, 10_000, "the client's writes to back up");
  const startedAt = Date.now();
  await within(client.stop(), 300 + SLACK_MS, "client stop with a stuck server");
  const took = Date.now() - startedAt;
  t.diagnostic(`client stop took ${took} ms with a server that does not read`);
  assert.ok(took >= 250, `stop waited for the grace period (${took} ms)`);
  assert.equal(session.socket.destroyed, true);
  accepted[0]!.resume();
  await closedWithin(accepted[0]!, SLACK_MS);
});

test("stop(): each stream's disconnected event comes before its tunnel's end, on both sides", async (t) => {
  const service = await echoService(t);
  const { server, client, publicPort } = await startTunnel(t, service.port);
  const serverEvents: string[] = [];
  for (const event of [
    "visitor-disconnected",
    "client-disconnected",
    "tunnel-destroyed",
  ] as const) {
    server.events.on(event, () => serverEvents.push(event));
  }
  const clientEvents: string[] = [];
  for (const event of ["service-disconnected", "tunnel-disconnected"] as const) {
    client.events.on(event, () => clientEvents.push(event));
  }
  for (let i = 0; i < 2; i++) {
    const visitor = await connect(t, publicPort);
    visitor.on("error", () => {});
    visitor.write("x");
    await readBytes(visitor, 1);
  }
  await server.stop();
  await until(() => clientEvents.includes("tunnel-disconnected"));
  assert.deepEqual(serverEvents, [
    "visitor-disconnected",
    "visitor-disconnected",
    "client-disconnected",
    "tunnel-destroyed",
  ]);
  assert.deepEqual(clientEvents, [
    "service-disconnected",
    "service-disconnected",
    "tunnel-disconnected",
  ]);
  await client.stop();
});
