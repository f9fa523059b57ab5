/**
 * 300 clients connecting at once (three processes of 100, so the server sees a real burst from
 * other processes): every one gets a tunnel, and every public port echoes.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { runFixture } from "../helpers/child.js";
import { echoService, readBytes } from "../helpers/net.js";
import { rawConnect } from "../helpers/raw-peer.js";

const PROCESSES = 3;
const PER_PROCESS = 100;

test("300 clients connecting at once all get tunnels", async (t) => {
  const service = await echoService(t);
  const server = new TunnelServer();
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  let rejected = 0;
  server.events.on("connection-rejected", () => rejected++);
  server.events.on("client-error", () => rejected++);
  const startedAt = Date.now();
  const children = Array.from({ length: PROCESSES }, () =>
    runFixture(t, "client-process.ts", [
      String(controlPort),
      String(service.port),
      String(PER_PROCESS),
    ]),
  );
  for (const child of children) await child.waitFor((r) => r.event === "ready", 30_000, "ready");
  const upMs = Date.now() - startedAt;

  const ports = children.flatMap((child) =>
    child.reports.filter((r) => r.event === "ack").map((r) => r.port as number),
  );
  assert.equal(ports.length, PROCESSES * PER_PROCESS);
  assert.equal(new Set(ports).size, ports.length, "every client has its own port");
  assert.equal(server.tunnels.size, PROCESSES * PER_PROCESS);
  assert.equal(rejected, 0);
  for (let i = 0; i < ports.length; i += 50) {
    await Promise.all(
      ports.slice(i, i + 50).map(async (port) => {
        const visitor = await rawConnect(t, port);
        visitor.write(`p${port}`);
        assert.equal((await readBytes(visitor, String(port).length + 1)).toString(), `p${port}`);
        visitor.destroy();
      }),
    );
  }
  t.diagnostic(`${ports.length} tunnels up ${upMs} ms after spawning (incl. process start)`);
});
