/**
 * The endpoint process: the load generator (the visitors), which drives one scenario phase against
 * a port (the tunnel's public port, or the service process itself for the direct figures) and
 * returns raw figures. It streams everything and checks every byte it gets back against the
 * pattern; a wrong byte fails the phase with code BENCH_VERIFY.
 */
import { once } from "node:events";
import net from "node:net";
import { announceReady, commonHandlers, serveParent } from "./ipc.mjs";
import { PatternChecker, patternAt, writePattern, writeRestlessly } from "./pattern.mjs";

const HOST = "127.0.0.1";
const now = () => performance.now();

function verifyError(message) {
  const err = new Error(message);
  err.code = "BENCH_VERIFY";
  return err;
}

function connect(port) {
  const socket = net.connect({ host: HOST, port, allowHalfOpen: true, noDelay: true });
  return socket;
}

async function connected(socket) {
  if (!socket.connecting) return;
  await once(socket, "connect");
}

/** Reads until the peer ends, feeding `onChunk`; resolves when 'end' arrives. */
function readToEnd(socket, onChunk) {
  return new Promise((resolve, reject) => {
    socket.on("data", onChunk);
    socket.once("end", resolve);
    socket.once("error", reject);
    socket.once("close", () => reject(new Error("closed before the end of the data")));
  });
}

/** Upload: `bytes` pattern bytes to the sink, which answers with what it counted and checked. */
async function bulkUp({ port, bytes }) {
  const t0 = now();
  const socket = connect(port);
  await connected(socket);
  socket.write("S");
  let reply = "";
  const answered = readToEnd(socket, (chunk) => {
    reply += chunk.toString("utf8");
  });
  await writePattern(socket, bytes);
  socket.end();
  await answered;
  const seconds = (now() - t0) / 1000;
  socket.destroy();
  const result = JSON.parse(reply);
  if (result.bytes !== bytes || result.firstMismatch !== -1) {
    throw verifyError(
      `upload: the service got ${result.bytes} of ${bytes} bytes, first wrong byte at ${result.firstMismatch}`,
    );
  }
  return { bytes, seconds, mibPerSecond: bytes / 1048576 / seconds };
}

/** A service request that carries a length: its mode letter, then the length as a u64. */
function lengthRequest(mode, length) {
  const request = Buffer.alloc(9);
  request.write(mode, "latin1");
  request.writeBigUInt64BE(BigInt(length), 1);
  return request;
}

/** Download: the service generates `bytes` pattern bytes; every one is checked here. */
async function bulkDown({ port, bytes }) {
  const t0 = now();
  const socket = connect(port);
  await connected(socket);
  socket.write(lengthRequest("G", bytes));
  const checker = new PatternChecker(0);
  await readToEnd(socket, (chunk) => checker.push(chunk));
  const seconds = (now() - t0) / 1000;
  socket.destroy();
  if (checker.received !== bytes || !checker.ok) {
    throw verifyError(
      `download: got ${checker.received} of ${bytes} bytes, first wrong byte at ${checker.firstMismatch}`,
    );
  }
  return { bytes, seconds, mibPerSecond: bytes / 1048576 / seconds };
}

/**
 * Sends `size` bytes on an echo connection and resolves when as many came back, checked.
 * `state` carries the stream offset and the checker across calls on one connection.
 */
function echoOnce(socket, state, size) {
  return new Promise((resolve, reject) => {
    const target = state.checker.received + size;
    const onData = (chunk) => {
      state.checker.push(chunk);
      if (state.checker.received >= target) {
        cleanup();
        if (!state.checker.ok || state.checker.received !== target) {
          reject(verifyError(`echo: wrong bytes (first at ${state.checker.firstMismatch})`));
        } else resolve();
      }
    };
    const onClose = () => {
      cleanup();
      reject(new Error("echo connection closed early"));
    };
    const cleanup = () => {
      socket.off("data", onData);
      socket.off("close", onClose);
    };
    socket.on("data", onData);
    socket.on("close", onClose);
    socket.write(patternAt(state.sent, size));
    state.sent += size;
  });
}

