/**
 * start()/stop() called from inside the library's own event listeners, and options that cannot
 * work: each settles the Promises as API.md and DECISIONS.md say, with nothing left running.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import net from "node:net";
import { type TestContext, test } from "node:test";
import { ErrorCodes, TunnelError } from "../../src/errors.js";
import { TunnelClient, TunnelServer } from "../../src/index.js";
import type { TunnelClientOptions } from "../../src/options.js";
import { CERT, echoService, KEY, onceWithin, until, WAIT_MS, withTimeout } from "../helpers/net.js";

/** A key that is not the certificate's: a fresh one, so the pair cannot match. */
const OTHER_KEY = generateKeyPairSync("ec", { namedCurve: "prime256v1" }).privateKey.export({
  type: "pkcs8",
  format: "pem",
});

function invalidOption(err: unknown): boolean {
  return err instanceof TunnelError && err.code === ErrorCodes.INVALID_OPTION;
}

/** A running server and a client for it that has not started (its start() is the test's). */
async function serverAndClient(t: TestContext, clientOptions: Partial<TunnelClientOptions> = {}) {
  const service = await echoService(t);
  const server = new TunnelServer();
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServiceHost: "127.0.0.1",
    localServicePort: service.port,
    ...clientOptions,
  });
  t.after(() => client.stop());
  return { server, client };
}

test("stop() inside tunnel-reconnect-queued leaves no reconnect armed; a later start() opens one session", async (t) => {
  const { server, client } = await serverAndClient(t, { reconnectInitialDelayMs: 20 });
  await client.start();
  let stopped: Promise<void> | null = null;
  client.events.once("tunnel-reconnect-queued", () => {
    stopped = client.stop();
  });
  for (const tunnel of server.tunnels) tunnel.close("test drops the client");
  await withTimeout(onceWithin(client.events, "tunnel-client-end"), WAIT_MS, "the stop");
  await stopped;
  let connections = 0;
  server.events.on("client-connected", () => connections++);
  await withTimeout(client.start(), WAIT_MS, "the restart");
  // Longer than the reconnect delay: a timer left armed would have dialled by now.
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(connections, 1);
  await client.stop();
  await until(() => server.tunnels.size === 0, WAIT_MS, "the server to see the client go");
  assert.equal(server.stats().pendingConnections, 0);
});

test("stop() inside authentication-acknowledged: start() still resolves with the port", async (t) => {
  const { client } = await serverAndClient(t);
  let stopped: Promise<void> | null = null;
  client.events.once("authentication-acknowledged", () => {
    stopped = client.stop();
  });
  const port = await withTimeout(client.start(), WAIT_MS, "start()");
  assert.ok(port > 0);
  await stopped;
  assert.equal(client.isConnected, false);
});

test("start() on a client that is up resolves with the latest acknowledgement's port", async (t) => {
  // The redial waits long enough for the test to take the freed port first.
  const { server, client } = await serverAndClient(t, { reconnectInitialDelayMs: 300 });
  const firstPort = await client.start();
  const destroyed = onceWithin(server.events, "tunnel-destroyed");
  for (const tunnel of server.tunnels) tunnel.close("test drops the client");
  await destroyed;
  // The freed port is taken here, so the reconnected tunnel cannot get it back.
  const holder = net.createServer();
  t.after(() => holder.close());
  await new Promise<void>((resolve, reject) => {
    holder.once("error", reject);
    holder.listen(firstPort, resolve);
  });
  const { assignedPort } = await onceWithin<{ assignedPort: number }>(
    client.events,
    "authentication-acknowledged",
  );
  assert.notEqual(assignedPort, firstPort);
  assert.equal(await withTimeout(client.start(), WAIT_MS, "start() again"), assignedPort);
  assert.equal(client.assignedPort, assignedPort);
});

