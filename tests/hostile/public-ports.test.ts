/**
 * The server binds at most `maxPublicPorts` public listeners at once, and clients from one address
 * hold at most `maxPublicPortsPerAddress`: before, one authenticated client opening 64 services on
 * each of hundreds of sessions bound ~20,000 listeners, ran the process out of file descriptors
 * and a healthy tunnel's visitors were refused. A client whose ports do not fit is refused after
 * auth with W3P_ERR_TOO_MANY_PORTS; everyone else keeps working, and ports free up when their
 * client leaves, its lease ends or the server stops.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { type TestContext, test } from "node:test";
import { ErrorCodes } from "../../src/errors.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { connect, echoService, readBytes, startTunnel, until } from "../helpers/net.js";
import { occupy } from "../helpers/ops.js";
import {
  closedWithin,
  encodeHandshake,
  rawConnect,
  readHandshake,
  serverErrorFor,
} from "../helpers/raw-peer.js";

const PROMPT_MS = 2_000;

interface Asked {
  socket: Socket;
  /** Public ports given, by service name (empty when refused). */
  ports: number[];
  /** The refusal the server sent instead of an ack, if it refused. */
  error: { code: string; message: string; retryAfterMs: number } | null;
}

/** A raw extension client asking for `services` (name, or name and port); resolves with the answer. */
async function ask(
  t: TestContext,
  controlPort: number,
  services: Array<string | { name: string; port: number }>,
  options: { clientId?: string; localAddress?: string } = {},
): Promise<Asked> {
  const socket = await rawConnect(t, controlPort, { localAddress: options.localAddress });
  const answer = readHandshake(socket);
  const requests = services.map((s) => (typeof s === "string" ? { name: s } : s));
  const w3p = { v: 2, ext: ["services"], services: requests, clientId: options.clientId };
  socket.write(encodeHandshake({ id: "raw", w3p }));
  const block = (await answer).message.w3p as {
    error?: Asked["error"];
    services?: { name: string; port: number }[];
  };
  return {
    socket,
    ports: (block.services ?? []).map((s) => s.port),
    error: block.error ?? null,
  };
}

/** Asks, and expects a refusal with W3P_ERR_TOO_MANY_PORTS naming `option`; the socket closes. */
async function refused(
  t: TestContext,
  server: TunnelServer,
  controlPort: number,
  services: string[],
  option: RegExp,
  options: { clientId?: string } = {},
): Promise<void> {
  const before = server.stats().publicPorts;
  const answer = await ask(t, controlPort, services, options);
  assert.equal(answer.error?.code, ErrorCodes.TOO_MANY_PORTS);
  assert.match(answer.error.message, option);
  assert.ok(answer.error.retryAfterMs > 0, "told to come back later");
  await closedWithin(answer.socket, PROMPT_MS);
  assert.equal(server.stats().publicPorts, before, "no port bound for a refused client");
}

async function echoes(t: TestContext, publicPort: number, text: string): Promise<void> {
  const visitor = await connect(t, publicPort);
  visitor.write(text);
  assert.equal((await readBytes(visitor, text.length)).toString(), text);
  visitor.destroy();
}

test("maxPublicPorts: past the cap a client is refused with W3P_ERR_TOO_MANY_PORTS, the healthy tunnel keeps serving, ports free up when a client leaves", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort, publicPort } = await startTunnel(t, echo.port, {
    maxPublicPorts: 3,
  });
  const filler = await ask(t, controlPort, ["a", "b"]);
  assert.equal(filler.ports.length, 2);
  assert.equal(server.stats().publicPorts, 3);

  await refused(t, server, controlPort, ["c"], /maxPublicPorts\b/);
  // A v1 client is closed, with the coded error on the server.
  const v1 = await rawConnect(t, controlPort);
  const v1Error = serverErrorFor(server, v1, ["client-error"]);
  v1.write(encodeHandshake({ id: "v1" }));
  assert.equal((await v1Error).code, ErrorCodes.TOO_MANY_PORTS);
  await closedWithin(v1, PROMPT_MS);

  await echoes(t, publicPort, "still served");
  assert.equal(server.tunnels.size, 2);

  // The filler leaves: its two ports close and a new client gets both places.
  filler.socket.destroy();
  await until(() => server.stats().publicPorts === 1, PROMPT_MS, "the filler's ports closed");
  const next = await ask(t, controlPort, ["d", "e"]);
  assert.equal(next.error, null);
  assert.equal(next.ports.length, 2);
  assert.equal(server.stats().publicPorts, 3);
  await echoes(t, publicPort, "served after");
});