async function openEcho(port, start = 0) {
  const socket = connect(port);
  socket.on("error", () => {});
  await connected(socket);
  socket.write("E");
  return { socket, state: { sent: start, checker: new PatternChecker(start) } };
}

function percentiles(samples) {
  const sorted = Float64Array.from(samples).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1] };
}

/** `count` sequential round trips of `size` bytes on one connection. */
async function rtt({ port, count, size }) {
  const { socket, state } = await openEcho(port);
  await echoOnce(socket, state, size); // warm-up: the tunnel stream is open end to end
  const latencies = new Float64Array(count);
  const t0 = now();
  for (let i = 0; i < count; i++) {
    const started = now();
    await echoOnce(socket, state, size);
    latencies[i] = now() - started;
  }
  const seconds = (now() - t0) / 1000;
  socket.destroy();
  return { count, seconds, perSecond: count / seconds, ...percentiles(latencies) };
}

/** `count` sequential connections: connect, echo `size` bytes, close (both FINs), next. */
async function connectScenario({ port, count, size }) {
  const latencies = new Float64Array(count);
  const t0 = now();
  for (let i = 0; i < count; i++) {
    const started = now();
    const socket = connect(port);
    socket.on("error", () => {});
    await connected(socket);
    const state = { sent: i * size, checker: new PatternChecker(i * size) };
    socket.write("E");
    await echoOnce(socket, state, size);
    latencies[i] = now() - started;
    const closed = once(socket, "close");
    socket.end();
    await closed;
  }
  const seconds = (now() - t0) / 1000;
  return { count, seconds, perSecond: count / seconds, ...percentiles(latencies) };
}

/** `streams` connections at once, each echoing `bytes`. */
async function concurrency({ port, streams, bytes }) {
  const t0 = now();
  const durations = new Float64Array(streams);
  const one = async (i) => {
    const started = now();
    const start = (i * 7919) % 1_000_003;
    const { socket, state } = await openEcho(port, start);
    await echoOnce(socket, state, bytes);
    durations[i] = now() - started;
    socket.destroy();
  };
  const results = await Promise.allSettled(Array.from({ length: streams }, (_, i) => one(i)));
  const seconds = (now() - t0) / 1000;
  const failed = results.filter((r) => r.status === "rejected");
  if (failed.length > 0) {
    const verify = failed.find((r) => r.reason?.code === "BENCH_VERIFY");
    throw verify
      ? verify.reason
      : new Error(`${failed.length} streams failed: ${failed[0].reason?.message}`);
  }
  const totalMiB = (streams * bytes) / 1048576;
  return {
    streams,
    bytes,
    seconds,
    mibPerSecond: totalMiB / seconds,
    slowestSeconds: Math.max(...durations) / 1000,
    ...Object.fromEntries(
      Object.entries(percentiles(durations)).map(([k, v]) => [`stream${k}Seconds`, v / 1000]),
    ),
  };
}

/** Slow reader: push for `seconds` into a 1 MiB/s reader while pinging on a second connection. */
let slowPusher = null;
/**
 * Pings on an echo connection until `deadline`: one every `everyMs`, never two in flight (a late
 * answer delays the next ping). A ping unanswered a second past the deadline ends the series.
 */
async function pingUntil(pinger, state, size, deadline, everyMs) {
  const latencies = [];
  let sent = 0;
  let late = 0;
  while (now() < deadline) {
    const started = now();
    sent++;
    const answer = echoOnce(pinger, state, size).then(() => now() - started);
    const timeout = new Promise((resolve) =>
      setTimeout(resolve, Math.max(0, deadline - started) + 1000, null),
    );
    const ms = await Promise.race([answer, timeout]);
    if (ms === null) {
      late++;
      break;
    }
    latencies.push(ms);
    const wait = started + everyMs - now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  }
  return { sent, late, latencies };
}

/**
 * Slow reader: first `idleSeconds` of pings alone (what waking the processes on the path costs
 * at this pace), then `seconds` of pushing into the service's slow reader with the same pings.
 */
