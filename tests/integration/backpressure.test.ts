/**
 * A producer faster than its consumer is paused, never buffered without bound: with v1 peers
 * (the whole connection pauses) and with the flow extension (per-stream credit).
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { test } from "node:test";
import {
  connect,
  echoService,
  pseudoRandomBytes,
  readBytes,
  sha256,
  startService,
  startTunnel,
} from "../helpers/net.js";

const CHUNK = Buffer.alloc(1 << 20, 0x61);
/** Far more than every kernel buffer on the path plus the tunnel's own windows. */
const ATTEMPT_LIMIT = 512 << 20;
/** Loopback socket buffers on the path (several MiB each) plus windows stay under this. */
const BUFFER_BOUND = 64 << 20;

/**
 * Writes until the socket stops draining for `quietMs` and returns the bytes the kernel took
 * (written minus still queued in Node). Throws if the attempt limit is reached: unbounded.
 */
async function pushUntilStalled(socket: Socket, quietMs = 1_000): Promise<number> {
  let written = 0;
  while (written < ATTEMPT_LIMIT) {
    written += CHUNK.length;
    if (socket.write(CHUNK)) continue;
    const drained = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        socket.off("drain", onDrain);
        resolve(false);
      }, quietMs);
      const onDrain = () => {
        clearTimeout(timer);
        resolve(true);
      };
      socket.once("drain", onDrain);
    });
    if (!drained) return written - socket.writableLength;
  }
  throw new Error(`the tunnel accepted ${ATTEMPT_LIMIT} bytes without pushing back`);
}

for (const extensions of [false, true]) {
  const mode = extensions ? "with the flow extension" : "between v1 peers";
  test(`a visitor uploading into a service that does not read is paused (${mode})`, async (t) => {
    let serviceSocket: Socket | null = null;
    const service = await startService(t, (socket) => {
      socket.pause();
      serviceSocket = socket;
    });
    const { publicPort } = await startTunnel(t, service.port, { extensions }, { extensions });
    const visitor = await connect(t, publicPort);
    const accepted = await pushUntilStalled(visitor);
    assert.ok(serviceSocket, "the service was dialled");
    assert.ok(accepted < BUFFER_BOUND, `${accepted >> 20} MiB were buffered`);
  });

  test(`a service sending to a visitor that does not read is paused (${mode})`, async (t) => {
    const accepted: number[] = [];
    const service = await startService(t, (socket) => {
      pushUntilStalled(socket).then(
        (bytes) => accepted.push(bytes),
        (err: Error) => accepted.push(Number.NaN, err.message.length),
      );
    });
    const { publicPort } = await startTunnel(t, service.port, { extensions }, { extensions });
    const visitor = await connect(t, publicPort);
    visitor.pause();
    const deadline = Date.now() + 60_000;
    while (accepted.length === 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.equal(accepted.length, 1, "the service stalled");
    assert.ok(accepted[0]! < BUFFER_BOUND, `${accepted[0]! >> 20} MiB were buffered`);
  });
}

for (const extensions of [false, true]) {
  const mode = extensions ? "with the flow extension" : "between v1 peers";
  test(`many uploads through a small control buffer all finish intact, new streams included (${mode})`, async (t) => {
    // 64 KiB of control buffer: the connection is full almost all the time, so streams are paused
    // together, opened while paused, and resumed in batches. None may be left waiting.
    const service = await echoService(t);
    const limits = { extensions, controlWriteBufferBytes: 64 * 1024 };
    const { publicPort } = await startTunnel(t, service.port, limits, limits);
    // Each visitor starts once the one before it is moving data, so streams keep opening while
    // the control connection is full.
    const uploads: Promise<void>[] = [];
    for (let i = 0; i < 40; i++) {
      const payload = pseudoRandomBytes(1024 * 1024, i + 1);
      const visitor = await connect(t, publicPort);
      const flowing = readBytes(visitor, 1, 30_000);
      const echoed = readBytes(visitor, payload.length, 30_000);
      visitor.write(payload);
      uploads.push(
        echoed.then((bytes) => {
          assert.equal(sha256(bytes), sha256(payload), `stream ${i} echoed intact`);
          visitor.end();
        }),
      );
      await flowing;
    }
    await Promise.all(uploads);
  });
}
