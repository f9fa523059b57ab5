import assert from "node:assert/strict";
import { test } from "node:test";
import type { TunnelClient } from "../../src/client/tunnel-client.js";
import type { ClientEvents, ServerEvents } from "../../src/events.js";
import type { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  connect,
  echoService,
  onceWithin,
  pseudoRandomBytes,
  readBytes,
  until,
} from "../helpers/net.js";
import { makeClient, startServer, taggedEchoService } from "../helpers/ops.js";

/** No heartbeats: the byte counters then only move with the test's own traffic. */
const QUIET = { heartbeatIntervalMs: 0 };

function tunnelStats(server: TunnelServer) {
  const [tunnel] = server.stats().tunnels;
  assert.ok(tunnel, "one tunnel in server.stats()");
  return tunnel;
}

/** Both ends counted the same bytes on the control connection (each side's out is the other's in). */
async function countersAgree(server: TunnelServer, client: TunnelClient): Promise<void> {
  await until(
    () => {
      const s = tunnelStats(server);
      const c = client.stats();
      return s.bytesIn === c.bytesOut && s.bytesOut === c.bytesIn;
    },
    5_000,
    "server and client byte counters to agree",
  );
}

test("stats before any traffic: connected since, addresses, services, no streams", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t, QUIET);
  assert.deepEqual(server.stats().tunnels, []);
  assert.equal(server.stats().listening, true);
  assert.equal(server.stats().port, controlPort);
  const client = makeClient(t, controlPort, {
    ...QUIET,
    clientId: "pi-stats",
    localServicePort: echo.port,
  });
  const before = client.stats();
  assert.equal(before.connected, false);
  assert.equal(before.connectedSince, null);
  const startedAt = Date.now();
  const port = await client.start();

  const s = tunnelStats(server);
  assert.ok(s.connectedSince instanceof Date);
  assert.ok(
    s.connectedSince.getTime() >= startedAt - 1 && s.connectedSince.getTime() <= Date.now(),
  );
  assert.equal(s.remoteAddress, "127.0.0.1");
  assert.equal(s.clientId, "pi-stats");
  assert.equal(s.streamsActive, 0);
  assert.equal(s.streamsTotal, 0);
  assert.equal(s.rttMs, null, "no heartbeat yet");
  assert.deepEqual(s.services, [
    { name: "default", port, streamsActive: 0, streamsTotal: 0, bytesIn: 0, bytesOut: 0 },
  ]);
  assert.ok(s.bytesIn > 0, "the handshake counts");

  const c = client.stats();
  assert.equal(c.connected, true);
  assert.ok(c.connectedSince instanceof Date && c.connectedSince.getTime() >= startedAt - 1);
  assert.equal(c.reconnects, 0);
  assert.equal(c.rttMs, null);
  assert.deepEqual(c.services, [
    {
      name: "default",
      localHost: "127.0.0.1",
      localPort: echo.port,
      publicPort: port,
      streamsActive: 0,
      streamsTotal: 0,
      bytesIn: 0,
      bytesOut: 0,
    },
  ]);
  await countersAgree(server, client);
});

test("bytes in and out match the bytes moved, on both ends and per service", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t, QUIET);
  const client = makeClient(t, controlPort, { ...QUIET, localServicePort: echo.port });
  const port = await client.start();
  await countersAgree(server, client);
  const idle = { server: tunnelStats(server), client: client.stats() };

  const size = 300_000;
  const payload = pseudoRandomBytes(size, 3);
  const visitor = await connect(t, port);
  const echoed = readBytes(visitor, size);
  visitor.write(payload);
  assert.equal((await echoed).length, size);
  visitor.destroy();
  await until(() => tunnelStats(server).streamsActive === 0, 5_000, "stream closed on the server");
  await until(() => client.stats().services[0]!.streamsActive === 0, 5_000, "closed on the client");
  await countersAgree(server, client);

  const s = tunnelStats(server);
  const c = client.stats();
  // Payload bytes exactly, per service: server out = visitor's upload, server in = the echo.
  assert.equal(s.services[0]!.bytesOut, size);
  assert.equal(s.services[0]!.bytesIn, size);
  assert.equal(c.services[0]!.bytesIn, size);
  assert.equal(c.services[0]!.bytesOut, size);
  // The control connection carries the payload plus framing (9 bytes a frame) and control frames.
  const movedOut = s.bytesOut - idle.server.bytesOut;
  const movedIn = s.bytesIn - idle.server.bytesIn;
  for (const moved of [movedOut, movedIn]) {
    assert.ok(moved > size, `${moved} > ${size}`);
    assert.ok(moved < size * 1.05 + 4096, `${moved} is the payload plus little overhead`);
  }
  assert.equal(c.bytesOut - idle.client.bytesOut, movedIn);
  assert.equal(c.bytesIn - idle.client.bytesIn, movedOut);
});

