/**
 * Reusable reads: a busy socket reads into one buffer it keeps instead of a fresh allocation per
 * read. Every byte must still arrive intact and in order, whether the consumer is done with each
 * chunk at once or keeps it (then the next read must go elsewhere), and pause, resume and 'end'
 * must behave as on an ordinary socket. Through the tunnel, listeners and slow local sockets that
 * hold on to chunks must see exactly the bytes that were sent.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import type { Socket } from "node:net";
import { type TestContext, test } from "node:test";
import tls from "node:tls";
import { holdReads, resumeReading, stopReading } from "../../src/mux/read-gate.js";
import {
  ReadBufferBudget,
  readIntoReusableBuffer,
  spareReadBuffers,
} from "../../src/mux/reusable-reads.js";
import { FrameType } from "../../src/protocol/constants.js";
import {
  CERT,
  closeServer,
  connect,
  KEY,
  listen,
  pseudoRandomBytes,
  readAll,
  sha256,
  socketPair,
  startService,
  startTunnel,
  trackSockets,
  until,
  withTimeout,
} from "../helpers/net.js";
import { clientOfRawServer, evilServer, u32 } from "../helpers/raw-peer.js";
import { RawFrameReader, v1Frame, v1Handshake } from "../helpers/v1-peer.js";

const PAYLOAD = pseudoRandomBytes(8 * 1024 * 1024, 11);

/** A connected pair whose accepted side flows, as a socket with a 'data' listener does. */
async function flowingPair(t: TestContext): Promise<{ accepted: Socket; dialer: Socket }> {
  const pair = await socketPair(t);
  pair.accepted.resume();
  return pair;
}

/** Switches `socket` and copies every chunk it reads: what was read, and how much. */
function copyReads(socket: Socket): { copies: Buffer[]; received: () => number } {
  const copies: Buffer[] = [];
  let received = 0;
  readIntoReusableBuffer(
    socket,
    (chunk) => {
      copies.push(Buffer.from(chunk));
      received += chunk.length;
      return false;
    },
    new ReadBufferBudget(1),
  );
  return { copies, received: () => received };
}

/** Waits until the writer's queue stops shrinking: the reader's kernel buffers are full. */
async function writerStalled(writer: Socket): Promise<void> {
  let last = -1;
  await until(
    () => {
      const queued = writer.writableLength;
      const stalled = queued > 0 && queued === last;
      last = queued;
      return stalled;
    },
    5000,
    "the writer to stall",
  );
}

test("an accepted socket switched to a reusable buffer delivers every byte and its end", async (t) => {
  const { accepted, dialer } = await flowingPair(t);
  const budget = new ReadBufferBudget(1);
  const copies: Buffer[] = [];
  assert.equal(
    readIntoReusableBuffer(
      accepted,
      (chunk) => {
        copies.push(Buffer.from(chunk));
        return false;
      },
      budget,
    ),
    true,
  );
  assert.equal(budget.inUse, 1);
  const ended = once(accepted, "end");
  dialer.end(PAYLOAD);
  await ended;
  assert.equal(sha256(Buffer.concat(copies)), sha256(PAYLOAD));
  // One buffer served every read: the copies came from views of the same memory.
  accepted.destroy();
  await until(() => budget.inUse === 0, 5000, "the buffer's place to be given back");
});

test("a consumer that keeps its chunks gets a fresh buffer for the next read", async (t) => {
  const { accepted, dialer } = await flowingPair(t);
  const kept: Buffer[] = [];
  const memory = new Set<ArrayBufferLike>();
  readIntoReusableBuffer(
    accepted,
    (chunk) => {
      kept.push(chunk);
      memory.add(chunk.buffer);
      return true;
    },
    new ReadBufferBudget(1),
  );
  const ended = once(accepted, "end");
  dialer.end(PAYLOAD);
  await ended;
  assert.equal(sha256(Buffer.concat(kept)), sha256(PAYLOAD));
  assert.equal(memory.size, kept.length, "each kept chunk has memory of its own");
});

