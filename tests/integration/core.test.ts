/** The core behaviour of issue 3 on real sockets: TLS, auth, cleanup, reconnect, IPv6, promises. */
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { TunnelClient, TunnelServer } from "../../src/index.js";
import {
  CERT,
  closed,
  connect,
  echoService,
  KEY,
  listen,
  onceWithin,
  readBytes,
  startTunnel,
  tlsConnect,
  until,
} from "../helpers/net.js";

/** A port nobody listens on (bound, then released). */
async function freePort(host = "127.0.0.1"): Promise<number> {
  const probe = net.createServer();
  const port = await listen(probe, host);
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

async function echoesThrough(t: Parameters<typeof connect>[0], port: number, host = "127.0.0.1") {
  const visitor = await connect(t, port, host);
  visitor.write("round trip");
  assert.equal((await readBytes(visitor, 10)).toString(), "round trip");
  visitor.destroy();
}

test("new TunnelClient(3000) is the shorthand for defaults plus a local port", async () => {
  const client = new TunnelClient(3000);
  const stats = client.stats();
  assert.equal(stats.services.length, 1);
  assert.equal(stats.services[0]!.localPort, 3000);
  assert.equal(stats.services[0]!.localHost, "localhost");
  assert.equal(client.isDestroyed, false);
  await client.stop();
  assert.equal(client.isDestroyed, true);
});

test("TLS on the control connection and on the public port", async (t) => {
  const service = await echoService(t);
  const { server, publicPort } = await startTunnel(
    t,
    service.port,
    { tls: { mainServer: { cert: CERT, key: KEY }, tunnelServer: { cert: CERT, key: KEY } } },
    { tls: { ca: CERT, servername: "localhost" } },
  );
  assert.equal(server.stats().tunnels.length, 1);
  const visitor = await tlsConnect(t, publicPort);
  visitor.write("over tls");
  assert.equal((await readBytes(visitor, 8)).toString(), "over tls");
});

test("a plain client on a TLS control port and a TLS client on a plain one fail with coded errors", async (t) => {
  const service = await echoService(t);
  const tlsServer = new TunnelServer({ tls: { mainServer: { cert: CERT, key: KEY } } });
  t.after(() => tlsServer.stop());
  const tlsPort = await tlsServer.start(0, "127.0.0.1");
  const tlsError = onceWithin<{ err: { code: string }; remoteAddress: string }>(
    tlsServer.events,
    "client-tls-error",
  );
  const plainClient = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: tlsPort,
    localServicePort: service.port,
  });
  t.after(() => plainClient.stop());
  plainClient.start().catch(() => {});
  const plainSide = await onceWithin<{ err: { code: string } }>(plainClient.events, "tunnel-error");
  assert.match(plainSide.err.code, /^W3P_ERR_/);
  const { err: tlsServerErr, remoteAddress } = await tlsError;
  assert.match(tlsServerErr.code, /^W3P_ERR_TLS/);
  assert.equal(remoteAddress, "127.0.0.1", "the event names the peer");
  await plainClient.stop();

  const plainServer = new TunnelServer();
  t.after(() => plainServer.stop());
  const plainPort = await plainServer.start(0, "127.0.0.1");
  const mismatch = onceWithin<{ err: { code: string } }>(plainServer.events, "client-error");
  const tlsClient = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: plainPort,
    localServicePort: service.port,
    tls: { ca: CERT, servername: "localhost" },
  });
  t.after(() => tlsClient.stop());
  tlsClient.start().catch(() => {});
  const tlsSide = await onceWithin<{ err: { code: string } }>(tlsClient.events, "tunnel-error");
  assert.equal(tlsSide.err.code, "W3P_ERR_TLS_HANDSHAKE");
  assert.equal((await mismatch).err.code, "W3P_ERR_TLS_MISMATCH");
});

