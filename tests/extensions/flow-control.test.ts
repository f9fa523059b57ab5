/**
 * Per-stream flow control: a stream whose reader stalls holds at most its window inside the
 * tunnel and never delays another stream of the same tunnel.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type { Socket } from "node:net";
import net from "node:net";
import { performance } from "node:perf_hooks";
import { type TestContext, test } from "node:test";
import type { TunnelError } from "../../src/errors.js";
import { readsStopped } from "../../src/mux/read-gate.js";
import { FrameType } from "../../src/protocol/constants.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  closed,
  connect,
  listen,
  onceWithin,
  pseudoRandomBytes,
  readBytes,
  sha256,
  startService,
  startTunnel,
  until,
  WAIT_MS,
  withTimeout,
} from "../helpers/net.js";
import { clientOfRawServer, evilServer, u32 } from "../helpers/raw-peer.js";
import { RawFrameReader, v1Frame, v1Handshake } from "../helpers/v1-peer.js";

const WINDOW = 64 * 1024;
const MAX_WINDOW = 256 * 1024;
const BULK_BYTES = 32 << 20;
const PINGS = 200;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!;
}

for (const [label, window, maxWindow] of [
  ["64 KiB window growing to 256 KiB", WINDOW, MAX_WINDOW],
  ["default windows (256 KiB growing to 4 MiB)", undefined, undefined],
] as const) {
  test(`a stalled stream holds at most its window and never delays another stream: ${label}`, async (t) => {
    const block = pseudoRandomBytes(1 << 20, 31);
    // The first byte picks the role: "B" streams BULK_BYTES then ends, "E" echoes what follows.
    const service = await startService(t, (socket) => {
      socket.once("data", (first: Buffer) => {
        if (first[0] === 0x42) {
          let written = 0;
          const pump = () => {
            while (written < BULK_BYTES) {
              written += block.length;
              if (!socket.write(block)) {
                socket.once("drain", pump);
                return;
              }
            }
            socket.end();
          };
          pump();
          return;
        }
        if (first.length > 1) socket.write(first.subarray(1));
        socket.pipe(socket);
      });
    });
    const limits = { streamWindowBytes: window, maxStreamWindowBytes: maxWindow };
    const bound = maxWindow ?? 4 << 20;
    const { server, client, publicPort } = await startTunnel(t, service.port, limits, limits);

    // Stream A: a visitor that asks for the bulk download and then reads nothing.
    const visitorConnected = onceWithin<{ visitorSocket: Socket; streamId: number }>(
      server.events,
      "visitor-connected",
    );
    const serviceConnected = onceWithin<{ serviceSocket: Socket }>(
      client.events,
      "service-connected",
    );
    const stalled = await connect(t, publicPort);
    stalled.pause();
    stalled.write("B");
    const { visitorSocket: serverSideA } = await visitorConnected;
    const { serviceSocket: clientSideA } = await serviceConnected;
    // The stall reaches the tunnel: the visitor's kernel buffers are full, bytes wait on the
    // server, and the client stopped reading the service for lack of credit.
    await until(
      () => serverSideA.writableLength > 0 && readsStopped(clientSideA),
      10_000,
      "stream A to stall on its window",
    );
    const rssBefore = process.memoryUsage().rss;

    // Stream B: sequential 64-byte ping-pongs on the same tunnel.
    const pinger = await connect(t, publicPort);
    pinger.write("E");
    const latencies: number[] = [];
    let peakBuffered = 0;
    const bufferedForA = () =>
      serverSideA.writableLength + clientSideA.readableLength + clientSideA.writableLength;
    const started = performance.now();
    for (let i = 0; i < PINGS; i++) {
      const ping = pseudoRandomBytes(64, 1000 + i);
      const sentAt = performance.now();
      const pong = readBytes(pinger, 64, 5_000);
      pinger.write(ping);
      assert.deepEqual(await pong, ping, `ping ${i}`);
      latencies.push(performance.now() - sentAt);
      peakBuffered = Math.max(peakBuffered, bufferedForA());
    }
    const totalMs = performance.now() - started;
    const rssPeak = process.memoryUsage().rss;
    latencies.sort((a, b) => a - b);
    t.diagnostic(
      `ping p50 ${percentile(latencies, 50).toFixed(2)} ms, p99 ${percentile(latencies, 99).toFixed(2)} ms, total ${totalMs.toFixed(0)} ms; stalled stream buffered peak ${peakBuffered} bytes (max window ${bound}); rss ${(rssBefore / 2 ** 20).toFixed(0)} -> ${(rssPeak / 2 ** 20).toFixed(0)} MiB`,
    );
    assert.ok(totalMs < 5_000, `200 ping-pongs took ${totalMs} ms`);
    assert.ok(readsStopped(clientSideA), "stream A is still stalled");
    assert.ok(peakBuffered <= bound * 4, `stalled stream buffers ${peakBuffered} bytes`);
    // The server never holds more for A than the window it granted.
    assert.ok(serverSideA.writableLength <= bound, `server holds ${serverSideA.writableLength}`);

    // Resume the stalled reader: every byte arrives intact and in order.
    const hash = createHash("sha256");
    let received = 0;
    stalled.on("data", (chunk: Buffer) => {
      hash.update(chunk);
      received += chunk.length;
    });
    stalled.resume();
    await onceWithin(stalled, "end", 30_000);
    const expected = createHash("sha256");
    for (let i = 0; i < BULK_BYTES / block.length; i++) expected.update(block);
    assert.equal(received, BULK_BYTES);
    assert.equal(hash.digest("hex"), expected.digest("hex"));
  });
}

test("a slow uploader's visitor is throttled by the service's window, not buffered", async (t) => {
  // The reverse direction: the local service does not read, the visitor keeps writing.
  let serviceSocket: Socket | null = null;
  const service = await startService(t, (socket) => {
    serviceSocket = socket;
    socket.pause();
  });
  const limits = { streamWindowBytes: WINDOW, maxStreamWindowBytes: MAX_WINDOW };
  const { server, client, publicPort } = await startTunnel(t, service.port, limits, limits);
  const visitorConnected = onceWithin<{ visitorSocket: Socket }>(
    server.events,
    "visitor-connected",
  );
  const serviceConnected = onceWithin<{ serviceSocket: Socket }>(
    client.events,
    "service-connected",
  );
  const uploader = await connect(t, publicPort);
  const { visitorSocket: serverSide } = await visitorConnected;
  const { serviceSocket: clientSide } = await serviceConnected;
  const chunk = pseudoRandomBytes(1 << 20, 41);
  let written = 0;
  let blocked = false;
  const pump = () => {
    while (written < BULK_BYTES) {
      written += chunk.length;
      if (!uploader.write(chunk)) {
        blocked = true;
        uploader.once("drain", () => {
          blocked = false;
          pump();
        });
        return;
      }
    }
  };
  pump();
  await until(
    () => blocked && readsStopped(serverSide) && clientSide.writableLength > 0,
    10_000,
    "the upload to stall on the window",
  );
  assert.ok(clientSide.writableLength <= MAX_WINDOW, `client holds ${clientSide.writableLength}`);
  assert.ok(written < BULK_BYTES, "the visitor was held back");
  // Let the service read: everything arrives.
  const hash = createHash("sha256");
  let received = 0;
  const expectedLength = BULK_BYTES;
  const done = new Promise<void>((resolve) => {
    (serviceSocket as Socket | null)!.on("data", (data: Buffer) => {
      hash.update(data);
      received += data.length;
      if (received === expectedLength) resolve();
    });
  });
  (serviceSocket as Socket | null)!.resume();
  await done;
  const expected = createHash("sha256");
  for (let i = 0; i < BULK_BYTES / chunk.length; i++) expected.update(chunk);
  assert.equal(hash.digest("hex"), expected.digest("hex"));
});

test("FIN waits for bytes still held back by the window (visitor ends a large upload)", async (t) => {
  const upload = pseudoRandomBytes(8 << 20, 61);
  let serviceSocket: Socket | null = null;
  const service = await startService(t, (socket) => {
    serviceSocket = socket;
    socket.pause();
  });
  const limits = { streamWindowBytes: WINDOW, maxStreamWindowBytes: MAX_WINDOW };
  const { client, publicPort } = await startTunnel(t, service.port, limits, limits);
  const serviceConnected = onceWithin(client.events, "service-connected");
  const visitor = await connect(t, publicPort);
  await serviceConnected;
  const answer = readBytes(visitor, 64);
  // The whole upload and its EOF are handed over at once; the tunnel holds most of it back
  // while the service does not read. (Not waiting for 'finish': how much the kernels on the
  // path absorb is up to their autotuning, and a reader that stops reading keeps it small.)
  visitor.end(upload);
  await until(
    () => (client.stats().services[0]?.bytesIn ?? 0) >= WINDOW,
    WAIT_MS,
    "a full window to reach the client",
  );
  const local = serviceSocket as Socket | null;
  assert.ok(local, "service connected");
  const chunks: Buffer[] = [];
  local.on("data", (chunk: Buffer) => chunks.push(chunk));
  local.once("end", () => local.end(sha256(Buffer.concat(chunks))));
  local.resume();
  assert.equal((await answer).toString(), sha256(upload), "every byte arrived before the EOF");
});

test("a peer that sends beyond its window is cut off (W3P_ERR_FLOW_VIOLATION)", async (t) => {
  const server = new TunnelServer({ streamWindowBytes: WINDOW });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const raw = net.connect({ port: controlPort, host: "127.0.0.1" });
  t.after(() => raw.destroy());
  raw.on("error", () => {});
  let ack: { port: number; w3p: { win: number } } | null = null;
  const opened: number[] = [];
  const reader = new RawFrameReader({
    handshake: (body) => {
      ack = JSON.parse(body.toString("utf8"));
      raw.emit("ack");
    },
    frame: (frame) => {
      if (frame.type === 0x04) {
        opened.push(frame.streamId);
        raw.emit("open");
      }
    },
    badInput: () => {},
  });
  raw.on("data", (chunk: Buffer) => reader.push(chunk));
  raw.write(v1Handshake({ id: "greedy", w3p: { v: 2, ext: ["open", "flow"], win: WINDOW } }));
  await onceWithin(raw, "ack");
  assert.equal(ack!.w3p.win, WINDOW);
  const tunnelError = onceWithin<{ err: TunnelError }>(server.events, "tunnel-error");
  const opening = onceWithin(raw, "open");
  const visitor = await connect(t, ack!.port);
  visitor.on("error", () => {});
  await opening;
  // One frame one byte larger than the whole window the server granted.
  const rawClosed = closed(raw); // the server may reset it: unread bytes are pending
  raw.write(v1Frame(opened[0]!, 0x01, Buffer.alloc(WINDOW + 1)));
  const { err } = await tunnelError;
  assert.equal(err.code, "W3P_ERR_FLOW_VIOLATION");
  await rawClosed;
});

test("flow without open: a stream's first DATA frame counts against its window too", async (t) => {
  // A server that agreed to flow but not open starts streams with DATA (as in v1). The client
  // must charge that first frame: within the window it is delivered whole, beyond it the
  // connection is cut with W3P_ERR_FLOW_VIOLATION.
  const received: Buffer[] = [];
  const service = await startService(t, (socket) => socket.on("data", (d) => received.push(d)));
  for (const [size, outcome] of [
    [WINDOW, "delivered"],
    [WINDOW + 1, "cut off"],
  ] as const) {
    received.length = 0;
    const evil = net.createServer((socket) => {
      socket.on("error", () => {});
      socket.once("data", () => {
        socket.write(v1Handshake({ port: 40000, w3p: { v: 2, ext: ["flow"], win: WINDOW } }));
        // Split in two writes: the first frame reaches the client in parts.
        const frame = v1Frame(1, 0x01, pseudoRandomBytes(size, size));
        socket.write(frame.subarray(0, 1000));
        setImmediate(() => socket.write(frame.subarray(1000)));
      });
    });
    const evilPort = await listen(evil);
    t.after(() => evil.close());
    const client = clientOfRawServer(t, evilPort, service.port, { streamWindowBytes: WINDOW });
    if (outcome === "delivered") {
      await until(() => received.reduce((n, b) => n + b.length, 0) >= size, 5_000, "delivery");
      assert.ok(Buffer.concat(received).equals(pseudoRandomBytes(size, size)));
      assert.equal(client.isConnected, true);
    } else {
      const { err } = await onceWithin<{ err: TunnelError }>(client.events, "tunnel-error");
      assert.equal(err.code, "W3P_ERR_FLOW_VIOLATION");
    }
    await client.stop();
    evil.close();
  }
});

/**
 * A client whose server (raw, here) grants each stream only `win` bytes and opens stream 1 with
 * the visitor's side already ended. The service answers that EOF with `reply` and closes: the
 * client's service socket ends and closes while most of the reply still waits for credit.
 */
