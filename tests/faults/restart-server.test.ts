/**
 * kill -9 of the server process, then a new server on the same control port: the client notices,
 * keeps retrying, comes back, and the new public port works.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import { runFixture } from "../helpers/child.js";
import { connect, echoService, onceWithin, readBytes } from "../helpers/net.js";

test("kill -9 and restart of the server: the client comes back", async (t) => {
  const service = await echoService(t);
  const first = runFixture(t, "server-process.ts", ["0"]);
  const { port: controlPort } = await first.waitFor((r) => r.event === "listening");
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort as number,
    localServiceHost: "127.0.0.1",
    localServicePort: service.port,
    reconnectInitialDelayMs: 50,
    reconnectMaxDelayMs: 300,
  });
  t.after(() => client.stop());
  const firstPort = await client.start();
  const visitor = await connect(t, firstPort);
  visitor.write("before");
  assert.equal((await readBytes(visitor, 6)).toString(), "before");

  const disconnected = onceWithin(client.events, "tunnel-disconnected");
  await first.kill9();
  await disconnected;
  // While the server is down the client keeps trying (and failing) without giving up.
  await onceWithin(client.events, "tunnel-reconnect-queued");
  await onceWithin(client.events, "tunnel-error");
  assert.equal(client.isConnected, false);

  const reconnected = onceWithin<{ assignedPort: number }>(
    client.events,
    "authentication-acknowledged",
    20_000,
  );
  const second = runFixture(t, "server-process.ts", [String(controlPort)]);
  const listening = await second.waitFor((r) => r.event === "listening" || r.event === "failed");
  assert.equal(listening.event, "listening", `restart on port ${controlPort}: ${listening.code}`);
  const { assignedPort } = await reconnected;
  assert.equal(client.isConnected, true);
  const visitor2 = await connect(t, assignedPort);
  visitor2.write("after");
  assert.equal((await readBytes(visitor2, 5)).toString(), "after");
});
