import assert from "node:assert/strict";
import net, { type AddressInfo } from "node:net";
import { test } from "node:test";
import { ErrorCodes } from "../../src/errors.js";
import type { ClientEvents, ServerEvents } from "../../src/events.js";
import type { ConnectionContext } from "../../src/options.js";
import { ALL_EXTENSIONS } from "../../src/protocol/constants.js";
import {
  closed,
  connect,
  echoService,
  listen,
  onceWithin,
  readAll,
  readBytes,
  until,
} from "../helpers/net.js";
import {
  connectionRefused,
  freePorts,
  makeClient,
  rawHandshake,
  startServer,
  taggedEchoService,
} from "../helpers/ops.js";

type Ack = ClientEvents["authentication-acknowledged"];
type Rejected = ServerEvents["visitor-rejected"];

/** Echo through `port`, proving a live tunnel serves it. */
async function roundTrip(t: import("node:test").TestContext, port: number, text: string) {
  const visitor = await connect(t, port);
  visitor.write(text);
  const got = (await readBytes(visitor, text.length)).toString();
  visitor.destroy();
  return got;
}

test("a client that drops and reconnects within the lease gets the same ports back", async (t) => {
  const alpha = await taggedEchoService(t, "alpha");
  const beta = await taggedEchoService(t, "beta");
  const { server, controlPort } = await startServer(t, { portLeaseMs: 30_000 });
  const client = makeClient(t, controlPort, {
    clientId: "pi-kitchen",
    services: [
      { name: "alpha", localPort: alpha.port },
      { name: "beta", localPort: beta.port },
    ],
  });
  const firstAck = onceWithin<Ack>(client.events, "authentication-acknowledged");
  await client.start();
  const before = (await firstAck).services;

  // The server loses the control connection (a network drop); the client reconnects by itself.
  const secondAck = onceWithin<Ack>(client.events, "authentication-acknowledged");
  const [tunnel] = [...server.tunnels];
  assert.equal(tunnel?.clientId, "pi-kitchen");
  tunnel!.socket.destroy();
  const after = (await secondAck).services;

  assert.deepEqual(after, before, "every service keeps its public port");
  assert.equal(server.tunnels.size, 1);
  assert.deepEqual(server.stats().heldPorts, []);
  assert.equal(await roundTrip(t, after[0]!.port, "a"), "alpha:a");
  assert.equal(await roundTrip(t, after[1]!.port, "b"), "beta:b");
});

test("during the lease the port is held: visitors are closed at once, others cannot take it", async (t) => {
  const echo = await echoService(t);
  const [only] = await freePorts(1);
  const { server, controlPort } = await startServer(t, {
    portLeaseMs: 30_000,
    allowedPorts: [only!],
  });
  const device = makeClient(t, controlPort, { clientId: "pi-1", localServicePort: echo.port });
  assert.equal(await device.start(), only);
  await device.stop();
  await until(() => server.tunnels.size === 0, 5_000, "tunnel gone");
  assert.deepEqual(server.stats().heldPorts, [only]);

  const rejected = onceWithin<Rejected>(server.events, "visitor-rejected");
  const visitor = await connect(t, only!);
  const { clientTunnel, err } = await rejected;
  assert.equal(clientTunnel, null, "nobody serves a held port");
  assert.equal(err.code, "W3P_ERR_PORT_HELD");
  assert.equal((await readAll(visitor, 5_000)).length, 0, "the visitor is closed without data");

  // Another client (other identity, or none) cannot get the held port.
  for (const clientId of ["someone-else", undefined]) {
    const other = makeClient(t, controlPort, {
      localServicePort: echo.port,
      ...(clientId ? { clientId } : {}),
    });
    const refused = onceWithin<ClientEvents["authentication-rejected"]>(
      other.events,
      "authentication-rejected",
    );
    void other.start();
    assert.equal((await refused).err.code, ErrorCodes.PORT_UNAVAILABLE);
    await other.stop();
  }

  // The device, restarted (a new TunnelClient with the same clientId), gets its port back.
  const restarted = makeClient(t, controlPort, { clientId: "pi-1", localServicePort: echo.port });
  assert.equal(await restarted.start(), only);
  assert.equal(await roundTrip(t, only!, "back"), "back");
});

