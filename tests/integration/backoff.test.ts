/** Reconnect delays: exactly 1 s doubling to 30 s by default (API.md), jitter only when asked. */
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { backoffDelay } from "../../src/client/backoff.js";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import { ErrorCodes } from "../../src/errors.js";
import { listen } from "../helpers/net.js";

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
