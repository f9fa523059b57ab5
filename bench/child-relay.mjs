/**
 * A relay for reference: accepts on an ephemeral port and pipes each connection to the target
 * port, with no framing or multiplexing. Two of these in a chain cost what any two-process Node
 * relay costs on this machine (two extra processes to wake, copy and write per hop): the floor
 * under the tunnel's server + client, shown beside the targets.
 *
 *   node child-relay.mjs PORT            socket.pipe() both ways (Node's defaults)
 *   node child-relay.mjs PORT --reuse    busy sockets read into a buffer they keep, as the
 *                                        library's own sockets do (dist/mux/reusable-reads.js)
 */
import net from "node:net";
import { announceReady, commonHandlers, serveParent } from "./ipc.mjs";

const target = Number(process.argv[2]);
const reuse = process.argv.includes("--reuse");
const reads = reuse ? await import("../dist/mux/reusable-reads.js") : null;
const gate = reuse ? await import("../dist/mux/read-gate.js") : null;
const budget = reads ? new reads.ReadBufferBudget(1_000_000) : null;
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
  if (reuse) {
    relayReusing(visitor, upstream);
    relayReusing(upstream, visitor);
  } else {
    visitor.pipe(upstream);
    upstream.pipe(visitor);
  }
});

/**
 * `from` -> `to` with backpressure; once a read of 32 KiB or more shows it busy, `from` reads
 * into a buffer it keeps. A chunk still queued in `to` keeps its buffer (the next read takes a
 * fresh one), exactly the rule the library follows.
 */
function relayReusing(from, to) {
  let switched = false;
  const write = (chunk) => {
    if (!to.write(chunk)) {
      gate.stopReading(from);
      to.once("drain", () => gate.resumeReading(from));
    }
  };
  const onReused = (chunk) => {
    write(chunk);
    return to.writableLength > 0;
  };
  from.on("data", (chunk) => {
    write(chunk);
    if (!switched && chunk.length >= reads.BUSY_READ_BYTES) {
      switched = reads.readIntoReusableBuffer(from, onReused, budget);
    }
  });
  from.on("end", () => to.end());
}
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