test("after the lease expires the port is released", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t, { portLeaseMs: 200 });
  const device = makeClient(t, controlPort, { clientId: "pi-2", localServicePort: echo.port });
  const port = await device.start();
  await device.stop();
  await until(() => server.stats().heldPorts.includes(port), 5_000, "port held");
  await until(() => server.stats().heldPorts.length === 0, 5_000, "lease expired");
  assert.equal(await connectionRefused(port), "ECONNREFUSED");

  // Anyone may now ask for it.
  const other = makeClient(t, controlPort, {
    clientId: "someone-else",
    services: [{ name: "default", localPort: echo.port, remotePort: port }],
  });
  assert.equal(await other.start(), port);
});

test("portLeaseMs: 0 releases the port as soon as the client leaves", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t, { portLeaseMs: 0 });
  const device = makeClient(t, controlPort, { clientId: "pi-3", localServicePort: echo.port });
  const port = await device.start();
  await device.stop();
  await until(() => server.tunnels.size === 0, 5_000, "tunnel gone");
  assert.deepEqual(server.stats().heldPorts, []);
  assert.equal(await connectionRefused(port), "ECONNREFUSED");
});

test("at most maxClients identities hold ports on lease: the oldest lease goes first", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t, { portLeaseMs: 30_000, maxClients: 2 });
  const ports: number[] = [];
  for (const clientId of ["pi-a", "pi-b", "pi-c"]) {
    const device = makeClient(t, controlPort, { clientId, localServicePort: echo.port });
    ports.push(await device.start());
    await device.stop();
    await until(() => server.tunnels.size === 0, 5_000, "tunnel gone");
  }
  // pi-a's lease was dropped when pi-c's began: two identities (b, c) still hold theirs.
  await until(() => server.stats().heldPorts.length === 2, 5_000, "two held ports");
  assert.deepEqual(server.stats().heldPorts.sort(), [ports[1]!, ports[2]!].sort());
  assert.equal(await connectionRefused(ports[0]!), "ECONNREFUSED");
});

test("a new session with the same clientId replaces a stale one at once", async (t) => {
  const echo = await taggedEchoService(t, "new");
  const { server, controlPort } = await startServer(t);
  // The stale session: a device that lost power; its socket stays open and silent.
  const stale = await rawHandshake(t, controlPort, {
    id: "pi",
    w3p: { v: 2, ext: ALL_EXTENSIONS, clientId: "pi-4", services: [{ name: "default" }] },
  });
  const stalePort = stale.answer.port as number;
  assert.ok(stalePort > 0);
  await until(() => server.tunnels.size === 1, 5_000, "stale tunnel registered");

  const destroyed = onceWithin<ServerEvents["tunnel-destroyed"]>(server.events, "tunnel-destroyed");
  const device = makeClient(t, controlPort, {
    clientId: "pi-4",
    localServicePort: echo.port,
    authenticationCredentials: { id: "pi" },
  });
  const started = Date.now();
  assert.equal(await device.start(), stalePort, "the same public port, no 'port in use'");
  assert.ok(Date.now() - started < 5_000);
  await closed(stale.socket);
  await destroyed;
  assert.equal(server.tunnels.size, 1);
  assert.equal([...server.tunnels][0]?.clientId, "pi-4");
  assert.equal(await roundTrip(t, stalePort, "hi"), "new:hi");
});

test("two sessions of one identity admitted at the same moment: the later replaces the earlier", async (t) => {
  // The filter holds both handshakes until both arrived, so both admissions run together.
  let bothArrived!: () => void;
  const gate = new Promise<void>((resolve) => {
    bothArrived = resolve;
  });
  let calls = 0;
  const { server, controlPort } = await startServer(t, {
    connectionFilter: async () => {
      if (++calls === 2) bothArrived();
      await gate;
      return true;
    },
  });
  const hello = {
    w3p: { v: 2, ext: ALL_EXTENSIONS, clientId: "twin", services: [{ name: "default" }] },
  };
  const [a, b] = await Promise.all([
    rawHandshake(t, controlPort, hello),
    rawHandshake(t, controlPort, hello),
  ]);
  assert.equal(a.answer.port, b.answer.port, "one identity, one port");
  await until(() => a.socket.closed || b.socket.closed, 5_000, "one session replaced");
  assert.ok(!(a.socket.closed && b.socket.closed), "the other one stays");
  assert.equal(server.tunnels.size, 1);
});