test("client options that cannot work are INVALID_OPTION at construction", () => {
  const base = { tunnelServerPort: 9000, localServicePort: 3000 };
  const bad: Array<[string, Record<string, unknown>]> = [
    ["tunnelServerHost", { tunnelServerHost: 127 }],
    ["tunnelServerHost", { tunnelServerHost: "" }],
    ["localServiceHost", { localServiceHost: { host: "x" } }],
    ["services.web.localHost", { services: [{ name: "web", localPort: 1, localHost: 5 }] }],
    ["tls", { tls: { minVersion: "TLSv9" } }],
    ["tls", { tls: { cert: CERT, key: OTHER_KEY } }],
    ["proxyProtocol", { proxyProtocol: 3 }],
    ["proxyProtocol", { proxyProtocol: "2" }],
    ["clientId", { clientId: 5 }],
    ["clientId", { clientId: "" }],
    ["services", { services: { name: "web", localPort: 1 } }],
  ];
  for (const [name, options] of bad) {
    assert.throws(
      () => new TunnelClient({ ...base, ...options } as never),
      (err) => invalidOption(err) && (err as Error).message.includes(name),
      name,
    );
  }
});

test("millisecond options longer than Node's longest timer are INVALID_OPTION, not 1 ms timers", () => {
  const tooLong = 2 ** 31;
  const base = { tunnelServerPort: 9000, localServicePort: 3000 };
  for (const name of [
    "handshakeTimeoutMs",
    "reconnectMaxDelayMs",
    "heartbeatTimeoutMs",
    "stopGraceMs",
    "localConnectTimeoutMs",
  ]) {
    assert.throws(
      () => new TunnelClient({ ...base, [name]: tooLong } as never),
      (err) => invalidOption(err) && (err as Error).message.includes(name),
      name,
    );
  }
  for (const name of ["handshakeTimeoutMs", "portLeaseMs", "closeGraceMs", "writeStallTimeoutMs"]) {
    assert.throws(
      () => new TunnelServer({ [name]: tooLong } as never),
      (err) => invalidOption(err) && (err as Error).message.includes(name),
      name,
    );
  }
  // The longest timer itself is fine.
  new TunnelServer({ portLeaseMs: tooLong - 1, handshakeTimeoutMs: tooLong - 1 });
});

test("server options that cannot work are INVALID_OPTION at construction", () => {
  const bad: Array<[string, Record<string, unknown>]> = [
    ["clientIdentity", { clientIdentity: "token" }],
    ["publicHost", { publicHost: 5 }],
    ["publicHost", { publicHost: "" }],
    ["publicHost", { publicHost: "999.1.1.1" }],
    ["publicHost", { publicHost: "[::1]" }],
  ];
  for (const [name, options] of bad) {
    assert.throws(
      () => new TunnelServer(options as never),
      (err) => invalidOption(err) && (err as Error).message.includes(name),
      name,
    );
  }
  for (const publicHost of ["0.0.0.0", "127.0.0.1", "::", "::ffff:127.0.0.1", "localhost", "a.b"]) {
    new TunnelServer({ publicHost });
  }
});

test("hosts no lookup can find are INVALID_OPTION at construction, not an attempt failing for ever", () => {
  const base = { tunnelServerPort: 9000, localServicePort: 3000 };
  for (const [name, host] of [
    ["tunnelServerHost", "999.1.1.1"],
    ["tunnelServerHost", "[::1"],
    ["tunnelServerHost", "example.com/tunnel"],
    ["localServiceHost", "10.0.0.256"],
    ["localServiceHost", "my host"],
  ]) {
    assert.throws(
      () => new TunnelClient({ ...base, [name as string]: host }),
      (err) => invalidOption(err) && (err as Error).message.includes(name as string),
      `${name}: ${host}`,
    );
  }
  for (const host of ["127.0.0.1", "::1", "localhost", "tunnel.example.com", "1.2.3"]) {
    new TunnelClient({ ...base, tunnelServerHost: host, localServiceHost: host });
  }
});

