/**
 * A local service that refuses connections: the visitor is closed promptly (the client sends an
 * ERROR frame for the stream), the client reports W3P_ERR_LOCAL_CONNECT_FAILED, and the tunnel
 * itself stays up. Checked with the client in this process (for the event) and in a child.
 */
import assert from "node:assert/strict";
import dns from "node:dns";
import { syncBuiltinESMExports } from "node:module";
import net from "node:net";
import { test } from "node:test";
import { ErrorCodes, type TunnelError } from "../../src/errors.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { runFixture } from "../helpers/child.js";
import { listen, onceWithin, startTunnel } from "../helpers/net.js";
import { closedWithin, rawConnect } from "../helpers/raw-peer.js";

const PROMPT_MS = 2_000;

/** A port nothing listens on: bound then closed, so a connection to it is refused. */
async function refusedPort(): Promise<number> {
  const server = net.createServer();
  const port = await listen(server);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

test("a refused local service closes the visitor promptly (client in process)", async (t) => {
  const port = await refusedPort();
  for (const extensions of [true, false]) {
    const { client, server, publicPort } = await startTunnel(
      t,
      port,
      { extensions },
      { extensions },
    );
    const serviceError = onceWithin<{ err: TunnelError }>(client.events, "service-error");
    const visitor = await rawConnect(t, publicPort);
    visitor.write("hello?");
    const startedAt = Date.now();
    assert.equal((await serviceError).err.code, ErrorCodes.LOCAL_CONNECT_FAILED);
    await closedWithin(visitor, PROMPT_MS);
    t.diagnostic(`extensions=${extensions}: visitor closed ${Date.now() - startedAt} ms after`);
    assert.equal(client.isConnected, true, "the tunnel stays up");
    assert.equal(server.tunnels.size, 1);
  }
});

test("a refused local service closes the visitor promptly (client in a child)", async (t) => {
  const port = await refusedPort();
  const server = new TunnelServer();
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const child = runFixture(t, "client-process.ts", [String(controlPort), String(port)]);
  const { port: publicPort } = await child.waitFor((r) => r.event === "ack", 20_000, "ack");
  for (let i = 0; i < 5; i++) {
    const visitor = await rawConnect(t, publicPort as number);
    await closedWithin(visitor, PROMPT_MS);
  }
  assert.equal(server.tunnels.size, 1, "the tunnel stays up");
});

test("a local service name that does not resolve is a failed connect, not a socket error", async (t) => {
  // getaddrinfo answers for this one name with ENOTFOUND, without asking any DNS server (tests
  // never leave the machine); Node's own error carries syscall "getaddrinfo" as here.
  const unresolvable = "w3p-unresolvable.test";
  const realLookup = dns.lookup;
  const failing = ((hostname: string, ...rest: unknown[]) => {
    const callback = rest[rest.length - 1] as (err: NodeJS.ErrnoException) => void;
    if (hostname !== unresolvable)
      return (realLookup as (...a: unknown[]) => void)(hostname, ...rest);
    const err: NodeJS.ErrnoException = Object.assign(
      new Error(`getaddrinfo ENOTFOUND ${hostname}`),
      {
        code: "ENOTFOUND",
        syscall: "getaddrinfo",
      },
    );
    process.nextTick(callback, err);
  }) as typeof dns.lookup;
  dns.lookup = failing;
  syncBuiltinESMExports();
  t.after(() => {
    dns.lookup = realLookup;
    syncBuiltinESMExports();
  });
  const { client, publicPort } = await startTunnel(t, 1, {}, { localServiceHost: unresolvable });
  const serviceError = onceWithin<{ err: TunnelError }>(client.events, "service-error");
  const visitor = await rawConnect(t, publicPort);
  visitor.write("hello?");
  const { err } = await serviceError;
  assert.equal(err.code, ErrorCodes.LOCAL_CONNECT_FAILED, err.message);
  await closedWithin(visitor, PROMPT_MS);
});
