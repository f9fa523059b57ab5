/**
 * The read gate: a paused stream source must leave unread bytes in the kernel, not in the
 * process (1,000 paused visitors would otherwise hold a 64 KiB read each), and must deliver
 * every byte, in order, once resumed.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { test } from "node:test";
import tls from "node:tls";
import { resumeReading, stopReading } from "../../src/mux/read-gate.js";
import {
  CERT,
  closeServer,
  connect,
  echoService,
  KEY,
  listen,
  pseudoRandomBytes,
  readBytes,
  socketPair,
  trackSockets,
} from "../helpers/net.js";

const PAYLOAD = pseudoRandomBytes(2 * 1024 * 1024, 7);

/** Several loopback round trips: the event loop polls I/O each time, so pending reads happen. */
async function letIoRun(t: import("node:test").TestContext): Promise<void> {
  const echo = await echoService(t);
  const probe = await connect(t, echo.port);
  for (let i = 0; i < 5; i++) {
    probe.write("ping");
    await readBytes(probe, 4);
  }
  probe.destroy();
}

test("stopReading leaves the bytes in the kernel; resumeReading delivers all of them in order", async (t) => {
  const { accepted, dialer } = await socketPair(t);
  stopReading(accepted);
  dialer.write(PAYLOAD);
  await letIoRun(t);
  assert.equal(accepted.bytesRead, 0, "nothing read while stopped");
  assert.equal(accepted.readableLength, 0);

  const received = readBytes(accepted, PAYLOAD.length);
  resumeReading(accepted);
  assert.ok((await received).equals(PAYLOAD));
});

test("contrast: pause() alone still reads a chunk into the process", async (t) => {
  // Shows the test above can fail: without the gate a paused socket keeps one read buffered.
  const { accepted, dialer } = await socketPair(t);
  accepted.pause();
  dialer.write(PAYLOAD);
  await letIoRun(t);
  assert.ok(accepted.bytesRead > 0, "pause() alone read into the stream buffer");
  const received = readBytes(accepted, PAYLOAD.length);
  accepted.resume();
  assert.ok((await received).equals(PAYLOAD));
});

test("stop and resume repeatedly, and resume without a stop, lose and duplicate nothing", async (t) => {
  const { accepted, dialer } = await socketPair(t);
  const chunks: Buffer[] = [];
  let length = 0;
  accepted.on("data", (chunk: Buffer) => {
    chunks.push(chunk);
    length += chunk.length;
    // Gate on every chunk, as a stream does when the control connection keeps filling up.
    stopReading(accepted);
    stopReading(accepted);
    setImmediate(() => resumeReading(accepted));
  });
  resumeReading(accepted);
  dialer.end(PAYLOAD);
  await once(accepted, "end");
  assert.equal(length, PAYLOAD.length);
  assert.ok(Buffer.concat(chunks).equals(PAYLOAD));
});

test("a TLS socket is paused (not gated at the handle) and resumes with every byte", async (t) => {
  const server = tls.createServer({ key: KEY, cert: CERT });
  const sockets = trackSockets(server);
  server.on("secureConnection", (socket) => sockets.add(socket));
  const port = await listen(server);
  t.after(() => closeServer(server, sockets));
  const secured = once(server, "secureConnection");
  const dialer = tls.connect({ port, host: "127.0.0.1", ca: CERT, servername: "localhost" });
  dialer.on("error", () => {});
  t.after(() => dialer.destroy());
  await once(dialer, "secureConnect");
  const [accepted] = (await secured) as [tls.TLSSocket];
  stopReading(accepted);
  assert.equal(accepted.isPaused(), true);
  dialer.write(PAYLOAD);
  const received = readBytes(accepted, PAYLOAD.length);
  resumeReading(accepted);
  assert.ok((await received).equals(PAYLOAD));
});
