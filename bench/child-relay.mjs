/**
 * A plain relay for reference: accepts on an ephemeral port and pipes each connection to the
 * target port, with no framing or multiplexing. Two of these in a chain cost what any
 * two-process Node relay costs on this machine (two extra processes to wake, copy and write per
 * hop): the floor under the tunnel's server + client, shown beside the targets.
 */
import net from "node:net";
import { announceReady, commonHandlers, serveParent } from "./ipc.mjs";

const target = Number(process.argv[2]);
const sockets = new Set();
const track = (socket) => {
  sockets.add(socket);
  socket.on("close", () => sockets.delete(socket));
  socket.on("error", () => socket.destroy());
};

const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (visitor) => {
  const upstream = net.connect({
    host: "127.0.0.1",
    port: target,
    allowHalfOpen: true,
    noDelay: true,
  });
  track(visitor);
  track(upstream);
  visitor.on("close", () => upstream.destroy());
  upstream.on("close", () => visitor.destroy());
  visitor.pipe(upstream);
  upstream.pipe(visitor);
});
server.listen(0, "127.0.0.1", () => announceReady({ port: server.address().port }));

serveParent({
  ...commonHandlers,
  stop: () => {
    for (const socket of sockets) socket.destroy();
    server.close();
    setImmediate(() => process.exit(0));
    return true;
  },
});