async function slowReader({ port, seconds, idleSeconds, pingEveryMs, size }) {
  const pusher = connect(port);
  pusher.on("error", () => {});
  await connected(pusher);
  pusher.write("W");
  slowPusher = pusher;
  const { socket: pinger, state } = await openEcho(port, 5_000_000);
  await echoOnce(pinger, state, size);
  const idle = await pingUntil(pinger, state, size, now() + idleSeconds * 1000, pingEveryMs);
  const deadline = now() + seconds * 1000;
  const pushing = writePattern(pusher, Number.MAX_SAFE_INTEGER, {
    chunkBytes: 64 * 1024,
    shouldStop: () => now() >= deadline,
  });
  const { sent, late, latencies } = await pingUntil(pinger, state, size, deadline, pingEveryMs);
  // Stop pushing: what the pusher wrote is what left its process (its own queue excluded).
  // bytesWritten counts queued bytes too; those still queued here never left this process.
  const wrote = pusher.bytesWritten - pusher.writableLength;
  pushing.catch(() => {});
  pinger.destroy();
  return {
    seconds,
    pusherWrote: wrote,
    pingsSent: sent,
    pingsAnswered: latencies.length,
    pingsLate: late,
    ...(latencies.length ? percentiles(latencies) : { p50: null, p99: null, max: null }),
    idle: idle.latencies.length ? percentiles(idle.latencies) : { p50: null, p99: null, max: null },
  };
}

/** Footprint: opens `count` echo connections (each echoes 8 bytes once) and keeps them open. */
const idle = [];
async function footprintOpen({ port, count, size }) {
  const opened = [];
  for (let i = 0; i < count; i += 100) {
    const batch = Array.from({ length: Math.min(100, count - i) }, async () => {
      const connection = await openEcho(port);
      await echoOnce(connection.socket, connection.state, size);
      idle.push(connection.socket);
      opened.push(connection);
    });
    await Promise.all(batch);
  }
  return { open: opened.length };
}

function closeAll() {
  for (const socket of idle.splice(0)) socket.destroy();
  if (slowPusher) slowPusher.destroy();
  slowPusher = null;
  return true;
}

/** A deterministic PRNG (xorshift32): the soak's sizes and choices replay from its seed. */
function seeded(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 4294967296;
  };
}

/**
 * One soak stream, one of four kinds. echo: a random amount written in random pieces comes back
 * ("R"). download: the service sends it ("T"). upload: the service checks it and answers with
 * what it got ("S"; needs half-close). cut: the service echoes part of it, then fails ("X"): the
 * visitor must see the stream end, with only right bytes before. The visitor stalls its reads now
 * and then and, for 10 % of the streams, vanishes mid-stream. Resolves with what happened.
 */
