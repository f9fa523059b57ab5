import assert from "node:assert/strict";
import net, { type AddressInfo } from "node:net";
import { test } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import { ErrorCodes, type TunnelError } from "../../src/errors.js";
import type { ClientEvents, ServerEvents } from "../../src/events.js";
import { MAGIC } from "../../src/protocol/constants.js";
import { encodeHandshake } from "../../src/protocol/encode.js";
import { connect, echoService, onceWithin, readBytes, until } from "../helpers/net.js";
import {
  freePorts,
  httpGet,
  httpService,
  makeClient,
  startServer,
  taggedEchoService,
} from "../helpers/ops.js";
import { closedWithin, rawConnect, serverErrorFor } from "../helpers/raw-peer.js";

type Ack = ClientEvents["authentication-acknowledged"];

test("three services get one public port each and each port reaches its own service", async (t) => {
  const alpha = await taggedEchoService(t, "alpha");
  const beta = await taggedEchoService(t, "beta");
  const web = await httpService(t, "hello from web");
  const { server, controlPort } = await startServer(t);
  const client = makeClient(t, controlPort, {
    services: [
      { name: "alpha", localHost: "127.0.0.1", localPort: alpha.port },
      { name: "beta", localHost: "127.0.0.1", localPort: beta.port },
      { name: "web", localHost: "127.0.0.1", localPort: web.port },
    ],
  });
  const acked = onceWithin<Ack>(client.events, "authentication-acknowledged");
  const created = onceWithin<ServerEvents["tunnel-created"]>(server.events, "tunnel-created");
  const firstPort = await client.start();
  const ack = await acked;
  const { clientTunnel } = await created;

  assert.deepEqual(
    ack.services.map((s) => s.name),
    ["alpha", "beta", "web"],
  );
  const ports = new Map(ack.services.map(({ name, port }) => [name, port]));
  assert.equal(new Set(ports.values()).size, 3, "three distinct public ports");
  assert.equal(ack.assignedPort, ports.get("alpha"), "assignedPort is the first service's");
  assert.equal(firstPort, ports.get("alpha"));
  assert.deepEqual(
    clientTunnel.services.map(({ name, address }) => [name, address.port]),
    [...ports.entries()],
    "the server's ClientTunnel lists the same services and ports",
  );
  assert.equal(clientTunnel.tunnelAddress?.port, ports.get("alpha"));
  assert.deepEqual(
    client.stats().services.map(({ name, publicPort }) => [name, publicPort]),
    [...ports.entries()],
  );

  const visitorEvents: ServerEvents["visitor-connected"][] = [];
  server.events.on("visitor-connected", (e) => visitorEvents.push(e));
  const serviceEvents: ClientEvents["service-connected"][] = [];
  client.events.on("service-connected", (e) => serviceEvents.push(e));
  const disconnected: string[] = [];
  client.events.on("service-disconnected", (e) => disconnected.push(e.service));
  const visitorsGone: string[] = [];
  server.events.on("visitor-disconnected", (e) => visitorsGone.push(e.service));

  for (const name of ["alpha", "beta"]) {
    const visitor = await connect(t, ports.get(name)!);
    visitor.write("ping");
    const expected = `${name}:ping`;
    assert.equal((await readBytes(visitor, expected.length)).toString(), expected);
    visitor.end();
  }
  assert.equal(await httpGet(ports.get("web")!), "hello from web");

  await until(
    () => disconnected.length === 3 && visitorsGone.length === 3,
    5_000,
    "three service-disconnected and visitor-disconnected events",
  );
  assert.deepEqual([...visitorsGone].sort(), ["alpha", "beta", "web"]);
  assert.deepEqual(
    visitorEvents.map((e) => e.service),
    ["alpha", "beta", "web"],
  );
  assert.ok(visitorEvents.every((e) => e.clientTunnel === clientTunnel));
  assert.deepEqual(
    serviceEvents.map((e) => e.service),
    ["alpha", "beta", "web"],
  );
  assert.deepEqual(
    serviceEvents.map((e) => e.visitor?.service),
    ["alpha", "beta", "web"],
    "each OPEN names the service the visitor reached",
  );
  assert.deepEqual(
    serviceEvents.map((e) => e.visitor?.publicPort),
    ["alpha", "beta", "web"].map((name) => ports.get(name)),
  );
  assert.deepEqual([...disconnected].sort(), ["alpha", "beta", "web"]);
});