async function replyAwaitingCredit(
  t: TestContext,
  reply: Buffer,
  clientOptions: { closeGraceMs?: number } = {},
) {
  const STREAM = 1;
  const service = await startService(t, (socket) => {
    socket.resume();
    socket.on("end", () => socket.end(reply));
  });
  // What the client sends for the stream, in order, until the stream is over.
  const log: Array<{ type: number; payload: Buffer }> = [];
  let streamOver = () => {};
  const over = new Promise<void>((resolve) => {
    streamOver = resolve;
  });
  let control: Socket | undefined;
  const evil = await evilServer(t, (socket) => {
    control = socket;
    const reader = new RawFrameReader({
      handshake: () => {
        socket.write(
          v1Handshake({ port: 40000, w3p: { v: 2, ext: ["open", "flow", "fin"], win: 1024 } }),
        );
        socket.write(v1Frame(STREAM, FrameType.OPEN, Buffer.from("{}")));
        socket.write(v1Frame(STREAM, FrameType.FIN));
      },
      frame: (frame) => {
        if (frame.streamId !== STREAM || frame.type === FrameType.WINDOW) return;
        log.push(frame);
        if (frame.type !== FrameType.DATA) streamOver();
      },
      badInput: () => socket.destroy(),
    });
    socket.on("data", (chunk: Buffer) => reader.push(chunk));
  });
  const client = clientOfRawServer(t, evil.port, service.port, clientOptions);
  const serviceSocketClosed = onceWithin<{ serviceSocket: Socket }>(
    client.events,
    "service-connected",
  ).then(({ serviceSocket }) => closed(serviceSocket));
  return {
    client,
    log,
    over,
    serviceSocketClosed,
    grant: (bytes: number) => control?.write(v1Frame(STREAM, FrameType.WINDOW, u32(bytes))),
  };
}

