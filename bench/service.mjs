/**
 * The local service behind the tunnel (and, for the direct figures, reached directly). It runs in
 * a process of its own (child-service.mjs). The first byte of each connection picks what it
 * does, so one port serves every scenario:
 *   E  echo every byte back; end when the peer ends
 *   S  sink: check every byte against the pattern until the peer ends, then answer one JSON line
 *   G  generate: read a u64 length, send that many pattern bytes, then end
 *   W  slow reader: read (and check) at most `SLOW_BYTES_PER_SECOND`, counting what it read
 *   R  restless echo (soak): echo in random pieces, stalling now and then; end when the peer ends
 *   T  restless generate (soak): read a u64 length, send that many pattern bytes in random
 *      pieces with random stalls, then end
 *   X  cut-off echo (soak): read a u64 length, echo restlessly, and once that many bytes went
 *      back, destroy the connection (a service that fails mid-stream)
 */
import net from "node:net";
import { PatternChecker, writePattern, writeRestlessly } from "./pattern.mjs";

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
      case "R":
        return restlessEcho(socket, rest);
      case "T":
        return withLength(socket, rest, (total) => restlessWrite(socket, total));
      case "X":
        return withLength(socket, rest, (limit, after) => restlessEcho(socket, after, limit));
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
  withLength(socket, rest, (total) =>
    writePattern(socket, total, { chunkBytes: 64 * 1024 }).then(
      () => socket.end(),
      () => socket.destroy(),
    ),
  );
}

/**
 * Calls `start(length, after)` once the u64 length that opens the connection has arrived;
 * `after` holds the bytes that came with it.
 */
function withLength(socket, rest, start) {
  let header = rest;
  const begin = () => start(Number(header.readBigUInt64BE(0)), header.subarray(8));
  if (header.length >= 8) return begin();
  const more = (chunk) => {
    header = Buffer.concat([header, chunk]);
    if (header.length < 8) return;
    socket.off("data", more);
    begin();
  };
  socket.on("data", more);
}

/** A random whole number in [1, max]. */
const upTo = (max) => 1 + Math.floor(Math.random() * max);

/**
 * Echo that reads in bursts and stalls 2 % of the time, writing back in random pieces; after
 * `limit` bytes it destroys the connection instead.
 */
function restlessEcho(socket, rest, limit = Number.POSITIVE_INFINITY) {
  socket.pause();
  if (rest.length > 0) socket.unshift(rest);
  let echoed = 0;
  const pump = () => {
    for (let chunk = socket.read(); chunk !== null; chunk = socket.read()) {
      for (let at = 0; at < chunk.length; ) {
        const n = Math.min(chunk.length - at, upTo(100_000), limit - echoed);
        socket.write(chunk.subarray(at, at + n));
        at += n;
        echoed += n;
        if (echoed >= limit) return void socket.destroy();
      }
      if (Math.random() < 0.02) return void setTimeout(pump, upTo(30));
      if (socket.writableNeedDrain) return void socket.once("drain", pump);
    }
    socket.once("readable", pump);
  };
  socket.on("end", () => socket.end());
  pump();
}

/** Sends `total` pattern bytes in random pieces, stalling 1 % of the time, then ends. */
function restlessWrite(socket, total) {
  socket.resume();
  writeRestlessly(socket, total, { maxPiece: 200_000, onDone: () => socket.end() });
}

function slowRead(socket, rest) {
  slow.socket?.destroy();
  const current = { socket, bytesRead: 0, firstMismatch: -1 };
  slow = current;
  const checker = new PatternChecker(0);
  // The budget starts with the first byte, not the connection: the pusher may wait a while.
  let startedAt = null;
  let timer = null;
  const take = (chunk) => {
    startedAt ??= performance.now();
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
