/**
 * Code written for the W3P tunnel, used the way it was: a filter assigned after construction,
 * un-awaited start()/stop() driven by events, the refusal message it compared against, a filter
 * returning a truthy record, and `client.tunnelSocketContext`.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import type { TunnelError } from "../../src/errors.js";
import type { ClientEvents } from "../../src/events.js";
import { encodeHandshake } from "../../src/protocol/encode.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { CERT, closed, connect, echoService, KEY, onceWithin, readBytes } from "../helpers/net.js";
import { rawConnect, rawSession } from "../helpers/raw-peer.js";

/** A server started the W3P way: start() not awaited, the port from `main-server-start`. */
async function w3pServer(t: import("node:test").TestContext): Promise<TunnelServer> {
  const server = new TunnelServer();
  t.after(() => server.stop());
  const started = onceWithin<{ port: number }>(server.events, "main-server-start");
  server.start(0);
  await started;
  return server;
}

function w3pClient(
  t: import("node:test").TestContext,
  server: TunnelServer,
  localServicePort: number,
  credentials: Record<string, unknown>,
): TunnelClient {
  const client = new TunnelClient({
    tunnelServerHost: "localhost",
    tunnelServerPort: server.port!,
    localServicePort,
    authenticationCredentials: credentials,
  });
  t.after(() => client.stop());
  return client;
}

test("server.connectionFilter assigned after construction decides, with W3P's refusal message", async (t) => {
  const echo = await echoService(t);
  const server = await w3pServer(t);
  server.connectionFilter = async (credentials) => credentials?.id === "VALID_ID";

  const invalid = w3pClient(t, server, echo.port, { id: "INVALID_ID" });
  const failed = onceWithin<{ err: TunnelError }>(server.events, "client-authentication-failed");
  const disconnected = onceWithin(invalid.events, "tunnel-disconnected");
  invalid.start().catch(() => {});
  assert.equal((await failed).err.message, "Client rejected by connection filter");
  await disconnected;
  assert.equal(server.tunnels.size, 0);
  const ended = onceWithin(invalid.events, "tunnel-client-end");
  invalid.stop();
  await ended;

  const valid = w3pClient(t, server, echo.port, { id: "VALID_ID" });
  const acked = onceWithin<{ assignedPort: number }>(valid.events, "authentication-acknowledged");
  valid.start();
  const { assignedPort } = await acked;
  assert.equal(server.tunnels.size, 1);
  assert.equal([...server.tunnels][0]!.tunnelAddress?.port, assignedPort);
});

test("a filter returning a truthy record accepts; a falsy one refuses", async (t) => {
  const echo = await echoService(t);
  const server = await w3pServer(t);
  const users = new Map([["pi", { name: "kitchen" }]]);
  server.connectionFilter = ((credentials: Record<string, unknown>) =>
    users.get(String(credentials.id))) as unknown as TunnelServer["connectionFilter"];
  const known = w3pClient(t, server, echo.port, { id: "pi" });
  assert.ok((await known.start()) > 0);
  const unknown = w3pClient(t, server, echo.port, { id: "nobody" });
  const failed = onceWithin(server.events, "client-authentication-failed");
  unknown.start().catch(() => {});
  await failed;
});