test("maxPublicPorts: a set of ports that fails to bind part-way gives back every place it took", async (t) => {
  const server = new TunnelServer({ maxPublicPorts: 3 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const taken = await occupy(t, 0);
  const takenPort = (taken.address() as { port: number }).port;
  // "a" binds, then "b" cannot have its port: "a" is released and the places are given back.
  const failed = await ask(t, controlPort, ["a", { name: "b", port: takenPort }]);
  assert.equal(failed.error?.code, ErrorCodes.PORT_UNAVAILABLE);
  await closedWithin(failed.socket, PROMPT_MS);
  assert.equal(server.stats().publicPorts, 0);
  // All three places are free again.
  const full = await ask(t, controlPort, ["x", "y", "z"]);
  assert.equal(full.ports.length, 3);
});

test("maxPublicPortsPerAddress: one address is capped, another still gets ports", async (t) => {
  const server = new TunnelServer({ maxPublicPorts: 10, maxPublicPortsPerAddress: 2 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const first = await ask(t, controlPort, ["a"]);
  await ask(t, controlPort, ["b"]);
  await refused(t, server, controlPort, ["c"], /maxPublicPortsPerAddress/);
  const other = await ask(t, controlPort, ["a", "b"], { localAddress: "127.0.0.2" });
  assert.equal(other.ports.length, 2, "another address is not affected");
  first.socket.destroy();
  await until(() => server.stats().publicPorts === 3, PROMPT_MS, "the first client's port closed");
  const again = await ask(t, controlPort, ["c"]);
  assert.equal(again.ports.length, 1);
});

test("maxPublicPorts: held ports count, give way to a connecting client (oldest lease first) and free up when the lease ends", async (t) => {
  const server = new TunnelServer({ maxPublicPorts: 2, portLeaseMs: 30_000 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const gone = await ask(t, controlPort, ["web"], { clientId: "gone" });
  gone.socket.destroy();
  await until(() => server.stats().heldPorts.length === 1, PROMPT_MS, "the port held");
  const live = await ask(t, controlPort, ["web"], { clientId: "live" });
  assert.equal(server.stats().publicPorts, 2, "one held, one live");

  // Three ports cannot fit even without the lease: refused, and the lease is left alone.
  await refused(t, server, controlPort, ["a", "b"], /maxPublicPorts\b/);
  assert.deepEqual(server.stats().heldPorts, gone.ports);

  // One port fits once the lease ends early.
  const third = await ask(t, controlPort, ["web"], { clientId: "third" });
  assert.equal(third.error, null);
  assert.deepEqual(server.stats().heldPorts, []);
  assert.equal(server.stats().publicPorts, 2);
  await refused(t, server, controlPort, ["web"], /maxPublicPorts\b/, { clientId: "fourth" });

  // A client that comes back for its held port needs no new place.
  live.socket.destroy();
  await until(() => server.stats().heldPorts.length === 1, PROMPT_MS, "live's port held");
  const back = await ask(t, controlPort, ["web"], { clientId: "live" });
  assert.deepEqual(back.ports, live.ports);
});

test("maxPublicPorts: a lease running out, and stop(), give the places back", async (t) => {
  const server = new TunnelServer({ maxPublicPorts: 1, portLeaseMs: 100 });
  t.after(() => server.stop());
  let controlPort = await server.start(0, "127.0.0.1");
  const first = await ask(t, controlPort, ["web"], { clientId: "first" });
  first.socket.destroy();
  await until(() => server.stats().heldPorts.length === 1, PROMPT_MS, "the port held");
  await until(() => server.stats().publicPorts === 0, PROMPT_MS, "the lease ended");
  const second = await ask(t, controlPort, ["web"]);
  assert.equal(second.ports.length, 1);

  await server.stop();
  assert.equal(server.stats().publicPorts, 0);
  controlPort = await server.start(0, "127.0.0.1");
  const afterRestart = await ask(t, controlPort, ["web"]);
  assert.equal(afterRestart.error, null, "nothing counted from before the stop");
});

test("maxPublicPorts and maxPublicPortsPerAddress must be positive integers", () => {
  for (const option of ["maxPublicPorts", "maxPublicPortsPerAddress"]) {
    for (const value of [0, -1, 1.5, Number.NaN, "3"]) {
      assert.throws(
        () => new TunnelServer({ [option]: value }),
        (err: { code?: string }) => err.code === ErrorCodes.INVALID_OPTION,
        `${option}: ${String(value)}`,
      );
    }
  }
});
