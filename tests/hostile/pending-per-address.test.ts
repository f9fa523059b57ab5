/**
 * One address cannot fill the server's pending (unauthenticated) slots: past
 * `maxPendingPerAddress` its connections are refused with W3P_ERR_TOO_MANY_PENDING, while
 * another address still gets in, and a slot frees up when a pending connection leaves.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ErrorCodes } from "../../src/errors.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { onceWithin } from "../helpers/net.js";
import { closedWithin, rawConnect, rejectionFrom } from "../helpers/raw-peer.js";

test("maxPendingPerAddress: one address is capped, another still gets a slot", async (t) => {
  const server = new TunnelServer({ maxPendingConnections: 10, maxPendingPerAddress: 3 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const idle = [];
  for (let i = 0; i < 3; i++) {
    const connected = onceWithin(server.events, "client-connected");
    idle.push(await rawConnect(t, controlPort));
    await connected;
  }
  const rejected = rejectionFrom(server, (p) => p.err.code === ErrorCodes.TOO_MANY_PENDING);
  const fourth = await rawConnect(t, controlPort);
  const refusal = await rejected;
  assert.equal(refusal.remotePort, fourth.localPort);
  assert.match(refusal.err.message, /maxPendingPerAddress/);
  await closedWithin(fourth);

  // Another loopback address is a different peer: it still gets a pending slot.
  const other = onceWithin<{ clientTunnel: { remoteAddress: string } }>(
    server.events,
    "client-connected",
  );
  await rawConnect(t, controlPort, { localAddress: "127.0.0.2" });
  assert.equal((await other).clientTunnel.remoteAddress, "127.0.0.2");

  // A pending connection that leaves frees its address's slot.
  idle[0]!.destroy();
  await onceWithin(server.events, "client-disconnected");
  const again = onceWithin(server.events, "client-connected");
  await rawConnect(t, controlPort);
  await again;
});

test("maxPendingPerAddress defaults to a quarter of maxConnections when that is less than 1,000", async (t) => {
  const server = new TunnelServer({ maxConnections: 16 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  for (let i = 0; i < 4; i++) {
    const connected = onceWithin(server.events, "client-connected");
    await rawConnect(t, controlPort);
    await connected;
  }
  const rejected = rejectionFrom(server, (p) => p.err.code === ErrorCodes.TOO_MANY_PENDING);
  await rawConnect(t, controlPort);
  assert.match((await rejected).err.message, /maxPendingPerAddress/);
  // Another address still gets in: the rest of maxConnections is not held by the first.
  const other = onceWithin(server.events, "client-connected");
  await rawConnect(t, controlPort, { localAddress: "127.0.0.2" });
  await other;
});

test("maxPendingConnections defaults to half of maxConnections when that is below 2,000", async (t) => {
  const server = new TunnelServer({ maxConnections: 16 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  // Two addresses, four each (their per-address share), fill the eight pending places.
  for (const localAddress of ["127.0.0.1", "127.0.0.2"]) {
    for (let i = 0; i < 4; i++) {
      const connected = onceWithin(server.events, "client-connected");
      await rawConnect(t, controlPort, { localAddress });
      await connected;
    }
  }
  const rejected = rejectionFrom(server, (p) => p.err.code === ErrorCodes.TOO_MANY_PENDING);
  await rawConnect(t, controlPort, { localAddress: "127.0.0.3" });
  assert.match((await rejected).err.message, /maxPendingConnections/);
});