test("clientConnection and client.tunnelSocketContext: the control socket and service sockets by stream", async (t) => {
  const echo = await echoService(t);
  const server = await w3pServer(t);
  const client = w3pClient(t, server, echo.port, { id: "pi" });
  // A function, so that the assertion below does not narrow the getter's type for good.
  const context = () => client.tunnelSocketContext;
  assert.equal(context(), null, "null before a connection");
  // Client events carry the connection: the Socket itself, readable the W3P way too.
  const established = onceWithin<ClientEvents["tunnel-connection-established"]>(
    client.events,
    "tunnel-connection-established",
  );
  const port = await client.start();
  const { clientConnection } = await established;
  assert.equal(clientConnection.socket, clientConnection);
  assert.equal(clientConnection.destinationSockets.size, 0);
  assert.equal(context(), clientConnection);
  assert.ok(!Object.keys(clientConnection).includes("destinationSockets"), "not enumerable");

  const visitor = await connect(t, port);
  const serviceConnected = onceWithin(client.events, "service-connected");
  visitor.write("hello");
  await serviceConnected;
  assert.equal((await readBytes(visitor, 5)).toString(), "hello");
  assert.equal(context()?.destinationSockets.size, 1);
  const serviceGone = onceWithin(client.events, "service-disconnected");
  visitor.end();
  await serviceGone;
  assert.equal(context()?.destinationSockets.size, 0);

  // Destroying the control socket through it: the client notices and reconnects by itself.
  const queued = onceWithin(client.events, "tunnel-reconnect-queued");
  const acked = onceWithin(client.events, "authentication-acknowledged", 5_000);
  context()?.socket.destroy(new Error("<example error>"));
  await queued;
  await acked;
  const [tunnel] = [...server.tunnels];
  const again = await connect(t, (tunnel!.tunnelAddress as AddressInfo).port);
  again.write("back");
  assert.equal((await readBytes(again, 4)).toString(), "back");
});

test("stop() un-awaited: main-server-end and tunnel-client-end come promptly", async (t) => {
  const echo = await echoService(t);
  const server = await w3pServer(t);
  const client = w3pClient(t, server, echo.port, {});
  await client.start();
  const clientEnd = once(client.events, "tunnel-client-end", { signal: AbortSignal.timeout(500) });
  client.stop();
  await clientEnd;
  const serverEnd = once(server.events, "main-server-end", { signal: AbortSignal.timeout(500) });
  server.stop();
  await serverEnd;
});

test("ports as decimal strings work (as with net); anything else is W3P_ERR_INVALID_OPTION", async (t) => {
  const echo = await echoService(t);
  const server = await w3pServer(t);
  const asString = (port: number) => String(port) as unknown as number;
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: asString(server.port!),
    localServiceHost: "127.0.0.1",
    localServicePort: asString(echo.port),
  });
  t.after(() => client.stop());
  const port = await client.start();
  const visitor = await connect(t, port);
  visitor.write("str");
  assert.equal((await readBytes(visitor, 3)).toString(), "str");
  for (const bad of ["70000", "abc", "-1", "9000.5", ""]) {
    assert.throws(
      () => new TunnelClient({ tunnelServerPort: bad as unknown as number }),
      { code: "W3P_ERR_INVALID_OPTION" },
      bad,
    );
  }
});

test("TLS client to a plain server: client-error says 'Invalid magic bytes', the client sees an error", async (t) => {
  const server = await w3pServer(t);
  const client = new TunnelClient({
    tunnelServerHost: "localhost",
    tunnelServerPort: server.port!,
    localServicePort: 1,
    tls: { ca: CERT },
  });
  t.after(() => client.stop());
  const within = { signal: AbortSignal.timeout(1_000) };
  const clientError = once(client.events, "tunnel-error", within);
  const disconnected = once(client.events, "tunnel-disconnected", within);
  const serverError = once(server.events, "client-error", within);
  client.start().catch(() => {});
  const [[{ err }], [{ hadError }]] = await Promise.all([serverError, disconnected, clientError]);
  assert.match(err.message, /Invalid magic bytes/i);
  assert.equal(err.code, "W3P_ERR_TLS_MISMATCH", "and it is still named a TLS mismatch");
  assert.equal(hadError, true);
  assert.equal(server.tunnels.size, 0);
});

test("plain client to a TLS server: disconnected and a reconnect queued, no tunnel", async (t) => {
  const server = new TunnelServer({
    tls: { mainServer: { key: KEY, cert: CERT }, tunnelServer: { key: KEY, cert: CERT } },
  });
  t.after(() => server.stop());
  const controlPort = await server.start(0);
  const client = new TunnelClient({
    tunnelServerHost: "localhost",
    tunnelServerPort: controlPort,
    localServicePort: 1,
  });
  t.after(() => client.stop());
  const within = { signal: AbortSignal.timeout(1_500) };
  const disconnected = once(client.events, "tunnel-disconnected", within);
  const queued = once(client.events, "tunnel-reconnect-queued", within);
  client.start().catch(() => {});
  await Promise.all([disconnected, queued]);
  assert.equal(server.tunnels.size, 0);
});

