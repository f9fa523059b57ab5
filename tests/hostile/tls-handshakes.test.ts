/**
 * Connections still in their TLS handshake hold a file descriptor for up to the handshake
 * timeout, so they count against the limits from their first byte: on the control port against
 * the pending limits, on a public port against the tunnel's `maxStreams` and the new-visitor
 * rate. Before, silent TCP connections to a TLS port counted against nothing (3,000 from one
 * address were all held for 10 s).
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import type { Socket } from "node:net";
import { type TestContext, test } from "node:test";
import tls from "node:tls";
import { ErrorCodes } from "../../src/errors.js";
import type { ServerEvents } from "../../src/events.js";
import { TunnelClient } from "../../src/index.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  CERT,
  echoService,
  KEY,
  readBytes,
  startTunnel,
  tlsConnect,
  until,
} from "../helpers/net.js";
import { closedWithin, rawConnect, rejectionFrom, within } from "../helpers/raw-peer.js";

/** A real TLS client (from `localAddress`, if given) gets a tunnel from the server. */
async function realClientGetsIn(t: TestContext, controlPort: number, localAddress?: string) {
  const service = await echoService(t);
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServiceHost: "127.0.0.1",
    localServicePort: service.port,
    tls: { ca: CERT, servername: "localhost" },
    ...(localAddress ? { connectOptions: { localAddress } } : {}),
  });
  t.after(() => client.stop());
  assert.ok((await client.start()) > 0);
}

test("TLS control port: connections in their handshake count against the pending limits", async (t) => {
  const server = new TunnelServer({
    tls: { mainServer: { key: KEY, cert: CERT } },
    maxPendingConnections: 4,
    maxPendingPerAddress: 3,
  });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const tlsErrors: unknown[] = [];
  server.events.on("client-tls-error", (payload) => tlsErrors.push(payload));

  // Three silent connections (no ClientHello) from one address take its three slots.
  const silent: Socket[] = [];
  for (let i = 0; i < 3; i++) silent.push(await rawConnect(t, controlPort));
  await until(() => server.stats().pendingConnections === 3, 2_000, "three pending slots taken");
  const perAddress = rejectionFrom(server, (p) => p.err.code === ErrorCodes.TOO_MANY_PENDING);
  const fourth = await rawConnect(t, controlPort);
  const refusal = await perAddress;
  assert.equal(refusal.remotePort, fourth.localPort);
  assert.match(refusal.err.message, /maxPendingPerAddress/);
  await closedWithin(fourth);

  // Another address gets the last slot of the server; a third address finds none.
  await rawConnect(t, controlPort, { localAddress: "127.0.0.2" });
  await until(() => server.stats().pendingConnections === 4, 2_000, "the fourth slot taken");
  const overall = rejectionFrom(server, (p) => p.err.code === ErrorCodes.TOO_MANY_PENDING);
  const third = await rawConnect(t, controlPort, { localAddress: "127.0.0.3" });
  assert.match((await overall).err.message, /maxPendingConnections/);
  await closedWithin(third);
  // Turned away before any TLS: reported once, as a rejection, not also as a TLS failure.
  assert.deepEqual(tlsErrors, []);

  // A silent connection that leaves gives its slot back: a real client gets in.
  silent[0]!.destroy();
  await until(() => server.stats().pendingConnections === 3, 2_000, "the slot given back");
  await realClientGetsIn(t, controlPort);
});

/** Resolves with the next `visitor-rejected` coded `code`; fails the test after a while. */
function visitorRejected(
  server: TunnelServer,
  code: string,
): Promise<ServerEvents["visitor-rejected"]> {
  let listener: (payload: ServerEvents["visitor-rejected"]) => void = () => {};
  const rejected = new Promise<ServerEvents["visitor-rejected"]>((resolve) => {
    listener = (payload) => {
      if (payload.err.code === code) resolve(payload);
    };
    server.events.on("visitor-rejected", listener);
  });
  return within(rejected, 5_000, `visitor-rejected ${code}`).finally(() =>
    server.events.off("visitor-rejected", listener),
  );
}

test("TLS public port: visitors in their handshake count against maxStreams", async (t) => {
  const service = await echoService(t);
  const { server, publicPort } = await startTunnel(
    t,
    service.port,
    { tls: { tunnelServer: { key: KEY, cert: CERT } }, maxStreams: 3 },
    {},
  );
  const sockets = (server as unknown as { sockets: Set<Socket> }).sockets;
  const before = sockets.size;
  const silent: Socket[] = [];
  for (let i = 0; i < 3; i++) silent.push(await rawConnect(t, publicPort));
  await until(() => sockets.size === before + 3, 2_000, "three handshakes held");
  const full = visitorRejected(server, ErrorCodes.TOO_MANY_STREAMS);
  const fourth = await rawConnect(t, publicPort);
  await full;
  await closedWithin(fourth);

  // One leaves: its place is free again, and a real visitor completes and echoes.
  silent[0]!.destroy();
  await until(() => sockets.size === before + 2, 2_000, "the silent visitor gone");
  const visitor = await tlsConnect(t, publicPort);
  const echoed = readBytes(visitor, 4);
  visitor.write("ping");
  assert.equal((await echoed).toString(), "ping");
});

