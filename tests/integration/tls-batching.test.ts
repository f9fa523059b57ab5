import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type { Socket } from "node:net";
import { test } from "node:test";
import { FrameType } from "../../src/protocol/constants.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  CERT,
  connect,
  KEY,
  onceWithin,
  pseudoRandomBytes,
  readAll,
  readBytes,
  sha256,
  startService,
  startTunnel,
  tlsConnect,
  until,
} from "../helpers/net.js";
import { encodeFrame, encodeHandshake, readHandshake } from "../helpers/raw-peer.js";

// TLS hands over one record (at most 16 KiB) per read event, many in one turn of the event loop.
// Written to the local socket one by one, every record is a system call of its own; the session
// writes a turn's records together. Counted here at the socket's own write calls (_write and
// _writev, one system call each): a 4 MiB transfer must average well over a record per call.
const TOTAL = 4 * 1024 * 1024;
const RECORD = 16 * 1024;

interface WriteCount {
  calls: number;
  bytes: number;
}

/** Counts the write calls Node makes to the kernel for `socket`, and the bytes they carry. */
function countWrites(socket: Socket): WriteCount {
  const count: WriteCount = { calls: 0, bytes: 0 };
  type Writer = (...args: unknown[]) => void;
  const target = socket as unknown as { _write: Writer; _writev: Writer };
  const write = target._write;
  const writev = target._writev;
  target._write = function (this: Socket, ...args: unknown[]) {
    count.calls++;
    count.bytes += (args[0] as Buffer).length;
    return write.apply(this, args);
  };
  target._writev = function (this: Socket, ...args: unknown[]) {
    count.calls++;
    for (const { chunk } of args[0] as { chunk: Buffer }[]) count.bytes += chunk.length;
    return writev.apply(this, args);
  };
  return count;
}

/** Every byte went through the counted socket, in writes of two records or more on average. */
function assertBatched(counted: WriteCount | null, socket: string): void {
  assert.ok(counted, `the ${socket} socket was seen`);
  assert.equal(counted.bytes, TOTAL);
  assert.ok(
    counted.bytes / counted.calls >= 2 * RECORD,
    `${counted.calls} writes for ${counted.bytes} bytes`,
  );
}

const tlsOptions = [
  { tls: { mainServer: { cert: CERT, key: KEY } } },
  { tls: { ca: CERT, servername: "localhost" } },
] as const;

test("records from a TLS control connection reach the service in writes of many records", async (t) => {
  const hash = createHash("sha256");
  let received = 0;
  const service = await startService(t, (socket) => {
    socket.on("data", (chunk: Buffer) => {
      hash.update(chunk);
      received += chunk.length;
    });
  });
  const { client, publicPort } = await startTunnel(t, service.port, ...tlsOptions);
  let writes: WriteCount | null = null;
  client.events.on("service-connected", ({ serviceSocket }) => {
    writes = countWrites(serviceSocket);
  });
  const data = pseudoRandomBytes(TOTAL, 7);
  const visitor = await connect(t, publicPort);
  visitor.write(data);
  await until(() => received === TOTAL, undefined, "the service to get every byte");
  assert.equal(hash.digest("hex"), sha256(data));
  assertBatched(writes, "service");
});

test("records from a TLS control connection reach the visitor in writes of many records", async (t) => {
  const data = pseudoRandomBytes(TOTAL, 8);
  const service = await startService(t, (socket) => socket.end(data));
  const { server, publicPort } = await startTunnel(t, service.port, ...tlsOptions);
  let writes: WriteCount | null = null;
  server.events.on("visitor-connected", ({ visitorSocket }) => {
    writes = countWrites(visitorSocket);
  });
  const visitor = await connect(t, publicPort);
  const got = await readBytes(visitor, TOTAL);
  assert.equal(sha256(got), sha256(data));
  assertBatched(writes, "visitor");
});

test("bytes a TLS peer sent right before it went are written out, not dropped with the batch", async (t) => {
  const server = new TunnelServer({ tls: { mainServer: { cert: CERT, key: KEY } } });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  for (let round = 0; round < 5; round++) {
    // A v1 client that sends its last bytes and its end of stream together.
    const control = await tlsConnect(t, controlPort);
    const acked = readHandshake(control);
    control.write(encodeHandshake({ id: `raw-${round}` }));
    const publicPort = (await acked).message.port as number;
    const arrived = onceWithin<{ streamId: number }>(server.events, "visitor-connected");
    const visitor = await connect(t, publicPort);
    const { streamId } = await arrived;
    const data = pseudoRandomBytes(100 * 1024, round);
    control.end(encodeFrame(streamId, FrameType.DATA, data));
    const got = await readAll(visitor);
    assert.equal(got.length, data.length, `round ${round}`);
    assert.equal(sha256(got), sha256(data));
  }
});
