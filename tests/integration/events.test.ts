/**
 * Every event of the API contract (../shared/API.md) is emitted, with its documented payload, in a
 * scenario that walks through the whole lifecycle: start failure, good and bad clients, visitors,
 * a refused local service, a throwing listener, and stop.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { TunnelClient, TunnelServer } from "../../src/index.js";
import {
  closed,
  connect,
  echoService,
  listen,
  onceWithin,
  readBytes,
  startService,
  until,
} from "../helpers/net.js";

const SERVER_EVENTS = [
  "main-server-start",
  "main-server-error",
  "main-server-end",
  "client-connected",
  "client-protocol-confirmed",
  "client-authentication-failed",
  "client-error",
  "client-disconnected",
  "tunnel-created",
  "tunnel-error",
  "tunnel-destroyed",
  "visitor-connected",
  "visitor-disconnected",
  "visitor-error",
  "data-from-visitor",
  "data-to-visitor",
  "error",
] as const;

const CLIENT_EVENTS = [
  "tunnel-connection-established",
  "authentication-credentials-sent",
  "tunnel-protocol-confirmed",
  "authentication-acknowledged",
  "tunnel-error",
  "tunnel-disconnected",
  "tunnel-reconnect-queued",
  "tunnel-client-end",
  "service-connected",
  "service-disconnected",
  "service-error",
  "data-to-service",
  "data-from-service",
  "error",
] as const;

function record(emitter: NodeJS.EventEmitter, names: readonly string[]): Map<string, unknown[]> {
  const seen = new Map<string, unknown[]>();
  for (const name of names) {
    emitter.on(name, (payload: unknown) => {
      const list = seen.get(name) ?? [];
      list.push(payload);
      seen.set(name, list);
    });
  }
  return seen;
}

test("every server and client event of the API contract is emitted with its payload", async (t) => {
  const echo = await echoService(t);
  // A service that streams until the visitor goes away, to provoke a visitor socket error.
  const firehose = await startService(t, (socket) => {
    const chunk = Buffer.alloc(64 * 1024, 1);
    const pump = () => {
      while (!socket.destroyed && socket.write(chunk)) {}
    };
    socket.on("drain", pump);
    pump();
  });

  const server = new TunnelServer({
    connectionFilter: (credentials) => credentials.id !== "intruder",
  });
  t.after(() => server.stop());
  const serverSeen = record(server.events, SERVER_EVENTS);

  // main-server-error: the control port is taken.
  const blocker = net.createServer();
  const takenPort = await listen(blocker);
  t.after(() => blocker.close());
  await assert.rejects(server.start(takenPort, "127.0.0.1"), { code: "W3P_ERR_PORT_UNAVAILABLE" });
  const controlPort = await server.start(0, "127.0.0.1");

  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServiceHost: "127.0.0.1",
    localServicePort: echo.port,
    authenticationCredentials: { id: "pi-1" },
    reconnectInitialDelayMs: 20,
  });
  t.after(() => client.stop());
  const clientSeen = record(client.events, CLIENT_EVENTS);
  const publicPort = await client.start();

  // Data both ways.
  const visitor = await connect(t, publicPort);
  visitor.write("ping");
  assert.equal((await readBytes(visitor, 4)).toString(), "ping");
  visitor.end();
  await closed(visitor);
  await until(
    () => serverSeen.has("visitor-disconnected") && clientSeen.has("service-disconnected"),
  );

  // error: a listener that throws is reported on `error`, and the tunnel carries on.
  const throwing = () => {
    throw new Error("listener bug");
  };
  server.events.once("visitor-connected", throwing);
  client.events.once("service-connected", throwing);
  const second = await connect(t, publicPort);
  second.write("still works");
  assert.equal((await readBytes(second, 11)).toString(), "still works");
  second.destroy();
  await until(() => serverSeen.has("error") && clientSeen.has("error"));
  assert.equal(
    (serverSeen.get("error")![0] as { err: { code: string } }).err.code,
    "W3P_ERR_LISTENER_THREW",
  );

  // visitor-error: the visitor resets while the service is streaming to it.
  const firehoseClient = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServiceHost: "127.0.0.1",
    localServicePort: firehose.port,
  });
  t.after(() => firehoseClient.stop());
  const firehosePort = await firehoseClient.start();
  const resetter = await connect(t, firehosePort);
  await readBytes(resetter, 1);
  resetter.resetAndDestroy();
  await until(() => serverSeen.has("visitor-error"), 10_000, "visitor-error");
  await firehoseClient.stop();

  // service-error: the local service refuses; the visitor is closed at once.
  const refusedPort = await (async () => {
    const probe = net.createServer();
    const port = await listen(probe);
    await new Promise((resolve) => probe.close(resolve));
    return port;
  })();
  const refusing = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServiceHost: "127.0.0.1",
    localServicePort: refusedPort,
  });
  t.after(() => refusing.stop());
  const refusingSeen = record(refusing.events, ["service-error"]);
  const refusingPort = await refusing.start();
  // Not `connect()`: the reset may arrive before this side has seen its own 'connect'.
  const unlucky = net.connect(refusingPort, "127.0.0.1");
  unlucky.on("error", () => {});
  t.after(() => unlucky.destroy());
  await closed(unlucky);
  await until(() => refusingSeen.has("service-error"));
  assert.equal(
    (refusingSeen.get("service-error")![0] as { err: { code: string } }).err.code,
    "W3P_ERR_LOCAL_CONNECT_FAILED",
  );
  await refusing.stop();

  // client-authentication-failed: the filter refuses.
  const intruder = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServicePort: echo.port,
    authenticationCredentials: { id: "intruder" },
  });
  t.after(() => intruder.stop());
  intruder.start().catch(() => {});
  await onceWithin(intruder.events, "authentication-rejected");
  await intruder.stop();

  // client-error: garbage instead of the magic.
  const garbage = await connect(t, controlPort);
  garbage.end("GET / HTTP/1.1\r\n\r\n");
  await closed(garbage);

  // tunnel-error: an accepted v1 peer sends an unknown frame type.
  const rogue = await connect(t, controlPort);
  const creds = Buffer.from('{"id":"rogue"}');
  const length = Buffer.alloc(4);
  length.writeUInt32BE(creds.length);
  rogue.write(Buffer.concat([Buffer.from("W3PTUNL"), length, creds]));
  await readBytes(rogue, 7 + 4 + 2);
  rogue.end(Buffer.from("000000050000000177", "hex"));
  await closed(rogue);
  await until(() => serverSeen.has("tunnel-error"));

  // The server goes away: the client notices, queues a reconnect, and ends on stop().
  await server.stop();
  await until(() => clientSeen.has("tunnel-reconnect-queued"));
  await until(() => clientSeen.has("tunnel-error"), 10_000, "client tunnel-error");
  await client.stop();

  const missingServer = SERVER_EVENTS.filter((name) => !serverSeen.has(name));
  const missingClient = CLIENT_EVENTS.filter(
    (name) => !clientSeen.has(name) && !refusingSeen.has(name),
  );
  assert.deepEqual(missingServer, [], "server events never emitted");
  assert.deepEqual(missingClient, [], "client events never emitted");

  // Payload shapes from the contract.
  const start = serverSeen.get("main-server-start")![0] as { port: number; secure: boolean };
  assert.equal(start.port, controlPort);
  assert.equal(start.secure, false);
  const created = serverSeen.get("tunnel-created")![0] as Record<string, unknown>;
  assert.deepEqual(created.clientAuthenticationCredentials, { id: "pi-1" });
  assert.equal(created.secure, false);
  const failed = serverSeen.get("client-authentication-failed")![0] as { err: { code: string } };
  assert.equal(failed.err.code, "W3P_ERR_AUTH_REJECTED");
  const clientError = serverSeen.get("client-error")![0] as { err: { code: string } };
  assert.equal(clientError.err.code, "W3P_ERR_BAD_MAGIC");
  const tunnelError = serverSeen.get("tunnel-error")![0] as { err: { code: string } };
  assert.equal(tunnelError.err.code, "W3P_ERR_UNKNOWN_FRAME_TYPE");
  const ack = clientSeen.get("authentication-acknowledged")![0] as { assignedPort: number };
  assert.equal(ack.assignedPort, publicPort);
  const sent = clientSeen.get("authentication-credentials-sent")![0] as Record<string, unknown>;
  assert.deepEqual(sent.authenticationCredentials, { id: "pi-1" });
  const queued = clientSeen.get("tunnel-reconnect-queued")![0] as { timeout: number };
  assert.ok(queued.timeout > 0);
  for (const name of ["data-to-service", "data-from-service"]) {
    const payload = clientSeen.get(name)![0] as { data: Buffer };
    assert.ok(Buffer.isBuffer(payload.data));
  }
  for (const name of ["data-from-visitor", "data-to-visitor"]) {
    const payload = serverSeen.get(name)![0] as { data: Buffer; visitorSocket: net.Socket };
    assert.ok(Buffer.isBuffer(payload.data));
    assert.ok(payload.visitorSocket instanceof net.Socket);
  }
  const errorEvents = [...(serverSeen.get("error") ?? []), ...(clientSeen.get("error") ?? [])];
  for (const payload of errorEvents) {
    assert.ok((payload as { err: Error }).err instanceof Error);
  }
});
