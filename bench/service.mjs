/**
 * The local service behind the tunnel (and, for the direct figures, reached directly). It runs in
 * a process of its own (child-service.mjs). The first byte of each connection picks what it
 * does, so one port serves every scenario:
 *   E  echo every byte back; end when the peer ends
 *   S  sink: check every byte against the pattern until the peer ends, then answer one JSON line
 *   G  generate: read a u64 length, send that many pattern bytes, then end
 *   W  slow reader: read (and check) at most `SLOW_BYTES_PER_SECOND`, counting what it read
 */
import net from "node:net";
import { PatternChecker, writePattern } from "./pattern.mjs";

const SLOW_BYTES_PER_SECOND = 1024 * 1024;

/** The latest slow-reader connection (a new one replaces and closes the previous one). */
let slow = { socket: null, bytesRead: 0, firstMismatch: -1 };
let connections = 0;
let open = 0;
let errors = 0;
const sockets = new Set();

const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
  connections++;
  open++;
  sockets.add(socket);
  socket.on("error", () => errors++);
  socket.on("close", () => {
    open--;
    sockets.delete(socket);
  });
  socket.once("data", (first) => {
    const mode = String.fromCharCode(first[0]);
    const rest = first.subarray(1);
    switch (mode) {
      case "E":
        return echo(socket, rest);
      case "S":
        return sink(socket, rest);
      case "G":
        return generate(socket, rest);
      case "W":
        return slowRead(socket, rest);
      default:
        socket.destroy();
    }
  });
});

function echo(socket, rest) {
  if (rest.length > 0) socket.write(rest);
  socket.pipe(socket);
}

function sink(socket, rest) {
  const checker = new PatternChecker(0);
  socket.on("data", (chunk) => checker.push(chunk));
  socket.on("end", () => {
    socket.end(
      `${JSON.stringify({ bytes: checker.received, firstMismatch: checker.firstMismatch })}\n`,
    );
  });
  if (rest.length > 0) checker.push(rest);
}

function generate(socket, rest) {
  let header = rest;
  const start = () => {
    const total = Number(header.readBigUInt64BE(0));
    writePattern(socket, total, { chunkBytes: 64 * 1024 }).then(
      () => socket.end(),
      () => socket.destroy(),
    );
  };
  if (header.length >= 8) return start();
  const more = (chunk) => {
    header = Buffer.concat([header, chunk]);
    if (header.length < 8) return;
    socket.off("data", more);
    start();
  };
  socket.on("data", more);
}

function slowRead(socket, rest) {
  slow.socket?.destroy();
  const current = { socket, bytesRead: 0, firstMismatch: -1 };
  slow = current;
  const checker = new PatternChecker(0);
  const startedAt = performance.now();
  let timer = null;
  const take = (chunk) => {
    checker.push(chunk);
    current.bytesRead = checker.received;
    current.firstMismatch = checker.firstMismatch;
    // Token bucket: after reading ahead of the budget, stop reading until the clock catches up.
    const aheadMs =
      (checker.received / SLOW_BYTES_PER_SECOND) * 1000 - (performance.now() - startedAt);
    if (aheadMs > 0 && !timer) {
      socket.pause();
      timer = setTimeout(() => {
        timer = null;
        socket.resume();
      }, aheadMs);
    }
  };
  socket.on("data", take);
  socket.on("close", () => clearTimeout(timer));
  if (rest.length > 0) take(rest);
}

/** Listens on an ephemeral 127.0.0.1 port; resolves with the port. */
export function startService() {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: "127.0.0.1", port: 0, backlog: 4096 }, () =>
      resolve(server.address().port),
    );
  });
}

export function serviceStats() {
  return {
    connections,
    open,
    errors,
    slow: { bytesRead: slow.bytesRead, firstMismatch: slow.firstMismatch },
  };
}

export function stopService() {
  for (const socket of sockets) socket.destroy();
  server.close();
}
