/**
 * When a tunnel goes down in the middle of a transfer, its connections end with a FIN by default
 * (as in W3P), which a peer reading to EOF takes for a complete transfer; with `resetOnAbort`
 * they are reset, so the peer sees the transfer was cut off.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { test } from "node:test";
import { connect, onceWithin, startService, startTunnel, until, WAIT_MS } from "../helpers/net.js";

/** How `socket` ended: "reset" (ECONNRESET) or "fin" (a clean end of stream). */
function ending(socket: Socket): Promise<"reset" | "fin"> {
  return new Promise((resolve) => {
    socket.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "ECONNRESET") resolve("reset");
    });
    socket.on("end", () => resolve("fin"));
  });
}

/** A service that streams to each connection as fast as it is read. */
function streamingService(t: Parameters<typeof startService>[0]) {
  const chunk = Buffer.alloc(16 * 1024, 0x61);
  return startService(t, (socket) => {
    const pump = () => {
      while (!socket.destroyed && socket.write(chunk)) {}
    };
    socket.on("drain", pump);
    pump();
  });
}

for (const resetOnAbort of [false, true]) {
  test(`client.stop() mid-download: the visitor gets ${resetOnAbort ? "a reset" : "a FIN"} (resetOnAbort ${resetOnAbort})`, async (t) => {
    const service = await streamingService(t);
    const { client, publicPort } = await startTunnel(t, service.port, { resetOnAbort });
    const visitor = await connect(t, publicPort);
    const ended = ending(visitor);
    let received = 0;
    visitor.on("data", (data: Buffer) => {
      received += data.length;
    });
    await until(() => received > 256 * 1024, WAIT_MS, "the download to flow");
    await client.stop();
    assert.equal(await ended, resetOnAbort ? "reset" : "fin");
  });

  test(`server.stop() mid-upload: the local service gets ${resetOnAbort ? "a reset" : "a FIN"} (resetOnAbort ${resetOnAbort})`, async (t) => {
    const accepted: Socket[] = [];
    let received = 0;
    const service = await startService(t, (socket) => {
      accepted.push(socket);
      socket.on("data", (data: Buffer) => {
        received += data.length;
      });
    });
    const { server, client, publicPort } = await startTunnel(t, service.port, {}, { resetOnAbort });
    const visitor = await connect(t, publicPort);
    visitor.on("error", () => {});
    const chunk = Buffer.alloc(16 * 1024, 0x62);
    const pump = () => {
      while (!visitor.destroyed && visitor.write(chunk)) {}
    };
    visitor.on("drain", pump);
    pump();
    await until(() => received > 256 * 1024, WAIT_MS, "the upload to flow");
    const ended = ending(accepted[0]!);
    const down = onceWithin(client.events, "tunnel-disconnected");
    await server.stop();
    await down;
    assert.equal(await ended, resetOnAbort ? "reset" : "fin");
  });
}