test("the default filter is a function to read and wrap, as W3P's: (await prev(c)) && ...", async (t) => {
  const echo = await echoService(t);
  const server = await w3pServer(t);
  assert.equal(await server.connectionFilter({}), true, "everyone is accepted by default");
  const prev = server.connectionFilter;
  server.connectionFilter = async (credentials) =>
    (await prev(credentials)) && credentials.id !== "banned";

  const banned = w3pClient(t, server, echo.port, { id: "banned" });
  const failed = onceWithin(server.events, "client-authentication-failed");
  banned.start().catch(() => {});
  await failed;
  await banned.stop();
  const welcome = w3pClient(t, server, echo.port, { id: "pi" });
  assert.ok((await welcome.start()) > 0);
});

test("client.authenticationCredentials is read at every attempt: a rotated token is sent on the next reconnect", async (t) => {
  const echo = await echoService(t);
  const server = await w3pServer(t);
  server.connectionFilter = (credentials) => credentials.token === "new";
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: server.port!,
    localServicePort: echo.port,
    authenticationCredentials: { token: "old" },
    reconnectInitialDelayMs: 20,
  });
  t.after(() => client.stop());
  assert.deepEqual(client.authenticationCredentials, { token: "old" });
  const failed = onceWithin(server.events, "client-authentication-failed");
  const started = client.start();
  await failed;
  client.authenticationCredentials = { token: "new" };
  const sent = onceWithin<ClientEvents["authentication-credentials-sent"]>(
    client.events,
    "authentication-credentials-sent",
    10_000,
  );
  assert.deepEqual((await sent).authenticationCredentials, { token: "new" });
  assert.ok((await started) > 0);
  const [tunnel] = [...server.tunnels];
  assert.deepEqual(tunnel!.authenticationCredentials, { token: "new" });
});

test("credentials JSON cannot carry: W3P_ERR_INVALID_OPTION from the constructor, or on tunnel-error when assigned later", async (t) => {
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  for (const bad of [{ n: 1n }, cyclic, ["id"], "token"]) {
    assert.throws(
      () =>
        new TunnelClient({
          localServicePort: 1,
          authenticationCredentials: bad as unknown as Record<string, unknown>,
        }),
      { code: "W3P_ERR_INVALID_OPTION" },
    );
  }
  assert.deepEqual(
    new TunnelClient({ localServicePort: 1, authenticationCredentials: null as never })
      .authenticationCredentials,
    {},
    "null is no credentials, as undefined",
  );

  const echo = await echoService(t);
  const server = await w3pServer(t);
  const client = w3pClient(t, server, echo.port, { id: "pi" });
  client.authenticationCredentials = { n: 1n } as unknown as Record<string, unknown>;
  const failed = onceWithin<ClientEvents["tunnel-error"]>(client.events, "tunnel-error");
  const started = client.start();
  const { err } = await failed;
  assert.equal(err.code, "W3P_ERR_INVALID_OPTION");
  assert.match(err.message, /authenticationCredentials/);
  client.authenticationCredentials = { id: "pi" };
  assert.ok((await started) > 0, "the next attempt sends the mended credentials");
});

test("as in W3P, a control connection failing after its tunnel is up is a client-error (then its tunnel-error)", async (t) => {
  const server = await w3pServer(t);
  const { socket } = await rawSession(t, server.port!, null, { id: "rogue" });
  const order: string[] = [];
  const errors: TunnelError[] = [];
  for (const event of ["client-error", "tunnel-error"] as const) {
    server.events.on(event, ({ err }) => {
      order.push(event);
      errors.push(err);
    });
  }
  server.events.on("client-disconnected", () => order.push("client-disconnected"));
  const destroyed = onceWithin(server.events, "tunnel-destroyed");
  socket.write(Buffer.from("000000050000000177", "hex")); // frame type 0x77: unknown to v1
  await destroyed;
  assert.deepEqual(order, ["client-error", "tunnel-error", "client-disconnected"]);
  assert.equal(errors[0]!.code, "W3P_ERR_UNKNOWN_FRAME_TYPE");
  assert.equal(errors[1], errors[0], "one error, reported on both events");
});