test("connectOptions Node refuses only at connect: attempts fail with events and start() waits for stop()", async (t) => {
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: 9,
    localServicePort: 3000,
    reconnectInitialDelayMs: 10,
    connectOptions: { localAddress: 5 } as never,
  });
  t.after(() => client.stop());
  const started = client.start();
  const err = await onceWithin<{ err: TunnelError }>(client.events, "tunnel-error");
  assert.equal(err.err.code, ErrorCodes.INVALID_OPTION);
  await onceWithin(client.events, "tunnel-reconnect-queued");
  await client.stop();
  await assert.rejects(started, (e) => e instanceof TunnelError && e.code === ErrorCodes.STOPPED);
  // And again: no start() hangs behind the first.
  const again = client.start();
  await onceWithin(client.events, "tunnel-error");
  await client.stop();
  await assert.rejects(again, (e) => e instanceof TunnelError && e.code === ErrorCodes.STOPPED);
});

test("server TLS options that cannot work: INVALID_OPTION at construction or a coded start() failure", async (t) => {
  assert.throws(
    () => new TunnelServer({ tls: { mainServer: { cert: CERT, key: OTHER_KEY } } }),
    (err) => invalidOption(err) && (err as Error).message.includes("tls.mainServer"),
  );
  assert.throws(
    () =>
      new TunnelServer({
        tls: { tunnelServer: { cert: CERT, key: KEY, minVersion: "TLSv9" as never } },
      }),
    (err) => invalidOption(err) && (err as Error).message.includes("tls.tunnelServer"),
  );
  // tls.createServer checks more than a secure context does (its callbacks).
  const server = new TunnelServer({
    tls: { mainServer: { cert: CERT, key: KEY, SNICallback: 5 as never } },
  });
  t.after(() => server.stop());
  const reported = onceWithin<{ err: TunnelError }>(server.events, "main-server-error");
  await assert.rejects(server.start(0, "127.0.0.1"), invalidOption);
  assert.ok(invalidOption((await reported).err));
  assert.equal(server.stats().listening, false);
  // Not stuck "starting": stop() resolves and another start() gets the same clear error.
  await server.stop();
  await assert.rejects(server.start(0, "127.0.0.1"), invalidOption);
});

test("client-tls-error carries the address of a client that gave up on the handshake; stop() reports none", async (t) => {
  const server = new TunnelServer({ tls: { mainServer: { cert: CERT, key: KEY } } });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const tlsErrors: Array<{ remoteAddress: string; remotePort: number }> = [];
  server.events.on("client-tls-error", (event) => tlsErrors.push(event));
  // This client does not trust the self-signed certificate: it aborts the handshake.
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServicePort: 3000,
    tls: {},
  });
  t.after(() => client.stop());
  void client.start().catch(() => {});
  await onceWithin(server.events, "client-tls-error");
  await client.stop();
  assert.equal(tlsErrors[0]!.remoteAddress, "127.0.0.1");
  assert.ok(tlsErrors[0]!.remotePort > 0);
  // A connection that never says hello, still in its handshake when the server stops.
  const raw = net.connect(controlPort, "127.0.0.1");
  raw.on("error", () => {});
  t.after(() => raw.destroy());
  await onceWithin(raw, "connect");
  await until(() => server.stats().pendingConnections > 0, WAIT_MS, "the handshake to count");
  const before = tlsErrors.length;
  await server.stop();
  assert.equal(tlsErrors.length, before);
});

test("server.stop() inside tunnel-created: the client is told the server is going away", async (t) => {
  const { server, client } = await serverAndClient(t);
  let stopped: Promise<void> | null = null;
  server.events.once("tunnel-created", () => {
    stopped = server.stop();
  });
  const goingAway = onceWithin<{ err: TunnelError }>(client.events, "server-going-away");
  void client.start().catch(() => {});
  assert.equal((await goingAway).err.code, ErrorCodes.GOING_AWAY);
  await stopped;
});