test("a buffer whose bytes are still being written is not read into until every write is done", async (t) => {
  const source = await flowingPair(t);
  const fast = await flowingPair(t);
  const slow = await flowingPair(t);
  // The slow destination reads nothing until the source has ended: its writes stay queued while
  // the fast destination's writes of the same chunks complete.
  slow.accepted.pause();
  const fastCopies: Buffer[] = [];
  fast.accepted.on("data", (chunk: Buffer) => fastCopies.push(chunk));
  readIntoReusableBuffer(
    source.accepted,
    (chunk, hold) => {
      fast.dialer.write(chunk, hold());
      slow.dialer.write(chunk, hold());
      return false;
    },
    new ReadBufferBudget(1),
  );
  const ended = once(source.accepted, "end");
  source.dialer.end(PAYLOAD);
  await ended;
  const slowAll = readAll(slow.accepted, 30_000);
  // The fast copies are complete only at the fast reader's end (it may lag on a busy machine).
  const fastEnded = once(fast.accepted, "end");
  slow.dialer.end();
  fast.dialer.end();
  slow.accepted.resume();
  assert.equal(sha256(await slowAll), sha256(PAYLOAD));
  await fastEnded;
  assert.equal(sha256(Buffer.concat(fastCopies)), sha256(PAYLOAD));
});

/**
 * Sends PAYLOAD into a switched socket whose chunks' writes stay in flight `burst` at a time and
 * then all complete in one go (the last, partial burst once every byte was read). Returns each chunk's
 * copy and the distinct buffers the chunks were read into.
 */
async function transferInBursts(
  t: TestContext,
  burst: number,
): Promise<{ copies: Buffer[]; memory: Set<ArrayBufferLike> }> {
  const { accepted, dialer } = await flowingPair(t);
  const copies: Buffer[] = [];
  const memory = new Set<ArrayBufferLike>();
  let batch: Array<() => void> = [];
  const releaseBatch = () => {
    const done = batch;
    batch = [];
    for (const release of done) release();
  };
  readIntoReusableBuffer(
    accepted,
    (chunk, hold) => {
      copies.push(Buffer.from(chunk));
      memory.add(chunk.buffer);
      batch.push(hold());
      if (batch.length === burst) {
        holdReads(accepted);
        setImmediate(() => {
          releaseBatch();
          resumeReading(accepted);
        });
      }
      return false;
    },
    new ReadBufferBudget(1),
  );
  // The connection stays open: a socket at rest keeps what its closing would let go.
  dialer.write(PAYLOAD);
  const received = () => copies.reduce((sum, copy) => sum + copy.length, 0);
  await until(() => received() === PAYLOAD.length, 10_000, "every byte to be read");
  releaseBatch();
  assert.equal(sha256(Buffer.concat(copies)), sha256(PAYLOAD));
  return { copies, memory };
}

test("writes that complete together give their buffers back as spares", async (t) => {
  // Two chunks' writes at a time: the same three buffers serve the whole transfer.
  const { copies, memory } = await transferInBursts(t, 2);
  assert.ok(copies.length >= 12, `${copies.length} reads`);
  assert.ok(memory.size <= 3, `${memory.size} buffers for ${copies.length} reads`);
});

test("spares a burst of writes needed serve the next burst, and are let go once unused", async (t) => {
  // Sixteen at a time: kept as spares, the same seventeen buffers serve the whole transfer
  // instead of fourteen fresh ones per burst.
  const { copies, memory } = await transferInBursts(t, 16);
  assert.ok(copies.length >= 48, `${copies.length} reads`);
  assert.ok(memory.size <= 18, `${memory.size} buffers for ${copies.length} reads`);
  // At rest the socket keeps its one buffer, as before the burst.
  assert.ok(spareReadBuffers() > 0, "the burst's spares are kept for a while");
  await until(() => spareReadBuffers() === 0, 5000, "the unused spares to be let go");
});

test("pausing a reusing socket leaves the bytes in the kernel and resuming delivers them", async (t) => {
  const { accepted, dialer } = await flowingPair(t);
  const { copies, received } = copyReads(accepted);
  stopReading(accepted);
  dialer.write(PAYLOAD);
  // The writer fills the kernel buffers and then has to queue: nothing was read meanwhile.
  await writerStalled(dialer);
  assert.equal(received(), 0);
  const ended = once(accepted, "end");
  resumeReading(accepted);
  dialer.end();
  await ended;
  assert.equal(sha256(Buffer.concat(copies)), sha256(PAYLOAD));
});

