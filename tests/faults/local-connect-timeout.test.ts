/**
 * A local service that never answers the connection attempt: the client gives up after
 * `localConnectTimeoutMs`, reports W3P_ERR_LOCAL_CONNECT_TIMEOUT, closes the visitor, and the
 * tunnel stays up for the next visitor. The service is a child process whose accept queue is
 * full and whose event loop is blocked, so the attempt hangs in the kernel.
 */
import assert from "node:assert/strict";
import net, { type Socket } from "node:net";
import { test } from "node:test";
import { ErrorCodes, type TunnelError } from "../../src/errors.js";
import { runFixture } from "../helpers/child.js";
import { echoService, onceWithin, readBytes, startTunnel } from "../helpers/net.js";
import { closedWithin, rawConnect } from "../helpers/raw-peer.js";

const CONNECT_TIMEOUT_MS = 300;

/** Fills the service's accept queue until a connection attempt stays pending. */
async function fillAcceptQueue(t: import("node:test").TestContext, port: number): Promise<void> {
  for (let i = 0; i < 16; i++) {
    const socket: Socket = net.connect({ port, host: "127.0.0.1" });
    socket.on("error", () => {});
    t.after(() => socket.destroy());
    const connected = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 500);
      socket.once("connect", () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    if (!connected) return;
  }
  throw new Error("the service kept accepting: its accept queue never filled");
}

for (const extensions of [true, false]) {
  test(`a local service that never accepts times out and closes the visitor (extensions: ${extensions})`, async (t) => {
    const service = runFixture(t, "unaccepting-service.ts", []);
    const { port } = await service.waitFor((r) => r.event === "listening", 20_000, "listening");
    await fillAcceptQueue(t, port as number);

    const { client, server, publicPort } = await startTunnel(
      t,
      port as number,
      { extensions },
      { extensions, localConnectTimeoutMs: CONNECT_TIMEOUT_MS },
    );
    const serviceError = onceWithin<{ err: TunnelError }>(client.events, "service-error");
    const visitor = await rawConnect(t, publicPort);
    visitor.write("anyone there?");
    const startedAt = Date.now();
    const { err } = await serviceError;
    const waited = Date.now() - startedAt;
    assert.equal(err.code, ErrorCodes.LOCAL_CONNECT_TIMEOUT);
    assert.ok(
      waited >= CONNECT_TIMEOUT_MS - 50,
      `gave up after ${waited} ms, not before the deadline`,
    );
    await closedWithin(visitor, 2_000);
    assert.equal(client.isConnected, true, "the tunnel stays up");
    assert.equal(server.tunnels.size, 1);

    // The tunnel is unharmed: the next visitor gets the same treatment.
    const again = onceWithin<{ err: TunnelError }>(client.events, "service-error");
    const second = await rawConnect(t, publicPort);
    assert.equal((await again).err.code, ErrorCodes.LOCAL_CONNECT_TIMEOUT);
    await closedWithin(second, 2_000);
  });
}

test("a service that accepts in time is not cut off by the connect deadline", async (t) => {
  const echo = await echoService(t);
  const { publicPort } = await startTunnel(t, echo.port, {}, { localConnectTimeoutMs: 200 });
  const visitor = await rawConnect(t, publicPort);
  visitor.write("ping");
  assert.equal((await readBytes(visitor, 4)).toString(), "ping");
  // Past the deadline the stream must still be open. Only waiting can show that a timer does
  // not fire, so this one wait is deliberate (twice the deadline; no outcome depends on speed).
  await new Promise((resolve) => setTimeout(resolve, 400));
  visitor.write("pong");
  assert.equal((await readBytes(visitor, 4)).toString(), "pong");
});