test("a TLS client whose connection is refused reports the refusal, not a TLS failure", async (t) => {
  const port = await freePort();
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: port,
    localServicePort: 1,
    tls: { ca: CERT, servername: "localhost" },
  });
  t.after(() => client.stop());
  client.start().catch(() => {});
  const { err } = await onceWithin<{ err: { code: string; cause?: { code?: string } } }>(
    client.events,
    "tunnel-error",
  );
  assert.equal(err.code, "W3P_ERR_SOCKET");
  assert.equal(err.cause?.code, "ECONNREFUSED");
});

test("connectionFilter: sync, async, throwing and rejecting filters", async (t) => {
  const service = await echoService(t);
  const seen: { credentials: Record<string, unknown>; remoteAddress: string }[] = [];
  const filters: Record<string, (c: Record<string, unknown>) => boolean | Promise<boolean>> = {
    "sync-yes": () => true,
    "sync-no": () => false,
    "async-yes": async () => true,
    "async-no": async () => false,
    throws: () => {
      throw new Error("filter bug");
    },
    rejects: () => Promise.reject(new Error("filter bug")),
  };
  const server = new TunnelServer({
    connectionFilter: (credentials, context) => {
      seen.push({ credentials, remoteAddress: context.remoteAddress });
      return filters[String(credentials.id)]!(credentials);
    },
    authFailuresPerSecond: 1000,
  });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  for (const [id, expected] of Object.entries({
    "sync-yes": true,
    "sync-no": false,
    "async-yes": true,
    "async-no": false,
    throws: false,
    rejects: false,
  })) {
    const client = new TunnelClient({
      tunnelServerHost: "127.0.0.1",
      tunnelServerPort: controlPort,
      localServiceHost: "127.0.0.1",
      localServicePort: service.port,
      authenticationCredentials: { id },
    });
    t.after(() => client.stop());
    if (expected) {
      const port = await client.start();
      await echoesThrough(t, port);
    } else {
      const failed = onceWithin<{ err: { code: string } }>(
        server.events,
        "client-authentication-failed",
      );
      client.start().catch(() => {});
      const rejected = await onceWithin<{ err: { code: string } }>(
        client.events,
        "authentication-rejected",
      );
      assert.equal(rejected.err.code, "W3P_ERR_AUTH_REJECTED", id);
      assert.equal((await failed).err.code, "W3P_ERR_AUTH_REJECTED", id);
    }
    await client.stop();
  }
  // The extension block never reaches the filter; the context names the peer.
  for (const { credentials, remoteAddress } of seen) {
    assert.deepEqual(Object.keys(credentials), ["id"]);
    assert.equal(remoteAddress, "127.0.0.1");
  }
});

test("a visitor that leaves closes its service connection, and the reverse", async (t) => {
  const serviceSockets: net.Socket[] = [];
  const service = await echoService(t);
  service.server.on("connection", (socket) => serviceSockets.push(socket));
  const { publicPort } = await startTunnel(t, service.port);
  const visitor = await connect(t, publicPort);
  visitor.write("x");
  await readBytes(visitor, 1);
  visitor.destroy();
  await until(() => serviceSockets.length === 1 && serviceSockets[0]!.closed);

  const second = await connect(t, publicPort);
  second.write("y");
  await readBytes(second, 1);
  serviceSockets[1]!.destroy();
  await closed(second);
});

test("a client that goes away closes its public port and all its visitors", async (t) => {
  const service = await echoService(t);
  const { server, client, publicPort } = await startTunnel(t, service.port);
  const visitors = await Promise.all([connect(t, publicPort), connect(t, publicPort)]);
  for (const visitor of visitors) {
    visitor.write("z");
    await readBytes(visitor, 1);
  }
  const destroyed = onceWithin(server.events, "tunnel-destroyed");
  await client.stop();
  await destroyed;
  await Promise.all(visitors.map((visitor) => closed(visitor)));
  assert.equal(server.tunnels.size, 0);
  const late = net.connect(publicPort, "127.0.0.1");
  const outcome = await new Promise<string>((resolve) => {
    late.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? "error"));
    late.once("close", () => resolve("closed"));
  });
  late.destroy();
  assert.ok(outcome === "ECONNREFUSED" || outcome === "closed", outcome);
});

