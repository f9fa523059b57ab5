/**
 * kill -9 of a client process in the middle of a transfer: the server notices (the kernel closes
 * the dead process's sockets), destroys the tunnel, closes the public port and the visitor.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { test } from "node:test";
import type { ClientTunnel } from "../../src/server/client-tunnel.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { runFixture } from "../helpers/child.js";
import { echoService, onceWithin, until } from "../helpers/net.js";
import { closedWithin, portRefuses, rawConnect } from "../helpers/raw-peer.js";

test("kill -9 of the client mid-transfer: the server cleans up", async (t) => {
  const service = await echoService(t);
  const server = new TunnelServer();
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const created = onceWithin<{ clientTunnel: ClientTunnel }>(
    server.events,
    "tunnel-created",
    20_000,
  );
  const client = runFixture(t, "client-process.ts", [String(controlPort), String(service.port)]);
  const { port: publicPort } = await client.waitFor((r) => r.event === "ack", 20_000, "ack");
  const { clientTunnel } = await created;
  assert.equal(clientTunnel.tunnelAddress?.port, publicPort);

  // A visitor streams through the tunnel; wait until bytes flow both ways.
  const visitor = await rawConnect(t, publicPort as number);
  let echoed = 0;
  visitor.on("data", (chunk: Buffer) => {
    echoed += chunk.length;
  });
  const chunk = Buffer.alloc(64 * 1024, 0x63);
  const pump = setInterval(() => {
    if (!visitor.destroyed && visitor.writableLength < 1 << 20) visitor.write(chunk);
  }, 1);
  t.after(() => clearInterval(pump));
  await until(() => echoed > 1 << 20, 10_000, "1 MiB echoed through the child");

  const destroyed = onceWithin(server.events, "tunnel-destroyed", 5_000);
  const killedAt = Date.now();
  await client.kill9();
  await destroyed;
  const cleanupMs = Date.now() - killedAt;
  clearInterval(pump);
  await closedWithin(visitor as Socket, 5_000);
  assert.ok(await portRefuses(publicPort as number), "the public port is closed");
  assert.equal(clientTunnel.isClosed, true);
  assert.equal(server.tunnels.size, 0);
  await until(
    () => (server as unknown as { sockets: Set<Socket> }).sockets.size === 0,
    5_000,
    "no server sockets left",
  );
  t.diagnostic(`tunnel destroyed ${cleanupMs} ms after kill -9, ${echoed} bytes echoed before`);
});