function soakStream(port, random, { halfClose, maxBytes, chaos }) {
  const roll = random();
  const kind =
    roll < 0.35 ? "echo" : roll < 0.65 ? "download" : roll < 0.9 && halfClose ? "upload" : "cut";
  const size = Math.floor(2 ** (random() * Math.log2(maxBytes)));
  const cutAt = random() < 0.1 ? Math.floor(random() * size) : -1;
  const serviceCutsAt = Math.floor(random() * size);
  // What comes back: the pattern (echo, download, cut) or one JSON line (upload).
  const expected = kind === "upload" ? -1 : kind === "cut" ? serviceCutsAt : size;
  return new Promise((resolve) => {
    const socket = net.connect({ host: HOST, port, allowHalfOpen: true, noDelay: true });
    const checker = new PatternChecker(0);
    let answer = "";
    let settled = false;
    const settle = (outcome) => {
      if (settled) return;
      settled = true;
      resolve({ bytes: checker.received, ...outcome });
    };
    // Under chaos (the tunnel is dropped now and then) a stream may end early; only bytes that
    // are wrong (or too many) still fail it.
    const fail = (why, corrupt = false) => {
      socket.destroy();
      if (chaos && !corrupt) return settle({ disrupted: true });
      settle({ failure: `${kind} of ${size} B: ${why}` });
    };
    // A service that fails mid-stream may reach the visitor as a reset: that is the outcome.
    const ended = () => {
      if (kind === "cut") return settle({});
      if (kind === "upload") {
        let got;
        try {
          got = JSON.parse(answer);
        } catch {
          return fail(`answer ${JSON.stringify(answer.slice(0, 80))}`);
        }
        if (got.bytes !== size || got.firstMismatch !== -1) {
          const why = `service got ${got.bytes} bytes, first wrong at ${got.firstMismatch}`;
          return fail(why, got.firstMismatch !== -1 || got.bytes > size);
        }
        return settle({});
      }
      if (checker.received !== size) return fail(`ended after ${checker.received} bytes`);
      settle({});
    };
    socket.on("error", (err) => {
      if (kind === "cut" || cutAt >= 0) return;
      fail(`error ${err.code}`);
    });
    socket.on("data", (chunk) => {
      if (kind === "upload") {
        answer += chunk.toString("utf8");
        return;
      }
      checker.push(chunk);
      if (!checker.ok) return fail(`wrong byte at offset ${checker.firstMismatch}`, true);
      if (checker.received > expected) {
        return fail(`${checker.received} bytes, more than sent`, true);
      }
      if (cutAt >= 0 && checker.received >= cutAt) {
        socket.destroy();
        return settle({ cutOff: true });
      }
      // Without half-close (v1) the visitor ends only once its echo is complete.
      if (!halfClose && kind === "echo" && checker.received === size) socket.end();
      if (random() < 0.01) {
        socket.pause();
        setTimeout(() => socket.resume(), 1 + Math.floor(random() * 30));
      }
    });
    socket.on("end", () => {
      socket.end();
      ended();
    });
    socket.on("close", () => {
      if (cutAt >= 0) settle({ cutOff: true });
      else if (kind === "cut") settle({});
      else if (!settled) fail(`closed after ${checker.received} bytes`);
    });
    if (kind === "download") {
      socket.write(lengthRequest("T", size));
      // Half the downloads end their side at once: the FIN may reach the client while it is
      // still dialling the service, and must wait for the request bytes and the answer.
      if (halfClose && random() < 0.5) socket.end();
      return;
    }
    if (kind === "cut") {
      socket.write(lengthRequest("X", serviceCutsAt));
    } else {
      socket.write(kind === "echo" ? "R" : "S");
    }
    writeRestlessly(socket, size, {
      maxPiece: 300_000,
      random,
      onDone: () => {
        if (halfClose) socket.end();
      },
    });
  });
}

/**
 * Soak: `lanes` streams at once, `rounds` after one another in each lane. Every byte is checked
 * by position; every stream not cut off must end complete. Returns counts and the first failures.
 */
async function soak({
  port,
  ports = [port],
  lanes,
  rounds,
  maxBytes,
  halfClose,
  seed,
  chaos = false,
}) {
  const t0 = now();
  const outcomes = [];
  await Promise.all(
    Array.from({ length: lanes }, async (_, lane) => {
      const random = seeded(seed * 977 + lane + 1);
      for (let round = 0; round < rounds; round++) {
        const target = ports[lane % ports.length];
        const outcome = await soakStream(target, random, { halfClose, maxBytes, chaos });
        outcomes.push(outcome);
        // A tunnel that is down refuses at once: give it time to come back, not the next round.
        if (outcome.disrupted) await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }),
  );
  const failures = outcomes.filter((o) => o.failure).map((o) => o.failure);
  return {
    seconds: (now() - t0) / 1000,
    streams: outcomes.length,
    cutOff: outcomes.filter((o) => o.cutOff).length,
    disrupted: outcomes.filter((o) => o.disrupted).length,
    bytes: outcomes.reduce((sum, o) => sum + o.bytes, 0),
    failed: failures.length,
    failures: failures.slice(0, 20),
  };
}

announceReady({});
serveParent({
  ...commonHandlers,
  bulkUp,
  bulkDown,
  rtt,
  connect: connectScenario,
  concurrency,
  slowReader,
  footprintOpen,
  closeAll,
  soak,
  stop: () => {
    closeAll();
    setImmediate(() => process.exit(0));
    return true;
  },
});