test("server.tls and server.tlsEnabled, as W3P had them", async (t) => {
  const plain = new TunnelServer();
  assert.equal(plain.tls, false);
  assert.equal(plain.tlsEnabled, false);
  const tls = { mainServer: { key: KEY, cert: CERT }, tunnelServer: false as const };
  const secure = new TunnelServer({ tls });
  assert.equal(secure.tls, tls);
  assert.equal(secure.tlsEnabled, true);
  assert.equal(
    new TunnelServer({ tls: { tunnelServer: { key: KEY, cert: CERT } } }).tlsEnabled,
    false,
  );
  t.after(() => secure.stop());
  await secure.start(0);
  assert.equal(secure.tlsEnabled, true);
});

test("a connectionFilter still undecided at handshakeTimeoutMs: the timeout names the filter", async (t) => {
  const server = new TunnelServer({
    handshakeTimeoutMs: 200,
    connectionFilter: () => new Promise<boolean>(() => {}),
  });
  t.after(() => server.stop());
  await server.start(0);
  const failed = onceWithin<{ err: TunnelError }>(server.events, "client-error");
  const socket = await rawConnect(t, server.port!);
  socket.write(encodeHandshake({ id: "pi" }));
  const { err } = await failed;
  assert.equal(err.code, "W3P_ERR_HANDSHAKE_TIMEOUT");
  assert.match(err.message, /connectionFilter did not decide within 200 ms/);
  await closed(socket);
});

test("server.tunnels holds each connected client from client-connected on, also while it authenticates", async (t) => {
  const echo = await echoService(t);
  const server = await w3pServer(t);
  let decide!: (ok: boolean) => void;
  let filterCalled!: () => void;
  const asked = new Promise<void>((resolve) => (filterCalled = resolve));
  server.connectionFilter = () =>
    new Promise<boolean>((resolve) => {
      decide = resolve;
      filterCalled();
    });
  const sizes: number[] = [];
  server.events.on("client-connected", () => sizes.push(server.tunnels.size));
  server.events.on("client-disconnected", () => sizes.push(server.tunnels.size));
  const client = w3pClient(t, server, echo.port, { id: "A" });
  client.start();
  await asked;
  assert.equal(server.tunnels.size, 1);
  const [tunnel] = server.tunnels;
  assert.equal(tunnel!.tunnelAddress, null, "no port yet");
  assert.equal(server.stats().tunnels.length, 0, "stats() lists tunnels that are up");
  assert.equal(server.stats().pendingConnections, 1);
  const acked = onceWithin(client.events, "authentication-acknowledged");
  decide(true);
  await acked;
  assert.equal(server.tunnels.size, 1);
  assert.equal(server.stats().tunnels.length, 1);
  const gone = onceWithin(server.events, "client-disconnected");
  await client.stop();
  await gone;
  assert.equal(server.tunnels.size, 0);
  assert.deepEqual(sizes, [1, 0]);
});

test("credentials too large for a handshake: HANDSHAKE_TOO_LARGE on tunnel-error, not a server hanging up each time", async (t) => {
  const echo = await echoService(t);
  const server = await w3pServer(t);
  const client = w3pClient(t, server, echo.port, { id: "pi", blob: "x".repeat(70_000) });
  let credentialsSent = 0;
  client.events.on("authentication-credentials-sent", () => credentialsSent++);
  const failed = onceWithin<ClientEvents["tunnel-error"]>(client.events, "tunnel-error");
  const started = client.start();
  const { err } = await failed;
  assert.equal(err.code, "W3P_ERR_HANDSHAKE_TOO_LARGE");
  assert.match(err.message, /maxHandshakeBytes/);
  assert.equal(credentialsSent, 0, "nothing the server would hang up on was sent");
  client.authenticationCredentials = { id: "pi" };
  assert.ok((await started) > 0, "the next attempt sends the mended credentials");
});