test("a service that answers and closes while the answer waits for credit: all of it is sent when credit comes, then FIN", async (t) => {
  const reply = pseudoRandomBytes(40_000, 17);
  const stream = await replyAwaitingCredit(t, reply);
  // The socket is gone with 1 KiB sent and the rest waiting; nothing may have ended the stream.
  await stream.serviceSocketClosed;
  stream.grant(1 << 20);
  await withTimeout(stream.over, WAIT_MS, "the stream's end");
  const data = stream.log.filter((f) => f.type === FrameType.DATA);
  assert.ok(Buffer.concat(data.map((f) => f.payload)).equals(reply), "the whole reply, in order");
  assert.deepEqual(
    stream.log.slice(data.length).map((f) => f.type),
    [FrameType.FIN],
    "then FIN: the stream ended cleanly",
  );
});

test("a closed service's answer that gets no credit within closeGraceMs ends the stream with ERROR", async (t) => {
  const reply = pseudoRandomBytes(40_000, 18);
  const stream = await replyAwaitingCredit(t, reply, { closeGraceMs: 200 });
  await stream.serviceSocketClosed;
  await withTimeout(stream.over, WAIT_MS, "the stream's end");
  const types = stream.log.map((f) => f.type);
  assert.deepEqual(
    types,
    [FrameType.DATA, FrameType.ERROR],
    "1 KiB sent, then ERROR: the peer knows the rest is lost",
  );
});

