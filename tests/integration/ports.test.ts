import assert from "node:assert/strict";
import { test } from "node:test";
import type { TunnelClient } from "../../src/client/tunnel-client.js";
import { ErrorCodes } from "../../src/errors.js";
import type { ClientEvents, ServerEvents } from "../../src/events.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { connect, echoService, onceWithin, readBytes, until } from "../helpers/net.js";
import {
  connectionRefused,
  freePortOutside,
  freePortRange,
  freePorts,
  isFree,
  makeClient,
  occupy,
  startServer,
} from "../helpers/ops.js";

type Rejected = ClientEvents["authentication-rejected"];

/** Starts `client` and waits for the server's refusal of it. */
async function expectRefusal(client: TunnelClient): Promise<Rejected> {
  const rejected = onceWithin<Rejected>(client.events, "authentication-rejected");
  void client.start();
  return rejected;
}

function inRange(port: number, [low, high]: [number, number]): boolean {
  return port >= low && port <= high;
}

test("a requested port inside allowedPorts is granted and serves visitors", async (t) => {
  const echo = await echoService(t);
  const range = await freePortRange(20);
  const wanted = range[0];
  const { server, controlPort } = await startServer(t, { allowedPorts: [range] });
  const client = makeClient(t, controlPort, {
    services: [{ name: "rpc", localPort: echo.port, remotePort: wanted }],
  });
  assert.equal(await client.start(), wanted);
  assert.equal([...server.tunnels][0]?.tunnelAddress?.port, wanted);
  const visitor = await connect(t, wanted);
  visitor.write("in range");
  assert.equal((await readBytes(visitor, 8)).toString(), "in range");
});

test("without a request the server picks a free port from the ranges", async (t) => {
  const echo = await echoService(t);
  const range = await freePortRange(20);
  const { controlPort } = await startServer(t, { allowedPorts: `${range[0]}-${range[1]}` });
  const ports: number[] = [];
  for (let i = 0; i < 3; i++) {
    const client = makeClient(t, controlPort, { localServicePort: echo.port });
    ports.push(await client.start());
  }
  assert.ok(
    ports.every((port) => inRange(port, range)),
    `${ports} within ${range}`,
  );
  assert.equal(new Set(ports).size, 3, "each client gets its own port");
});

test("a port outside allowedPorts is refused with W3P_ERR_PORT_NOT_ALLOWED", async (t) => {
  const echo = await echoService(t);
  const range = await freePortRange(20);
  const outside = await freePortOutside(range);
  const { server, controlPort } = await startServer(t, { allowedPorts: [range] });
  const serverError = onceWithin<ServerEvents["client-error"]>(server.events, "client-error");
  const tunnelErrors: unknown[] = [];
  server.events.on("tunnel-error", (e) => tunnelErrors.push(e));
  const client = makeClient(t, controlPort, {
    services: [{ name: "rpc", localPort: echo.port, remotePort: outside }],
  });
  const { err, retryAfterMs } = await expectRefusal(client);
  assert.equal(err.code, ErrorCodes.PORT_NOT_ALLOWED);
  assert.match(err.message, new RegExp(String(outside)));
  assert.ok(retryAfterMs !== null && retryAfterMs > 0, "the client is told to wait");
  assert.equal((await serverError).err.code, ErrorCodes.PORT_NOT_ALLOWED);
  assert.deepEqual(tunnelErrors, [], "no tunnel existed: reported once, as client-error");
  assert.equal(server.tunnels.size, 0);
  assert.equal(await connectionRefused(outside), "ECONNREFUSED");
});

test("a port taken by another program is refused with W3P_ERR_PORT_UNAVAILABLE", async (t) => {
  const echo = await echoService(t);
  const range = await freePortRange(20);
  const taken = range[0];
  await occupy(t, taken);
  const { server, controlPort } = await startServer(t, { allowedPorts: [range] });
  const serverError = onceWithin<ServerEvents["client-error"]>(server.events, "client-error");
  const tunnelErrors: unknown[] = [];
  server.events.on("tunnel-error", (e) => tunnelErrors.push(e));
  const client = makeClient(t, controlPort, {
    services: [{ name: "rpc", localPort: echo.port, remotePort: taken }],
  });
  const { err } = await expectRefusal(client);
  assert.equal(err.code, ErrorCodes.PORT_UNAVAILABLE);
  assert.equal((await serverError).err.code, ErrorCodes.PORT_UNAVAILABLE);
  assert.deepEqual(tunnelErrors, []);
});

