/**
 * A client that sends a bad frame right behind its handshake, in the same write: the server has
 * already acknowledged by the time it decodes that frame. The events must still tell a coherent
 * story (tunnel-created, then tunnel-error with the code, then tunnel-destroyed), and the
 * tunnel's public port must not outlive it.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ErrorCodes } from "../../src/errors.js";
import { FrameType } from "../../src/protocol/constants.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { closed, onceWithin } from "../helpers/net.js";
import {
  encodeFrame,
  encodeHandshake,
  extensionHandshake,
  portRefuses,
  rawConnect,
} from "../helpers/raw-peer.js";

const cases = [
  ["a second handshake", encodeHandshake({ again: true }), ErrorCodes.UNEXPECTED_FRAME],
  [
    "an OPEN from the client",
    encodeFrame(1, FrameType.OPEN, Buffer.from("{}")),
    ErrorCodes.UNEXPECTED_FRAME,
  ],
  ["an unknown frame type", encodeFrame(1, 0xff, Buffer.alloc(0)), ErrorCodes.UNKNOWN_FRAME_TYPE],
] as const;

for (const [label, frame, code] of cases) {
  test(`handshake + ${label} in one write: created, error ${code}, destroyed, port closed`, async (t) => {
    const server = new TunnelServer();
    t.after(() => server.stop());
    const controlPort = await server.start(0, "127.0.0.1");
    const order: string[] = [];
    let publicPort = 0;
    server.events.on("tunnel-created", ({ clientTunnel }) => {
      order.push("tunnel-created");
      publicPort = clientTunnel.tunnelAddress!.port;
    });
    server.events.on("tunnel-error", ({ err }) => order.push(`tunnel-error ${err.code}`));
    const destroyed = onceWithin(server.events, "tunnel-destroyed");
    server.events.on("tunnel-destroyed", () => order.push("tunnel-destroyed"));

    const socket = await rawConnect(t, controlPort);
    socket.resume(); // read the ack and the end, so the socket can close
    socket.write(Buffer.concat([extensionHandshake({ id: "eager" }), frame]));
    await destroyed;
    assert.deepEqual(order, ["tunnel-created", `tunnel-error ${code}`, "tunnel-destroyed"]);
    await closed(socket);
    assert.ok(publicPort > 0);
    assert.equal(await portRefuses(publicPort), true, "the public port closed with the tunnel");
    assert.equal(server.tunnels.size, 0);
  });
}