test("stopping the client while a closed service's answer waits for credit ends that stream at once", async (t) => {
  const stream = await replyAwaitingCredit(t, pseudoRandomBytes(40_000, 19));
  const disconnected = onceWithin(stream.client.events, "service-disconnected");
  await stream.serviceSocketClosed;
  // The default grace is 10 s; stop() must not wait for it, and the stream must be reported gone.
  await withTimeout(stream.client.stop(), 5_000, "stop() with a stream waiting for credit");
  await withTimeout(disconnected, 1_000, "service-disconnected for that stream");
});

test("a stream out of credit stops reading before its next read, not part-way through one", async (t) => {
  const service = await startService(t, (socket) => {
    socket.resume();
    socket.write(pseudoRandomBytes(1 << 20, 21));
  });
  const evil = await evilServer(t, (socket) => {
    const reader = new RawFrameReader({
      handshake: () => {
        // 64 KiB of credit for stream 1, one byte more granted at once (a peer that grants
        // before credit runs out, as ours does), and never any more.
        const w3p = { v: 2, ext: ["open", "flow", "fin"], win: WINDOW };
        socket.write(v1Handshake({ port: 40000, w3p }));
        socket.write(v1Frame(1, FrameType.OPEN, Buffer.from("{}")));
        socket.write(v1Frame(1, FrameType.WINDOW, u32(1)));
      },
      frame: () => {},
      badInput: () => socket.destroy(),
    });
    socket.on("data", (chunk: Buffer) => reader.push(chunk));
  });
  const client = clientOfRawServer(t, evil.port, service.port);
  const { serviceSocket } = await onceWithin<{ serviceSocket: Socket }>(
    client.events,
    "service-connected",
  );
  const sent = () => client.stats().services[0]!.bytesOut;
  await until(
    () => readsStopped(serviceSocket) && sent() > WINDOW / 2,
    WAIT_MS,
    "the service socket to stop",
  );
  // Everything read was sent, but what Node's stream machinery reads ahead into the socket's own
  // buffer (at most one read; see read-gate.ts): no read's rest waits for credit in the stream.
  assert.equal(serviceSocket.bytesRead - sent(), serviceSocket.readableLength);
  assert.ok(serviceSocket.readableLength <= 64 * 1024);
  assert.ok(sent() <= WINDOW + 1);
});