test("a port another client holds is refused with W3P_ERR_PORT_UNAVAILABLE", async (t) => {
  const echo = await echoService(t);
  const [wanted] = await freePorts(1);
  const { controlPort } = await startServer(t);
  const first = makeClient(t, controlPort, {
    services: [{ name: "a", localPort: echo.port, remotePort: wanted! }],
  });
  assert.equal(await first.start(), wanted);
  const second = makeClient(t, controlPort, {
    services: [{ name: "a", localPort: echo.port, remotePort: wanted! }],
  });
  const { err } = await expectRefusal(second);
  assert.equal(err.code, ErrorCodes.PORT_UNAVAILABLE);
  assert.ok(first.isConnected, "the first client keeps its tunnel");
});

test("when one service's port is refused, the ports already opened for the others are closed", async (t) => {
  const echo = await echoService(t);
  const range = await freePortRange(20);
  const outside = await freePortOutside(range);
  const granted = range[0];
  const { server, controlPort } = await startServer(t, { allowedPorts: [range] });
  const client = makeClient(t, controlPort, {
    services: [
      { name: "ok", localPort: echo.port, remotePort: granted },
      { name: "bad", localPort: echo.port, remotePort: outside },
    ],
  });
  const { err } = await expectRefusal(client);
  assert.equal(err.code, ErrorCodes.PORT_NOT_ALLOWED);
  await client.stop();
  await until(() => server.stats().heldPorts.length === 0, 5_000, "no ports held");
  assert.equal(await connectionRefused(granted), "ECONNREFUSED");
  assert.ok(await isFree(granted), "the port of the accepted service was released");
});

test("busy ports of the range are skipped and an exhausted range is a clear error", async (t) => {
  const echo = await echoService(t);
  const [outsider, first, second] = await freePorts(3);
  await occupy(t, outsider!);
  const { server, controlPort } = await startServer(t, {
    allowedPorts: [outsider!, first!, second!],
  });
  const granted: number[] = [];
  for (let i = 0; i < 2; i++) {
    const client = makeClient(t, controlPort, { localServicePort: echo.port });
    granted.push(await client.start());
  }
  assert.deepEqual(
    [...granted].sort((a, b) => a - b),
    [first!, second!].sort((a, b) => a - b),
  );
  const third = makeClient(t, controlPort, { localServicePort: echo.port });
  const { err } = await expectRefusal(third);
  assert.equal(err.code, ErrorCodes.PORT_UNAVAILABLE);
  assert.equal(server.tunnels.size, 2);
});

test("a port is free for others again once its client (without identity) leaves", async (t) => {
  const echo = await echoService(t);
  const [wanted] = await freePorts(1);
  const { server, controlPort } = await startServer(t, { portLeaseMs: 60_000 });
  const first = makeClient(t, controlPort, {
    services: [{ name: "a", localPort: echo.port, remotePort: wanted! }],
  });
  assert.equal(await first.start(), wanted);
  await first.stop();
  await until(() => server.tunnels.size === 0, 5_000, "first tunnel gone");
  assert.deepEqual(server.stats().heldPorts, [], "no lease without an identity");
  const second = makeClient(t, controlPort, {
    services: [{ name: "a", localPort: echo.port, remotePort: wanted! }],
  });
  assert.equal(await second.start(), wanted);
});

test("invalid allowedPorts are refused when the server is created", () => {
  for (const allowedPorts of [
    "2000-1000",
    "0",
    "70000",
    "abc",
    [[5, 4]],
    "0x50",
    "1e3",
    "80-90-100",
    [[1, 2, 3]],
    null,
    8080,
  ] as never[]) {
    assert.throws(
      () => new TunnelServer({ allowedPorts }),
      (err: { code?: string }) => err.code === ErrorCodes.INVALID_OPTION,
      `allowedPorts ${JSON.stringify(allowedPorts)}`,
    );
  }
});

test("publicHost binds public ports to 127.0.0.1 only", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t, { publicHost: "127.0.0.1" });
  const client = makeClient(t, controlPort, { localServicePort: echo.port });
  const port = await client.start();
  const [tunnel] = [...server.tunnels];
  assert.equal(tunnel?.tunnelAddress?.address, "127.0.0.1");
  const visitor = await connect(t, port);
  visitor.write("local");
  assert.equal((await readBytes(visitor, 5)).toString(), "local");
  assert.equal(await connectionRefused(port, "::1"), "ECONNREFUSED");
  if (process.platform === "linux") {
    // All of 127/8 is loopback on Linux, but only 127.0.0.1 was bound.
    assert.equal(await connectionRefused(port, "127.0.0.2"), "ECONNREFUSED");
  }
});

test("by default public ports listen on all interfaces", async (t) => {
  const echo = await echoService(t);
  const { server, controlPort } = await startServer(t);
  const client = makeClient(t, controlPort, { localServicePort: echo.port });
  const port = await client.start();
  const address = [...server.tunnels][0]?.tunnelAddress?.address;
  assert.ok(address === "::" || address === "0.0.0.0", `bound to ${address}`);
  const visitor = await connect(t, port, "::1");
  visitor.write("v6");
  assert.equal((await readBytes(visitor, 2)).toString(), "v6");
});