test("a service may ask for its public port; the others get ports chosen by the server", async (t) => {
  const alpha = await taggedEchoService(t, "alpha");
  const beta = await taggedEchoService(t, "beta");
  const [wanted] = await freePorts(1);
  const { controlPort } = await startServer(t);
  const client = makeClient(t, controlPort, {
    services: [
      { name: "alpha", localPort: alpha.port },
      { name: "beta", localPort: beta.port, remotePort: wanted! },
    ],
  });
  const acked = onceWithin<Ack>(client.events, "authentication-acknowledged");
  await client.start();
  const { services } = await acked;
  assert.equal(services.find((s) => s.name === "beta")?.port, wanted);
  const visitor = await connect(t, wanted!);
  visitor.write("x");
  assert.equal((await readBytes(visitor, 6)).toString(), "beta:x");
});

test("the single localServicePort form still works and is acknowledged as one service", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t);
  const client = makeClient(t, controlPort, { localServicePort: echo.port });
  const acked = onceWithin<Ack>(client.events, "authentication-acknowledged");
  const port = await client.start();
  const ack = await acked;
  assert.deepEqual(ack.services, [{ name: "default", port }]);
  const [tunnel] = [...server.tunnels];
  assert.deepEqual(
    tunnel!.services.map((s) => s.name),
    ["default"],
  );
  const visitor = await connect(t, port);
  visitor.write("plain");
  assert.equal((await readBytes(visitor, 5)).toString(), "plain");
});

