/**
 * The server holds at most `maxConnections` accepted connections (one file descriptor each).
 * Before, a flood of visitors or of silent control connections ran the process out of
 * descriptors: libuv then closed what it could not accept without any event, every tunnel's new
 * visitors failed and clients could not reconnect (and with another thread competing for
 * descriptors the accept loop could spin at 100 % CPU). Now each connection past the limit is
 * refused with W3P_ERR_TOO_MANY_CONNECTIONS, visitors first, so that clients still get in.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { type TestContext, test } from "node:test";
import {
  controlReserve,
  defaultMaxConnections,
  openFileLimit,
} from "../../src/descriptor-limit.js";
import { ErrorCodes, type TunnelError } from "../../src/errors.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  CERT,
  connect,
  echoService,
  KEY,
  onceWithin,
  readBytes,
  startTunnel,
  tlsConnect,
  until,
  WAIT_MS,
  withTimeout,
} from "../helpers/net.js";
import { makeClient } from "../helpers/ops.js";
import { closedWithin } from "../helpers/raw-peer.js";

const PROMPT_MS = 2_000;
/** 8 in all, 1 of them kept for control connections: 7 for the first client and its visitors. */
const MAX = 8;

async function echoes(socket: Socket, text: string): Promise<void> {
  socket.write(text);
  assert.equal((await readBytes(socket, text.length)).toString(), text);
}

async function fillAndRecover(t: TestContext, tls: boolean): Promise<void> {
  const visit = (port: number): Promise<Socket> => (tls ? tlsConnect(t, port) : connect(t, port));
  const service = await echoService(t);
  const serverTls = tls
    ? { tls: { mainServer: { cert: CERT, key: KEY }, tunnelServer: { cert: CERT, key: KEY } } }
    : {};
  const clientTls = tls ? { tls: { ca: CERT, servername: "localhost" } } : {};
  const { server, controlPort, publicPort } = await startTunnel(
    t,
    service.port,
    { maxConnections: MAX, ...serverTls },
    clientTls,
  );
  const rejected: TunnelError[] = [];
  server.events.on("visitor-rejected", ({ err }) => rejected.push(err));
  // The client's control connection is one; six visitors fill the seven visitors may use.
  const visitors: Socket[] = [];
  for (let i = 0; i < MAX - 2; i++) {
    const visitor = await visit(publicPort);
    await echoes(visitor, `visitor ${i}`);
    visitors.push(visitor);
  }
  assert.equal(server.stats().connections, MAX - 1, "a TLS connection counts once");
  const tooMany = await connect(t, publicPort);
  await closedWithin(tooMany, PROMPT_MS);
  await until(() => rejected.length === 1, WAIT_MS, "the refusal event");
  assert.equal(rejected[0]!.code, ErrorCodes.TOO_MANY_CONNECTIONS);

  // The last one is kept for a client: a second client still gets a tunnel.
  const moreClients = {
    localServicePort: service.port,
    reconnectInitialDelayMs: 60_000,
    reconnectMaxDelayMs: 60_000,
    ...clientTls,
  };
  const second = makeClient(t, controlPort, moreClients);
  await withTimeout(second.start(), WAIT_MS, "the second client's tunnel");
  // Now the server is full for clients too.
  const third = makeClient(t, controlPort, moreClients);
  const refusal = onceWithin<{ err: TunnelError }>(server.events, "connection-rejected");
  third.start().catch(() => {});
  assert.equal((await refusal).err.code, ErrorCodes.TOO_MANY_CONNECTIONS);
  await third.stop();
  await second.stop();

  // Connections that close give their places back.
  for (const visitor of visitors.splice(0, 2)) visitor.destroy();
  await until(() => server.stats().tunnels[0]?.streamsActive === MAX - 4, WAIT_MS, "visitors gone");
  for (let i = 0; i < 2; i++) await echoes(await visit(publicPort), `again ${i}`);
  for (const visitor of visitors) await echoes(visitor, "still here");
}

test("visitors past maxConnections are refused, and clients still get in (plain)", async (t) => {
  await fillAndRecover(t, false);
});

test("a TLS connection counts once against maxConnections", async (t) => {
  await fillAndRecover(t, true);
});

test("maxConnections defaults to a share of the open-file limit where it can be read", () => {
  const limits = (soft: string) => () =>
    `Limit                     Soft Limit           Hard Limit           Units     \nMax processes             7823                 7823                 processes \nMax open files            ${soft}                 20000                files     \n`;
  assert.equal(openFileLimit(limits("1024")), 1024);
  assert.equal(defaultMaxConnections(limits("1024")), 889);
  assert.equal(defaultMaxConnections(limits("200")), 148);
  assert.equal(defaultMaxConnections(limits("20")), 16);
  assert.equal(defaultMaxConnections(limits("unlimited")), Number.POSITIVE_INFINITY);
  const unreadable = () => {
    throw new Error("ENOENT");
  };
  assert.equal(defaultMaxConnections(unreadable), Number.POSITIVE_INFINITY);
  assert.equal(controlReserve(8), 1);
  assert.equal(controlReserve(889), 111);
  assert.equal(controlReserve(100_000), 256);
  assert.equal(controlReserve(Number.POSITIVE_INFINITY), 0);
  assert.throws(() => new TunnelServer({ maxConnections: 0 }), {
    code: ErrorCodes.INVALID_OPTION,
  });
});

test("a public listener's accept error reaches its tunnel as tunnel-error, and the port keeps working", async (t) => {
  const service = await echoService(t);
  const { server, publicPort } = await startTunnel(t, service.port);
  // accept() failing (EMFILE) is hard to cause on purpose: the listener reports it like this.
  const internals = server as unknown as {
    publicPorts: Map<number, { server: { emit(event: string, err: Error): boolean } }>;
  };
  const listener = internals.publicPorts.get(publicPort)!.server;
  const reported = onceWithin<{ err: TunnelError }>(server.events, "tunnel-error");
  listener.emit(
    "error",
    Object.assign(new Error("accept EMFILE"), { code: "EMFILE", syscall: "accept" }),
  );
  const { err } = await reported;
  assert.equal(err.code, ErrorCodes.LISTEN_FAILED);
  assert.equal((err.cause as NodeJS.ErrnoException).code, "EMFILE");
  await echoes(await connect(t, publicPort), "after the error");
});