test("a stopped reusing socket stays stopped through the stream machinery's own reads", async (t) => {
  const { accepted, dialer } = await flowingPair(t);
  const { copies, received } = copyReads(accepted);
  stopReading(accepted);
  // What Node's Readable does on its own (a resume() scheduled a tick earlier ends in read(0)):
  // for a reusing socket each of these restarts the kernel reads unless the gate prevents it.
  accepted.read(0);
  accepted.resume();
  dialer.write(PAYLOAD);
  await writerStalled(dialer);
  assert.equal(received(), 0, "nothing is read while stopped");
  const ended = once(accepted, "end");
  resumeReading(accepted);
  dialer.end();
  await ended;
  assert.equal(accepted.destroyed && !accepted.readableEnded, false);
  assert.equal(sha256(Buffer.concat(copies)), sha256(PAYLOAD));
});

test("a stopped or paused socket is not switched", async (t) => {
  const { accepted } = await flowingPair(t);
  stopReading(accepted);
  assert.equal(
    readIntoReusableBuffer(accepted, () => false, new ReadBufferBudget(4)),
    false,
  );
  resumeReading(accepted);
  accepted.pause();
  assert.equal(
    readIntoReusableBuffer(accepted, () => false, new ReadBufferBudget(4)),
    false,
  );
});

test("a used-up budget leaves further sockets on the ordinary path until one closes", async (t) => {
  const budget = new ReadBufferBudget(1);
  const first = await flowingPair(t);
  const second = await flowingPair(t);
  assert.equal(
    readIntoReusableBuffer(first.accepted, () => false, budget),
    true,
  );
  assert.equal(
    readIntoReusableBuffer(second.accepted, () => false, budget),
    false,
  );
  first.accepted.destroy();
  await until(() => budget.inUse === 0, 5000, "the first socket's place to be given back");
  assert.equal(
    readIntoReusableBuffer(second.accepted, () => false, budget),
    true,
  );
});

test("TLS sockets and sockets with bytes waiting are left on the ordinary path", async (t) => {
  const server = tls.createServer({ cert: CERT, key: KEY });
  const sockets = trackSockets(server);
  const port = await listen(server);
  t.after(() => closeServer(server, sockets));
  const accepted = once(server, "secureConnection");
  const dialer = tls.connect({ port, host: "127.0.0.1", ca: CERT, servername: "localhost" });
  dialer.on("error", () => {});
  t.after(() => dialer.destroy());
  await once(dialer, "secureConnect");
  const [tlsSocket] = (await accepted) as [tls.TLSSocket];
  assert.equal(
    readIntoReusableBuffer(tlsSocket, () => false, new ReadBufferBudget(4)),
    false,
  );

  const pair = await flowingPair(t);
  pair.accepted.pause();
  pair.dialer.write("waiting");
  await until(() => pair.accepted.readableLength > 0, 5000, "bytes to wait in the stream");
  assert.equal(
    readIntoReusableBuffer(pair.accepted, () => false, new ReadBufferBudget(4)),
    false,
  );
});

test("through the tunnel, data listeners get exactly the bytes sent both ways", async (t) => {
  const upload = pseudoRandomBytes(4 * 1024 * 1024, 21);
  const download = pseudoRandomBytes(4 * 1024 * 1024, 22);
  const service = await startService(t, (socket) => {
    let length = 0;
    socket.on("data", (chunk: Buffer) => {
      length += chunk.length;
      if (length === upload.length) socket.end(download);
    });
  });
  const { server, client, publicPort } = await startTunnel(t, service.port);
  // Listeners keep every chunk they are handed: none may change after the fact.
  const seen = { fromVisitor: [] as Buffer[], toVisitor: [] as Buffer[] };
  const seenClient = { fromService: [] as Buffer[], toService: [] as Buffer[] };
  server.events.on("data-from-visitor", ({ data }) => seen.fromVisitor.push(data));
  server.events.on("data-to-visitor", ({ data }) => seen.toVisitor.push(data));
  client.events.on("data-from-service", ({ data }) => seenClient.fromService.push(data));
  client.events.on("data-to-service", ({ data }) => seenClient.toService.push(data));
  const visitor = await connect(t, publicPort);
  const received = readAll(visitor, 60_000);
  visitor.write(upload);
  const got = await received;
  assert.equal(sha256(got), sha256(download));
  assert.equal(sha256(Buffer.concat(seen.fromVisitor)), sha256(upload));
  assert.equal(sha256(Buffer.concat(seenClient.toService)), sha256(upload));
  assert.equal(sha256(Buffer.concat(seenClient.fromService)), sha256(download));
  assert.equal(sha256(Buffer.concat(seen.toVisitor)), sha256(download));
});