test("a takeover keeps the port even when leases are off (portLeaseMs: 0)", async (t) => {
  const echo = await taggedEchoService(t, "new");
  const { server, controlPort } = await startServer(t, { portLeaseMs: 0 });
  const stale = await rawHandshake(t, controlPort, {
    w3p: { v: 2, ext: ALL_EXTENSIONS, clientId: "pi-6", services: [{ name: "default" }] },
  });
  const device = makeClient(t, controlPort, { clientId: "pi-6", localServicePort: echo.port });
  assert.equal(await device.start(), stale.answer.port);
  await closed(stale.socket);
  assert.equal(server.tunnels.size, 1);
  assert.equal(await roundTrip(t, stale.answer.port as number, "z"), "new:z");
});

test("clients without an identity never take over each other", async (t) => {
  const first = await taggedEchoService(t, "one");
  const second = await taggedEchoService(t, "two");
  const { server, controlPort } = await startServer(t);
  const credentials = { token: "shared-token" };
  const a = makeClient(t, controlPort, {
    localServicePort: first.port,
    authenticationCredentials: credentials,
  });
  const b = makeClient(t, controlPort, {
    localServicePort: second.port,
    authenticationCredentials: credentials,
  });
  const v1 = makeClient(t, controlPort, {
    localServicePort: second.port,
    authenticationCredentials: credentials,
    extensions: false,
  });
  const portA = await a.start();
  const portB = await b.start();
  const portV1 = await v1.start();
  assert.equal(new Set([portA, portB, portV1]).size, 3);
  assert.equal(server.tunnels.size, 3);
  assert.ok(a.isConnected && b.isConnected && v1.isConnected);
  assert.equal(await roundTrip(t, portA, "x"), "one:x");
  assert.equal(await roundTrip(t, portB, "y"), "two:y");
});

test("clientIdentity gives v1 clients a lease and takeover", async (t) => {
  const echo = await taggedEchoService(t, "v1");
  const contexts: ConnectionContext[] = [];
  const { server, controlPort } = await startServer(t, {
    clientIdentity: (credentials, context) => {
      contexts.push(context);
      return typeof credentials.device === "string" ? credentials.device : null;
    },
  });
  const client = makeClient(t, controlPort, {
    extensions: false,
    localServicePort: echo.port,
    authenticationCredentials: { device: "pi-5" },
  });
  const port = await client.start();
  assert.equal([...server.tunnels][0]?.clientId, "pi-5");
  assert.equal(contexts[0]?.remoteAddress, "127.0.0.1");
  assert.ok((contexts[0]?.remotePort ?? 0) > 0);

  // Drop: the v1 client reconnects and reads the same port from the ack.
  const again = onceWithin<Ack>(client.events, "authentication-acknowledged");
  [...server.tunnels][0]!.socket.destroy();
  assert.equal((await again).assignedPort, port);
  assert.equal(await roundTrip(t, port, "ok"), "v1:ok");

  // Takeover: a silent v1 session with the same credentials is replaced by a new one.
  await client.stop();
  const stale = await rawHandshake(t, controlPort, { device: "pi-5" });
  assert.equal(stale.answer.port, port, "the raw v1 session got the held port");
  assert.equal(stale.answer.w3p, undefined, "a v1 client gets a plain v1 ack");
  const replacement = makeClient(t, controlPort, {
    extensions: false,
    localServicePort: echo.port,
    authenticationCredentials: { device: "pi-5" },
  });
  assert.equal(await replacement.start(), port);
  await closed(stale.socket);
  assert.equal(server.tunnels.size, 1);
  assert.equal(await roundTrip(t, port, "new"), "v1:new");
});