test("a receiver that grants only once it has received all it granted still gets every byte and the FIN", async (t) => {
  const server = new TunnelServer();
  t.after(() => server.stop());
  await server.start(0, "127.0.0.1");
  const control = net.connect({ host: "127.0.0.1", port: server.port! });
  control.on("error", () => {});
  t.after(() => control.destroy());
  const GRANT = 32 * 1024;
  let granted = 256 * 1024;
  let received = 0;
  let fin = false;
  let publicPort = 0;
  const reader = new RawFrameReader({
    handshake: (body) => {
      publicPort = JSON.parse(body.toString()).port;
    },
    frame: ({ streamId, type, payload }) => {
      if (type === FrameType.DATA) {
        received += payload.length;
        // A receiver with a 32 KiB buffer: it asks for more only when it got all it asked for.
        if (received === granted) {
          granted += GRANT;
          control.write(v1Frame(streamId, FrameType.WINDOW, u32(GRANT)));
        }
      } else if (type === FrameType.FIN) {
        fin = true;
      }
    },
    badInput: (reason) => assert.fail(reason),
  });
  control.on("data", (chunk: Buffer) => reader.push(chunk));
  control.write(v1Handshake({ id: "small", w3p: { v: 2, ext: ["flow", "fin"], win: granted } }));
  await until(() => publicPort > 0);
  const visitor = net.connect({ host: "127.0.0.1", port: publicPort, allowHalfOpen: true });
  visitor.on("error", () => {});
  t.after(() => visitor.destroy());
  visitor.end(Buffer.alloc(1 << 20, 0x61));
  await until(() => fin, 10_000, "every byte and the FIN");
  assert.equal(received, 1 << 20);
});
