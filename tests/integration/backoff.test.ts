/** Reconnect delays: exactly 1 s doubling to 30 s by default (API.md), jitter only when asked. */
import assert from "node:assert/strict";
import net, { type Socket } from "node:net";
import { type TestContext, test } from "node:test";
import { backoffDelay } from "../../src/client/backoff.js";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import { ErrorCodes } from "../../src/errors.js";
import { listen } from "../helpers/net.js";
import { clientOfRawServer, encodeHandshake, evilServer } from "../helpers/raw-peer.js";

test("without jitter: 1 s, 2 s, 4 s ... capped at 30 s", () => {
  const delays = Array.from({ length: 8 }, (_, attempt) => backoffDelay(attempt, 1_000, 30_000));
  assert.deepEqual(delays, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
  assert.equal(backoffDelay(5_000, 1_000, 30_000), 30_000, "a long outage does not overflow");
});

test("with jitter: up to that fraction off, never more, never below 1 ms", () => {
  assert.equal(
    backoffDelay(0, 1_000, 30_000, 0.2, () => 0),
    1_000,
  );
  assert.equal(
    backoffDelay(0, 1_000, 30_000, 0.2, () => 0.999_999),
    800,
  );
  assert.equal(
    backoffDelay(2, 1_000, 30_000, 0.5, () => 0.5),
    3_000,
  );
  assert.equal(
    backoffDelay(0, 1, 30_000, 1, () => 0.999_999),
    1,
  );
});

test("reconnectJitter must be a number from 0 to 1", () => {
  for (const bad of [-0.1, 1.5, Number.NaN, "0.2"]) {
    assert.throws(
      () => new TunnelClient({ localServicePort: 1, reconnectJitter: bad as number }),
      (err: { code?: string }) => err.code === ErrorCodes.INVALID_OPTION,
      String(bad),
    );
  }
});

test("a client that cannot connect reports the exact doubling delays in tunnel-reconnect-queued", async (t) => {
  const probe = net.createServer();
  const port = await listen(probe);
  await new Promise((resolve) => probe.close(resolve)); // nobody listens there now
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: port,
    localServicePort: 1,
    reconnectInitialDelayMs: 20,
  });
  t.after(() => client.stop());
  const timeouts: number[] = [];
  const three = new Promise<void>((resolve) => {
    client.events.on("tunnel-reconnect-queued", ({ timeout }) => {
      if (timeouts.push(timeout) === 3) resolve();
    });
  });
  client.start().catch(() => {});
  await three;
  await client.stop();
  assert.deepEqual(timeouts, [20, 40, 80]);
});

/** The delays a client reports while `serve` plays a server that accepts and then drops it. */
async function delaysAgainst(
  t: TestContext,
  count: number,
  serve: (socket: Socket, session: number) => void,
): Promise<number[]> {
  let sessions = 0;
  const { port } = await evilServer(t, (socket) => serve(socket, sessions++));
  const client = clientOfRawServer(t, port, 1, {
    reconnectInitialDelayMs: 20,
    reconnectMaxDelayMs: 300,
  });
  const timeouts: number[] = [];
  await new Promise<void>((resolve) => {
    client.events.on("tunnel-reconnect-queued", ({ timeout }) => {
      if (timeouts.push(timeout) === count) resolve();
    });
  });
  await client.stop();
  return timeouts;
}

test("a server that acknowledges and then drops every session at once is retried ever more slowly", async (t) => {
  const timeouts = await delaysAgainst(t, 5, (socket) => {
    socket.end(encodeHandshake({ port: 40000 }));
  });
  assert.deepEqual(timeouts, [20, 40, 80, 160, 300]);
});

test("after a session that lasted as long as the longest wait, the backoff starts over", async (t) => {
  const timeouts = await delaysAgainst(t, 4, (socket, session) => {
    socket.write(encodeHandshake({ port: 40000 }));
    // The third session stays up for longer than reconnectMaxDelayMs (300 ms).
    const timer = setTimeout(() => socket.end(), session === 2 ? 450 : 0);
    socket.on("close", () => clearTimeout(timer));
  });
  assert.deepEqual(timeouts, [20, 40, 20, 40]);
});