test("with clientIdentity, an explicit clientId is scoped under the derived identity", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t, {
    clientIdentity: () => "derived",
  });
  const client = makeClient(t, controlPort, { clientId: "explicit", localServicePort: echo.port });
  await client.start();
  assert.equal([...server.tunnels][0]?.clientId, "derived/explicit");
  assert.equal(server.stats().tunnels[0]?.clientId, "derived/explicit");
});

test("a clientId claimed under another credential never takes over a device", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t, {
    clientIdentity: (credentials) => String(credentials.token),
  });
  const owner = makeClient(t, controlPort, {
    clientId: "pi-1",
    authenticationCredentials: { token: "alice" },
    localServicePort: echo.port,
  });
  const ownerPort = await owner.start();
  const thief = makeClient(t, controlPort, {
    clientId: "pi-1",
    authenticationCredentials: { token: "mallory" },
    localServicePort: echo.port,
  });
  const thiefPort = await thief.start();
  assert.notEqual(thiefPort, ownerPort);
  assert.equal(server.tunnels.size, 2);
  assert.equal(await roundTrip(t, ownerPort, "still mine"), "still mine");
});

test("the same client instance stopped and started again gets its port back", async (t) => {
  const echo = await echoService(t);
  const { controlPort } = await startServer(t);
  const client = makeClient(t, controlPort, { clientId: "pi-7", localServicePort: echo.port });
  const port = await client.start();
  await client.stop();
  assert.equal(await client.start(), port);
  assert.equal(await roundTrip(t, port, "again"), "again");
});

test("stop() closes held ports and cancels their leases", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t, { portLeaseMs: 60_000 });
  const client = makeClient(t, controlPort, { clientId: "pi-8", localServicePort: echo.port });
  const port = await client.start();
  await client.stop();
  await until(() => server.stats().heldPorts.includes(port), 5_000, "port held");
  const started = Date.now();
  await server.stop();
  assert.ok(Date.now() - started < 5_000, "stop() does not wait for the lease");
  assert.deepEqual(server.stats().heldPorts, []);
  assert.equal(await connectionRefused(port), "ECONNREFUSED");
});

test("at most maxHeldPorts ports are held on lease, all identities together: the oldest leases go first", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t, { portLeaseMs: 30_000, maxHeldPorts: 3 });
  const portsOf: number[][] = [];
  for (const clientId of ["pi-a", "pi-b", "pi-c"]) {
    const device = makeClient(t, controlPort, {
      clientId,
      services: [
        { name: "one", localPort: echo.port, localHost: "127.0.0.1" },
        { name: "two", localPort: echo.port, localHost: "127.0.0.1" },
      ],
    });
    await device.start();
    portsOf.push(device.stats().services.map((service) => service.publicPort!));
    await device.stop();
    await until(() => server.tunnels.size === 0, 5_000, "tunnel gone");
  }
  // Each leaves two ports: pi-a's went when pi-b's made four, pi-b's when pi-c's did.
  await until(() => server.stats().heldPorts.length === 2, 5_000, "two held ports");
  assert.deepEqual(server.stats().heldPorts.sort(), [...portsOf[2]!].sort());
  for (const port of [...portsOf[0]!, ...portsOf[1]!]) {
    assert.equal(await connectionRefused(port), "ECONNREFUSED");
  }
  // One identity alone over the limit holds nothing.
  const big = makeClient(t, controlPort, {
    clientId: "pi-big",
    services: ["w", "x", "y", "z"].map((name) => ({ name, localPort: echo.port })),
  });
  await big.start();
  const bigPorts = big.stats().services.map((service) => service.publicPort!);
  await big.stop();
  await until(() => server.stats().heldPorts.length === 0, 5_000, "no held ports");
  assert.equal(await connectionRefused(bigPorts[0]!), "ECONNREFUSED");
});