test("the client reconnects after the server restarts, and the new port works", async (t) => {
  const service = await echoService(t);
  const controlPort = await freePort();
  const first = new TunnelServer();
  await first.start(controlPort, "127.0.0.1");
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServiceHost: "127.0.0.1",
    localServicePort: service.port,
    reconnectInitialDelayMs: 20,
    reconnectMaxDelayMs: 200,
  });
  t.after(() => client.stop());
  await echoesThrough(t, await client.start());
  const disconnected = onceWithin(client.events, "tunnel-disconnected");
  await first.stop();
  await disconnected;
  await onceWithin(client.events, "tunnel-reconnect-queued");
  const second = new TunnelServer();
  t.after(() => second.stop());
  const acked = onceWithin<{ assignedPort: number }>(client.events, "authentication-acknowledged");
  await second.start(controlPort, "127.0.0.1");
  const { assignedPort } = await acked;
  await echoesThrough(t, assignedPort);
});

test("IPv6: server, client and local service on ::1", async (t) => {
  const service = await echoService(t, "::1");
  const { publicPort } = await startTunnel(
    t,
    service.port,
    { host: "::1" },
    { tunnelServerHost: "::1", localServiceHost: "::1" },
  );
  await echoesThrough(t, publicPort, "::1");
  await echoesThrough(t, publicPort, "127.0.0.1");
});

test("start() and stop() promises: bound port, repeated stop, stop before any ack", async (t) => {
  const server = new TunnelServer();
  t.after(() => server.stop());
  const port = await server.start(0, "127.0.0.1");
  assert.equal(server.port, port);
  await assert.rejects(server.start(0), { code: "W3P_ERR_ALREADY_RUNNING" });
  const stopA = server.stop();
  const stopB = server.stop();
  assert.equal(stopA, stopB);
  await stopA;
  assert.equal(server.port, null);
  // Start after stop works again.
  const again = await server.start(0, "127.0.0.1");
  assert.ok(again > 0);
  await server.stop();

  const nobody = await freePort();
  const client = new TunnelClient({ tunnelServerHost: "127.0.0.1", tunnelServerPort: nobody });
  t.after(() => client.stop());
  const started = client.start();
  await onceWithin(client.events, "tunnel-reconnect-queued");
  await client.stop();
  await assert.rejects(started, { code: "W3P_ERR_STOPPED" });
  assert.equal(client.isDestroyed, true);
});

test("after stop() no socket, server or timer of the library is left", async (t) => {
  const handles = () =>
    process
      .getActiveResourcesInfo()
      .filter((name) => name !== "FSReqCallback" && name !== "TTYWrap");
  const service = await echoService(t);
  const before = handles().length;
  const server = new TunnelServer({ heartbeatIntervalMs: 50 });
  const controlPort = await server.start(0, "127.0.0.1");
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServiceHost: "127.0.0.1",
    localServicePort: service.port,
  });
  const publicPort = await client.start();
  const visitor = net.connect(publicPort, "127.0.0.1");
  visitor.write("hold");
  await readBytes(visitor, 4);
  await Promise.all([client.stop(), server.stop()]);
  await closed(visitor);
  await until(() => handles().length <= before, 5_000, `handles back to ${before}: ${handles()}`);
});

test("a service named by host name (the default, localhost) serves visitor after visitor", async (t) => {
  const service = await echoService(t);
  const { publicPort } = await startTunnel(t, service.port, {}, { localServiceHost: "localhost" });
  // Sequential visitors: each one's service connection uses the name's cached addresses.
  for (let i = 0; i < 20; i++) {
    const visitor = await connect(t, publicPort);
    visitor.write(`visitor ${i}`);
    assert.equal((await readBytes(visitor, `visitor ${i}`.length)).toString(), `visitor ${i}`);
    visitor.destroy();
  }
});
