/**
 * Why a client was refused (`goaway` handshake error) and the server going away (GOAWAY frame):
 * the extension client hears the reason and backs off accordingly; a v1 client is simply closed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import type { TunnelError } from "../../src/errors.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  connect,
  echoService,
  onceWithin,
  readAll,
  readBytes,
  startTunnel,
} from "../helpers/net.js";
import { startV1Client } from "../helpers/v1-peer.js";

test("a refused extension client hears why and waits retryAfterMs before retrying", async (t) => {
  const server = new TunnelServer({ connectionFilter: () => false });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServicePort: 1,
    authenticationCredentials: { id: "bad" },
    reconnectInitialDelayMs: 50,
  });
  t.after(() => client.stop());
  const rejected = onceWithin<{ err: TunnelError; retryAfterMs: number | null }>(
    client.events,
    "authentication-rejected",
  );
  const queued = onceWithin<{ timeout: number }>(client.events, "tunnel-reconnect-queued");
  const errors: TunnelError[] = [];
  client.events.on("tunnel-error", ({ err }) => errors.push(err));
  void client.start();
  const { err, retryAfterMs } = await rejected;
  assert.equal(err.code, "W3P_ERR_AUTH_REJECTED");
  assert.equal(typeof retryAfterMs, "number");
  assert.ok(retryAfterMs! > 50, `the server asked for ${retryAfterMs} ms`);
  const { timeout } = await queued;
  assert.ok(timeout >= retryAfterMs!, `reconnect in ${timeout} ms honours ${retryAfterMs} ms`);
  assert.equal(client.isConnected, false);
  assert.deepEqual(
    errors.map((e) => e.code),
    ["W3P_ERR_AUTH_REJECTED"],
  );
});

test("a full server says so (W3P_ERR_TOO_MANY_CLIENTS) and the client backs off as asked", async (t) => {
  const service = await echoService(t);
  const { controlPort } = await startTunnel(t, service.port, { maxClients: 1 });
  const second = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServicePort: service.port,
    reconnectInitialDelayMs: 50,
  });
  t.after(() => second.stop());
  const rejected = onceWithin<{ err: TunnelError; retryAfterMs: number | null }>(
    second.events,
    "authentication-rejected",
  );
  const queued = onceWithin<{ timeout: number }>(second.events, "tunnel-reconnect-queued");
  void second.start();
  const { err, retryAfterMs } = await rejected;
  assert.equal(err.code, "W3P_ERR_TOO_MANY_CLIENTS");
  assert.ok(typeof retryAfterMs === "number" && retryAfterMs > 0);
  assert.ok((await queued).timeout >= retryAfterMs);
});

test("a refused v1 client is simply closed (no refusal handshake)", async (t) => {
  const server = new TunnelServer({ connectionFilter: () => false });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  await assert.rejects(startV1Client(t, { controlPort, servicePort: 1 }), /closed the v1 client/);
  // And the raw bytes: nothing at all came back.
  const socket = await connect(t, controlPort);
  const everything = readAll(socket);
  socket.write(Buffer.from("57335054554e4c000000027b7d", "hex"));
  assert.equal((await everything).length, 0);
});

test("server.stop() tells an extension client it is going away; it reconnects to a new server", async (t) => {
  const service = await echoService(t);
  const { server, client, controlPort } = await startTunnel(t, service.port);
  const goingAway = onceWithin<{ err: TunnelError }>(client.events, "server-going-away");
  const queued = onceWithin<{ timeout: number }>(client.events, "tunnel-reconnect-queued");
  const tunnelErrors: TunnelError[] = [];
  client.events.on("tunnel-error", ({ err }) => tunnelErrors.push(err));
  await server.stop();
  const { err } = await goingAway;
  assert.equal(err.code, "W3P_ERR_GOING_AWAY");
  await queued;
  assert.deepEqual(tunnelErrors, [], "an orderly going-away is not an error");

  // A new server on the same control port: the client comes back by itself.
  const replacement = new TunnelServer();
  t.after(() => replacement.stop());
  const back = onceWithin<{ assignedPort: number }>(client.events, "authentication-acknowledged");
  await replacement.start(controlPort, "127.0.0.1");
  const { assignedPort } = await back;
  const visitor = await connect(t, assignedPort);
  visitor.write("again");
  assert.equal((await readBytes(visitor, 5)).toString(), "again");
});

test("server.stop() with a v1 client: no GOAWAY frame, the connection just closes", async (t) => {
  const service = await echoService(t);
  const server = new TunnelServer();
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const client = await startV1Client(t, { controlPort, servicePort: service.port });
  const closed = onceWithin(client.socket, "close");
  await server.stop();
  await closed;
  assert.deepEqual(client.unknownTypes, []);
});

test("clientTunnel.close() sends GOAWAY with its reason; the client comes back", async (t) => {
  const service = await echoService(t);
  const { server, client } = await startTunnel(t, service.port);
  const tunnel = [...server.tunnels][0]!;
  const goingAway = onceWithin<{ err: TunnelError }>(client.events, "server-going-away");
  const back = onceWithin<{ assignedPort: number }>(client.events, "authentication-acknowledged");
  tunnel.close("maintenance");
  const { err } = await goingAway;
  assert.equal(err.code, "W3P_ERR_GOING_AWAY");
  assert.match(err.message, /maintenance/);
  const { assignedPort } = await back;
  const visitor = await connect(t, assignedPort);
  visitor.write("back");
  assert.equal((await readBytes(visitor, 4)).toString(), "back");
});

test("client.stop() tells the server it is leaving: an orderly end, not a tunnel error", async (t) => {
  const service = await echoService(t);
  const { server, client } = await startTunnel(t, service.port);
  const errors: TunnelError[] = [];
  server.events.on("tunnel-error", ({ err }) => errors.push(err));
  server.events.on("client-error", ({ err }) => errors.push(err));
  const destroyed = onceWithin(server.events, "tunnel-destroyed");
  await client.stop();
  await destroyed;
  assert.deepEqual(errors, []);
  assert.equal(server.tunnels.size, 0);
});