test("a session of the same identity refused for the port it asks for leaves the running one alone", async (t) => {
  const echo = await taggedEchoService(t, "device");
  const other = await taggedEchoService(t, "other");
  const [first, second] = await freePorts(2);
  const outside = first! > 1024 ? first! - 1 : first! + 2;
  const { server, controlPort } = await startServer(t, {
    portLeaseMs: 30_000,
    allowedPorts: [first!, second!],
  });
  const device = makeClient(t, controlPort, {
    clientId: "pi-9",
    localServicePort: echo.port,
    authenticationCredentials: { id: "pi" },
  });
  const devicePort = await device.start();
  const neighbour = makeClient(t, controlPort, { localServicePort: other.port });
  const neighbourPort = await neighbour.start();
  const [deviceTunnel] = [...server.tunnels].filter((tunnel) => tunnel.clientId === "pi-9");
  let dropped = 0;
  device.events.on("tunnel-disconnected", () => dropped++);

  for (const [port, code] of [
    [outside, ErrorCodes.PORT_NOT_ALLOWED],
    [neighbourPort, ErrorCodes.PORT_UNAVAILABLE],
  ] as const) {
    const refused = onceWithin<ServerEvents["client-error"]>(server.events, "client-error");
    const impostor = await rawHandshake(t, controlPort, {
      id: "pi",
      w3p: { v: 2, ext: ALL_EXTENSIONS, clientId: "pi-9", services: [{ name: "default", port }] },
    });
    assert.equal((await refused).err.code, code);
    await closed(impostor.socket);
    assert.equal(dropped, 0, "the running session was not replaced");
    assert.ok(server.tunnels.has(deviceTunnel!), "the same tunnel serves the device");
    assert.equal(await roundTrip(t, devicePort, "x"), "device:x");
    assert.deepEqual(server.stats().heldPorts, []);
  }
});

test("a device back from its lease and refused for a port the system will not bind keeps its held port", async (t) => {
  const echo = await taggedEchoService(t, "device");
  const [heldPort, busyPort] = await freePorts(2);
  // Taken by another program: within allowedPorts, not one of the server's, so only binding fails.
  const squatter = net.createServer();
  await listen(squatter, "127.0.0.1");
  t.after(() => squatter.close());
  const squatted = (squatter.address() as AddressInfo).port;
  const { server, controlPort } = await startServer(t, {
    portLeaseMs: 30_000,
    allowedPorts: [heldPort!, busyPort!, squatted],
    publicHost: "127.0.0.1",
  });
  const device = makeClient(t, controlPort, {
    clientId: "pi-7",
    services: [{ name: "web", localPort: echo.port, remotePort: heldPort }],
  });
  assert.equal(await device.start(), heldPort);
  await device.stop();
  await until(() => server.tunnels.size === 0, 5_000, "tunnel gone");
  assert.deepEqual(server.stats().heldPorts, [heldPort]);

  const refused = onceWithin<ServerEvents["client-error"]>(server.events, "client-error");
  const back = await rawHandshake(t, controlPort, {
    w3p: {
      v: 2,
      ext: ALL_EXTENSIONS,
      clientId: "pi-7",
      services: [
        { name: "web", port: heldPort },
        { name: "admin", port: squatted },
      ],
    },
  });
  assert.equal((await refused).err.code, ErrorCodes.PORT_UNAVAILABLE);
  await closed(back.socket);
  assert.deepEqual(server.stats().heldPorts, [heldPort], "the held port is still on lease");
  assert.equal(await device.start(), heldPort, "and the device gets it back");
});

test("with clientIdentity, a '/' in a derived identity cannot be forged with a clientId", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t, {
    clientIdentity: (credentials) => String(credentials.token),
  });
  const owner = makeClient(t, controlPort, {
    authenticationCredentials: { token: "team/alice" },
    localServicePort: echo.port,
  });
  const ownerPort = await owner.start();
  const forger = makeClient(t, controlPort, {
    clientId: "alice",
    authenticationCredentials: { token: "team" },
    localServicePort: echo.port,
  });
  assert.notEqual(await forger.start(), ownerPort);
  assert.equal(server.tunnels.size, 2);
  assert.deepEqual(
    server
      .stats()
      .tunnels.map((tunnel) => tunnel.clientId)
      .sort(),
    ["team%2Falice", "team/alice"],
  );
  assert.equal(await roundTrip(t, ownerPort, "still mine"), "still mine");
});