test("TLS public port: visitors in their handshake count against the new-visitor rate", async (t) => {
  const service = await echoService(t);
  // One new visitor per second, a burst of two.
  const { server, publicPort } = await startTunnel(
    t,
    service.port,
    { tls: { tunnelServer: { key: KEY, cert: CERT } }, visitorsPerSecond: 1 },
    {},
  );
  const sockets = (server as unknown as { sockets: Set<Socket> }).sockets;
  const before = sockets.size;
  for (let i = 0; i < 2; i++) await rawConnect(t, publicPort);
  await until(() => sockets.size === before + 2, 2_000, "two handshakes held");
  const rate = visitorRejected(server, ErrorCodes.VISITOR_RATE);
  const third = await rawConnect(t, publicPort);
  await rate;
  await closedWithin(third);
});

/** A TLS control port that lets an address fail 4 times (a burst of 4 at 1 a second). */
async function throttlingTlsServer(t: TestContext) {
  const server = new TunnelServer({
    tls: { mainServer: { key: KEY, cert: CERT } },
    authFailuresPerSecond: 1,
  });
  t.after(() => server.stop());
  return { server, controlPort: await server.start(0, "127.0.0.1") };
}

test("TLS control port: an address whose handshakes keep failing is turned away before the next one", async (t) => {
  const { server, controlPort } = await throttlingTlsServer(t);
  let tlsErrors = 0;
  server.events.on("client-tls-error", () => tlsErrors++);

  // Four handshakes that fail (an HTTP request where a ClientHello belongs), then one that
  // completes but never authenticates: five failures on a burst of four.
  for (let i = 0; i < 4; i++) {
    const failed = new Promise((resolve) => server.events.once("client-tls-error", resolve));
    const socket = await rawConnect(t, controlPort);
    socket.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    await within(failed, 5_000, "the TLS failure");
    await closedWithin(socket);
  }
  assert.equal(tlsErrors, 4);
  const throttled = rejectionFrom(server, (p) => p.err.code === ErrorCodes.AUTH_THROTTLED);
  const refused = await rawConnect(t, controlPort);
  const rejection = await throttled;
  assert.equal(rejection.remotePort, refused.localPort);
  await closedWithin(refused);
  assert.equal(tlsErrors, 4, "turned away before TLS: no handshake, no TLS error");

  // Another address is not held back: a real client from 127.0.0.2 gets its tunnel.
  await realClientGetsIn(t, controlPort, "127.0.0.2");
});

test("TLS control port: handshakes completed and then abandoned before authenticating count as failures", async (t) => {
  const { server, controlPort } = await throttlingTlsServer(t);
  for (let i = 0; i < 4; i++) {
    const connected = new Promise((resolve) => server.events.once("client-connected", resolve));
    const socket = await tlsConnect(t, controlPort, { ca: CERT, servername: "localhost" });
    await within(connected, 5_000, "the server's side of the handshake");
    const gone = new Promise((resolve) => server.events.once("client-disconnected", resolve));
    socket.destroy();
    await within(gone, 5_000, "the server to see the client go");
  }
  const throttled = rejectionFrom(server, (p) => p.err.code === ErrorCodes.AUTH_THROTTLED);
  const refused = await rawConnect(t, controlPort);
  await throttled;
  await closedWithin(refused);
});

test("TLS control port: handshakes begun together from one address are paid for before they run", async (t) => {
  const { server, controlPort } = await throttlingTlsServer(t);
  let tlsErrors = 0;
  server.events.on("client-tls-error", () => tlsErrors++);
  let throttled = 0;
  server.events.on("connection-rejected", ({ err }) => {
    if (err.code === ErrorCodes.AUTH_THROTTLED) throttled++;
  });
  // Twenty connections at once, none of which has failed yet when the next is accepted: a check
  // of past failures alone let every one of them cost a handshake.
  const sockets: Socket[] = [];
  for (let i = 0; i < 20; i++) sockets.push(await rawConnect(t, controlPort));
  for (const socket of sockets) socket.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  for (const socket of sockets) await closedWithin(socket);
  // The burst (4), and a token or two refilled meanwhile at 1 per second on a slow machine.
  assert.ok(tlsErrors <= 6, `${tlsErrors} handshakes ran`);
  assert.equal(tlsErrors + throttled, 20);
});

test("TLS control port: the TLS handshake and the W3P handshake share one handshakeTimeoutMs", async (t) => {
  const server = new TunnelServer({
    tls: { mainServer: { key: KEY, cert: CERT } },
    handshakeTimeoutMs: 2_000,
  });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const raw = await rawConnect(t, controlPort);
  const connectedAt = Date.now();
  // A slow client: its ClientHello comes 1.2 s after the connection, then it says nothing.
  await new Promise((resolve) => setTimeout(resolve, 1_200));
  const secure = tls.connect({ socket: raw, ca: CERT, servername: "localhost" });
  secure.on("error", () => {});
  t.after(() => secure.destroy());
  await once(secure, "secureConnect");
  await closedWithin(secure, 5_000);
  const closedAfter = Date.now() - connectedAt;
  // One deadline from the connection (2 s), not a second full one after the TLS handshake (3.2 s).
  assert.ok(closedAfter < 2_800, `closed ${closedAfter} ms after connecting`);
});