/** A fake v1 server: records the client's handshake bytes and acknowledges with `port`. */
async function recordingV1Server(t: import("node:test").TestContext, ackPort: number) {
  const received: Buffer[] = [];
  const server = net.createServer((socket) => {
    socket.on("error", () => {});
    socket.on("data", (chunk: Buffer) => {
      received.push(chunk);
      const all = Buffer.concat(received);
      if (all.length < MAGIC.length + 4) return;
      const length = all.readUInt32BE(MAGIC.length);
      if (all.length === MAGIC.length + 4 + length)
        socket.write(encodeHandshake({ port: ackPort }));
    });
  });
  const sockets = new Set<net.Socket>();
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.listen(0, "127.0.0.1");
  await onceWithin(server, "listening");
  t.after(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return { port: (server.address() as AddressInfo).port, received: () => Buffer.concat(received) };
}

test("extensions: false sends exactly the v1 handshake bytes and reads a v1 ack", async (t) => {
  const fake = await recordingV1Server(t, 41_234);
  const credentials = { id: "allowed-client", token: "s3cret" };
  const client = makeClient(t, fake.port, {
    localServicePort: 3000,
    extensions: false,
    authenticationCredentials: credentials,
  });
  const acked = onceWithin<Ack>(client.events, "authentication-acknowledged");
  assert.equal(await client.start(), 41_234);
  const ack = await acked;
  assert.deepEqual(ack.services, [{ name: "default", port: 41_234 }]);
  const json = Buffer.from(JSON.stringify(credentials));
  const length = Buffer.alloc(4);
  length.writeUInt32BE(json.length);
  assert.deepEqual(fake.received(), Buffer.concat([MAGIC, length, json]));
});

test("the default single-service handshake announces one service named default", async (t) => {
  const fake = await recordingV1Server(t, 41_235);
  const client = makeClient(t, fake.port, {
    localServicePort: 3000,
    authenticationCredentials: { id: "pi" },
  });
  await client.start();
  const bytes = fake.received();
  const body = JSON.parse(bytes.subarray(MAGIC.length + 4).toString()) as {
    id: string;
    w3p: { services: unknown };
  };
  assert.equal(body.id, "pi");
  assert.deepEqual(body.w3p.services, [{ name: "default" }]);
});

test("a server without extensions serves the first service only (v1 behaviour)", async (t) => {
  const alpha = await taggedEchoService(t, "alpha");
  const beta = await taggedEchoService(t, "beta");
  const { server, controlPort } = await startServer(t, { extensions: false });
  const client = makeClient(t, controlPort, {
    services: [
      { name: "alpha", localPort: alpha.port },
      { name: "beta", localPort: beta.port },
    ],
  });
  const acked = onceWithin<Ack>(client.events, "authentication-acknowledged");
  const port = await client.start();
  const ack = await acked;
  assert.deepEqual(ack.services, [{ name: "alpha", port }]);
  assert.equal([...server.tunnels][0]?.services.length, 1);
  const visitor = await connect(t, port);
  visitor.write("v1");
  assert.equal((await readBytes(visitor, 8)).toString(), "alpha:v1");
});

test("more services than maxServicesPerClient: refused with W3P_ERR_TOO_MANY_SERVICES, no port opened", async (t) => {
  const alpha = await taggedEchoService(t, "alpha");
  const { server, controlPort } = await startServer(t, { maxServicesPerClient: 2 });
  const client = makeClient(t, controlPort, {
    services: ["a", "b", "c"].map((name) => ({ name, localPort: alpha.port })),
  });
  const rejected = onceWithin<ClientEvents["authentication-rejected"]>(
    client.events,
    "authentication-rejected",
  );
  client.start().catch(() => {});
  assert.equal((await rejected).err.code, ErrorCodes.TOO_MANY_SERVICES);
  assert.equal(server.tunnels.size, 0);
  assert.deepEqual(server.stats().heldPorts, []);
});

test("a session refused for too many services does not take over the running one", async (t) => {
  const alpha = await taggedEchoService(t, "alpha");
  const { server, controlPort } = await startServer(t, { maxServicesPerClient: 2 });
  const running = makeClient(t, controlPort, { clientId: "pi", localServicePort: alpha.port });
  const port = await running.start();
  const greedy = makeClient(t, controlPort, {
    clientId: "pi",
    services: ["a", "b", "c"].map((name) => ({ name, localPort: alpha.port })),
  });
  const rejected = onceWithin<ClientEvents["authentication-rejected"]>(
    greedy.events,
    "authentication-rejected",
  );
  greedy.start().catch(() => {});
  assert.equal((await rejected).err.code, ErrorCodes.TOO_MANY_SERVICES);
  assert.equal(running.isConnected, true, "the running session was left alone");
  assert.equal(server.tunnels.size, 1);
  const visitor = await connect(t, port);
  visitor.write("x");
  assert.equal((await readBytes(visitor, 7)).toString(), "alpha:x");
});

test("a handshake listing a service name twice, or over 256 services, is a bad handshake", async (t) => {
  const { server, controlPort } = await startServer(t);
  const cases = [
    [{ name: "dup" }, { name: "dup" }],
    Array.from({ length: 257 }, (_, i) => ({ name: `s${i}` })),
  ];
  for (const services of cases) {
    const socket = await rawConnect(t, controlPort);
    const err = serverErrorFor(server, socket);
    socket.write(encodeHandshake({ w3p: { v: 2, ext: ["services"], services } }));
    assert.equal((await err).code, ErrorCodes.BAD_HANDSHAKE);
    await closedWithin(socket);
  }
  assert.equal(server.tunnels.size, 0);
  assert.throws(
    () =>
      new TunnelClient({
        services: Array.from({ length: 257 }, (_, i) => ({ name: `s${i}`, localPort: 1 })),
      }),
    (err: TunnelError) => err.code === ErrorCodes.INVALID_OPTION,
  );
});