test("streams active and total, per tunnel and per service", async (t) => {
  const alpha = await taggedEchoService(t, "alpha");
  const beta = await taggedEchoService(t, "beta");
  const { server, controlPort } = await startServer(t, QUIET);
  const client = makeClient(t, controlPort, {
    ...QUIET,
    services: [
      { name: "alpha", localPort: alpha.port },
      { name: "beta", localPort: beta.port },
    ],
  });
  const acked = onceWithin<ClientEvents["authentication-acknowledged"]>(
    client.events,
    "authentication-acknowledged",
  );
  await client.start();
  const ports = new Map((await acked).services.map((s) => [s.name, s.port]));

  const visitors = [];
  for (const name of ["alpha", "alpha", "beta"]) {
    const visitor = await connect(t, ports.get(name)!);
    visitor.write("x");
    await readBytes(visitor, name.length + 2);
    visitors.push(visitor);
  }
  let s = tunnelStats(server);
  assert.equal(s.streamsActive, 3);
  assert.equal(s.streamsTotal, 3);
  const byName = (list: { name: string; streamsActive: number; streamsTotal: number }[]) =>
    Object.fromEntries(list.map((e) => [e.name, [e.streamsActive, e.streamsTotal]]));
  assert.deepEqual(byName(s.services), { alpha: [2, 2], beta: [1, 1] });
  assert.deepEqual(byName(client.stats().services), { alpha: [2, 2], beta: [1, 1] });

  visitors[0]!.destroy();
  await until(() => tunnelStats(server).streamsActive === 2, 5_000, "one stream closed");
  await until(() => client.stats().services[0]!.streamsActive === 1, 5_000, "closed on the client");
  s = tunnelStats(server);
  assert.equal(s.streamsTotal, 3);
  assert.deepEqual(byName(s.services), { alpha: [1, 2], beta: [1, 1] });
  assert.deepEqual(byName(client.stats().services), { alpha: [1, 2], beta: [1, 1] });
  assert.equal(s.services.find((e) => e.name === "alpha")?.bytesIn, "alpha:x".length * 2);
  assert.equal(s.services.find((e) => e.name === "beta")?.bytesOut, 1);
});

test("rttMs is filled in after a heartbeat on both ends", async (t) => {
  const echo = await echoService(t);
  const fast = { heartbeatIntervalMs: 50 };
  const { server, controlPort } = await startServer(t, fast);
  const client = makeClient(t, controlPort, { ...fast, localServicePort: echo.port });
  const serverBeat = onceWithin<ServerEvents["heartbeat"]>(server.events, "heartbeat");
  const clientBeat = onceWithin<ClientEvents["heartbeat"]>(client.events, "heartbeat");
  await client.start();
  const { rttMs: serverRtt, clientTunnel } = await serverBeat;
  const { rttMs: clientRtt } = await clientBeat;
  for (const rtt of [serverRtt, clientRtt]) assert.ok(rtt >= 0 && rtt < 2_000, `rtt ${rtt}`);
  const s = tunnelStats(server);
  assert.equal(typeof s.rttMs, "number");
  assert.ok(s.rttMs! >= 0 && s.rttMs! < 2_000);
  assert.equal(clientTunnel.rttMs, s.rttMs);
  const c = client.stats();
  assert.equal(typeof c.rttMs, "number");
  assert.ok(c.rttMs! >= 0 && c.rttMs! < 2_000);
  assert.equal(client.rttMs, c.rttMs);
});

test("after a reconnect the client counts it and its tunnel is new on the server", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t, QUIET);
  const client = makeClient(t, controlPort, { ...QUIET, localServicePort: echo.port });
  const port = await client.start();
  const visitor = await connect(t, port);
  visitor.write("abc");
  await readBytes(visitor, 3);
  visitor.destroy();
  const firstSince = tunnelStats(server).connectedSince;

  const again = onceWithin(client.events, "authentication-acknowledged");
  [...server.tunnels][0]!.socket.destroy();
  await again;
  await until(() => server.stats().tunnels.length === 1, 5_000, "one tunnel again");
  const s = tunnelStats(server);
  assert.ok(s.connectedSince.getTime() >= firstSince.getTime());
  assert.equal(s.streamsTotal, 0, "a new tunnel starts from zero");
  const c = client.stats();
  assert.equal(c.connected, true);
  assert.equal(c.reconnects, 1);
  assert.equal(c.services[0]!.streamsTotal, 1, "the client's service totals span reconnects");
  await countersAgree(server, client);
});