test("through the tunnel, a service that reads slowly still gets every byte in order", async (t) => {
  const upload = pseudoRandomBytes(16 * 1024 * 1024, 31);
  let uploadedHash = "";
  const service = await startService(t, (socket) => {
    const chunks: Buffer[] = [];
    let length = 0;
    // Reads in bursts with pauses, so the client's writes to it queue (and pin their chunks).
    const pump = setInterval(() => socket.resume(), 5);
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      length += chunk.length;
      socket.pause();
      if (length === upload.length) {
        clearInterval(pump);
        uploadedHash = sha256(Buffer.concat(chunks));
        socket.end("done");
      }
    });
    socket.on("close", () => clearInterval(pump));
  });
  // v1 (no windows): the client stops reading the control connection while the service lags, so
  // the server's writes of visitor chunks queue and their reused buffers must not be overwritten.
  const setups = [
    {},
    { streamWindowBytes: 16 * 1024, maxStreamWindowBytes: 16 * 1024 },
    { extensions: false },
  ];
  for (const windows of setups) {
    uploadedHash = "";
    const { publicPort } = await startTunnel(t, service.port, windows, windows);
    const visitor = await connect(t, publicPort);
    const reply = readAll(visitor, 60_000);
    visitor.write(upload);
    assert.equal((await reply).toString(), "done");
    assert.equal(uploadedHash, sha256(upload), JSON.stringify(windows));
  }
});

test("through the tunnel, a busy source whose chunks keep running out of credit part-way sends every byte in order", async (t) => {
  const STREAM = 1;
  // Odd-sized grants from a raw server: the service socket reads into a reusable buffer, and its
  // chunks keep running out of credit part-way, the rest waiting for the next grant.
  const GRANT = 100_003;
  const AHEAD = 40 * GRANT;
  const reply = pseudoRandomBytes(24 * 1024 * 1024, 51);
  const service = await startService(t, (socket) => {
    socket.resume();
    socket.end(reply);
  });
  const received: Buffer[] = [];
  let streamOver = () => {};
  const over = new Promise<void>((resolve) => {
    streamOver = resolve;
  });
  const evil = await evilServer(t, (socket) => {
    let receivedBytes = 0;
    let granted = GRANT;
    // Reads in bursts: the credit it returns comes in bursts too.
    const pump = setInterval(() => socket.resume(), 2);
    socket.on("close", () => clearInterval(pump));
    const reader = new RawFrameReader({
      handshake: () => {
        socket.write(
          v1Handshake({ port: 40000, w3p: { v: 2, ext: ["open", "flow", "fin"], win: GRANT } }),
        );
        socket.write(v1Frame(STREAM, FrameType.OPEN, Buffer.from("{}")));
      },
      frame: (frame) => {
        if (frame.streamId !== STREAM || frame.type === FrameType.WINDOW) return;
        if (frame.type !== FrameType.DATA) {
          streamOver();
          return;
        }
        received.push(frame.payload);
        receivedBytes += frame.payload.length;
        while (granted < receivedBytes + AHEAD) {
          socket.write(v1Frame(STREAM, FrameType.WINDOW, u32(GRANT)));
          granted += GRANT;
        }
      },
      badInput: () => socket.destroy(),
    });
    socket.on("data", (chunk: Buffer) => {
      reader.push(chunk);
      socket.pause();
    });
  });
  clientOfRawServer(t, evil.port, service.port);
  await withTimeout(over, 60_000, "the end of the stream");
  assert.equal(sha256(Buffer.concat(received)), sha256(reply));
});

test("through the tunnel, a busy visitor's end arrives after all its bytes, both ways", async (t) => {
  const upload = pseudoRandomBytes(8 * 1024 * 1024, 41);
  const download = pseudoRandomBytes(8 * 1024 * 1024, 42);
  let uploadedHash = "";
  const service = await startService(t, (socket) => {
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    // Half-close: the service answers only once the visitor has finished sending.
    socket.on("end", () => {
      uploadedHash = sha256(Buffer.concat(chunks));
      socket.end(download);
    });
  });
  const { publicPort } = await startTunnel(t, service.port);
  const visitor = await connect(t, publicPort, "127.0.0.1", { allowHalfOpen: true });
  const received = readAll(visitor, 60_000);
  visitor.end(upload);
  const got = await received;
  assert.equal(uploadedHash, sha256(upload));
  assert.equal(sha256(got), sha256(download));
});
