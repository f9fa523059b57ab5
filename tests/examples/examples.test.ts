/**
 * The examples are runnable as documented (`npx tsx examples/<file>.ts`): each server example with
 * its client example carries a request to a local service, and the demo exits 0.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { runScript } from "../helpers/cli.js";
import { connect, echoService, readBytes } from "../helpers/net.js";

async function throughTunnel(t: Parameters<typeof connect>[0], port: number): Promise<void> {
  const visitor = await connect(t, port);
  visitor.write("from a visitor");
  assert.equal((await readBytes(visitor, 14)).toString(), "from a visitor");
  visitor.destroy();
}

test("server-basic.ts with client.ts", async (t) => {
  const service = await echoService(t);
  const server = runScript(t, ["examples/server-basic.ts", "0"]);
  const [, controlPort] = await server.waitForLine(/control port (\d+)/);
  const client = runScript(t, [
    "examples/client.ts",
    "127.0.0.1",
    controlPort!,
    String(service.port),
  ]);
  const [, publicPort] = await client.waitForLine(/^tunnel up: .*:(\d+)$/);
  await throughTunnel(t, Number(publicPort));
  server.child.kill("SIGTERM");
  assert.equal(await server.exitCode(), 0);
});

test("server-auth.ts refuses a wrong token and accepts the right one", async (t) => {
  const service = await echoService(t);
  const env = { W3P_TOKENS: "right-token" };
  const server = runScript(t, ["examples/server-auth.ts", "0"], env);
  const [, controlPort] = await server.waitForLine(/control port (\d+)/);
  const args = ["examples/client.ts", "127.0.0.1", controlPort!, String(service.port)];
  runScript(t, [...args, "wrong-token"]);
  await server.waitForLine(/^W3P_ERR_AUTH_REJECTED$/);
  const client = runScript(t, [...args, "right-token"]);
  const [, publicPort] = await client.waitForLine(/^tunnel up: .*:(\d+)$/);
  await throughTunnel(t, Number(publicPort));
});

test("server-tls.ts with client-tls.ts", async (t) => {
  const service = await echoService(t);
  const server = runScript(t, ["examples/server-tls.ts", "0"]);
  const [, controlPort] = await server.waitForLine(/control port (\d+)/);
  const client = runScript(t, ["examples/client-tls.ts", controlPort!, String(service.port)]);
  const [, publicPort] = await client.waitForLine(/^tunnel up \(TLS\): .*:(\d+)$/);
  assert.ok(Number(publicPort) > 0);
});

test("demo.ts fetches through the tunnel and exits 0", async (t) => {
  const demo = runScript(t, ["examples/demo.ts"]);
  await demo.waitForLine(/-> 200$/);
  assert.equal(await demo.exitCode(), 0);
});

test("server-hardened.ts: a port from its range, a client past maxPublicPorts and a visitor past maxConnections refused with their codes", async (t) => {
  const service = await echoService(t);
  // Three connections (too few to keep any for clients): the first client's and two visitors.
  const env = { W3P_TOKENS: "right-token", W3P_MAX_PUBLIC_PORTS: "1", W3P_MAX_CONNECTIONS: "3" };
  const server = runScript(t, ["examples/server-hardened.ts", "0"], env);
  const [, controlPort] = await server.waitForLine(/control port (\d+)/);
  const args = [
    "examples/client.ts",
    "127.0.0.1",
    controlPort!,
    String(service.port),
    "right-token",
  ];
  const first = runScript(t, args);
  const [, publicPort] = await first.waitForLine(/^tunnel up: .*:(\d+)$/);
  assert.ok(Number(publicPort) >= 20_000 && Number(publicPort) <= 29_999);
  await throughTunnel(t, Number(publicPort));
  runScript(t, args);
  await server.waitForLine(/: W3P_ERR_TOO_MANY_PORTS$/);
  // The third visitor at the latest finds the server full (the refused client's connection may
  // still be closing too).
  for (let i = 0; i < 3; i++) await connect(t, Number(publicPort));
  await server.waitForLine(/^visitor turned away: W3P_ERR_TOO_MANY_CONNECTIONS$/);
  server.child.kill("SIGTERM");
  assert.equal(await server.exitCode(), 0);
});
