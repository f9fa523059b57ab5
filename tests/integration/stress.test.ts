/**
 * Randomized traffic through one tunnel: many streams at once, each echoing or downloading a
 * random amount in random-sized writes, with readers and writers that stall at random and some
 * visitors that vanish mid-stream. Every byte that arrives is checked against its position,
 * every stream that is not cut off must end complete, and no stream is left open afterwards.
 * The seed is printed; `W3P_STRESS_SEED=N` replays a run.
 */
import assert from "node:assert/strict";
import net, { type Socket } from "node:net";
import { type TestContext, test } from "node:test";
import type { TunnelServerOptions } from "../../src/options.js";
import { startService, startTunnel, until, withTimeout } from "../helpers/net.js";
import { prng } from "../helpers/raw-peer.js";

/** Byte `index` of the pattern `seed`: any byte out of place or lost shows at its offset. */
function patternAt(seed: number, index: number): number {
  let x = (index ^ seed) >>> 0;
  x = Math.imul(x ^ (x >>> 15), 0x2c1b3c6d);
  x = Math.imul(x ^ (x >>> 12), 0x297a2d39);
  return (x ^ (x >>> 15)) & 0xff;
}

function pattern(seed: number, offset: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) out[i] = patternAt(seed, offset + i);
  return out;
}

/** Offset of the first byte of `chunk` that differs from the pattern, or -1. */
function firstMismatch(chunk: Buffer, seed: number, offset: number): number {
  for (let i = 0; i < chunk.length; i++) {
    if (chunk[i] !== patternAt(seed, offset + i)) return offset + i;
  }
  return -1;
}

/** Writes `size` pattern bytes in random pieces, stalling now and then; respects 'drain'. */
function writePattern(
  socket: Socket,
  random: () => number,
  seed: number,
  size: number,
  done: () => void,
): void {
  let sent = 0;
  const next = () => {
    while (sent < size && !socket.destroyed) {
      const n = Math.min(size - sent, 1 + Math.floor(random() * 200_000));
      const fits = socket.write(pattern(seed, sent, n));
      sent += n;
      if (!fits) return void socket.once("drain", next);
      if (random() < 0.02) return void setTimeout(next, Math.floor(random() * 20));
    }
    if (!socket.destroyed) done();
  };
  next();
}

/**
 * The local service. First byte "E": echo everything, reading in bursts with random stalls,
 * writing back in random pieces, ending after the visitor ends. "S" + u32 size + u32 seed: send
 * that many pattern bytes, then end.
 */
function stressService(t: TestContext, seed: number) {
  let connections = 0;
  return startService(t, (socket) => {
    const random = prng(seed + ++connections);
    const echo = () => {
      const pump = (): void => {
        for (let chunk = socket.read(); chunk !== null; chunk = socket.read()) {
          for (let at = 0; at < chunk.length; ) {
            const n = Math.min(chunk.length - at, 1 + Math.floor(random() * 100_000));
            socket.write(chunk.subarray(at, at + n));
            at += n;
          }
          if (random() < 0.02) return void setTimeout(pump, Math.floor(random() * 20));
          if (socket.writableNeedDrain) return void socket.once("drain", pump);
        }
        socket.once("readable", pump);
      };
      socket.on("end", () => socket.end());
      pump();
    };
    const start = (): void => {
      const mode = socket.read(1) as Buffer | null;
      if (!mode) return void socket.once("readable", start);
      if (mode[0] === 0x45) {
        echo();
        return;
      }
      const spec = (): void => {
        const header = socket.read(8) as Buffer | null;
        if (!header) return void socket.once("readable", spec);
        socket.resume();
        const [size, streamSeed] = [header.readUInt32BE(0), header.readUInt32BE(4)];
        writePattern(socket, random, streamSeed, size, () => socket.end());
      };
      spec();
    };
    start();
  });
}

interface Outcome {
  failure?: string;
  cutOff?: boolean;
  bytes: number;
}

/**
 * One visitor stream. With `halfClose` an echo ends its side after sending and expects the whole
 * echo before the tunnel's FIN (v1 has no half-close: there it waits for the echo, then ends).
 */
function visit(port: number, random: () => number, halfClose: boolean): Promise<Outcome> {
  const echo = random() < 0.5;
  const size = Math.floor(2 ** (random() * 22)); // up to 4 MiB, most much smaller
  const seed = Math.floor(random() * 2 ** 31);
  const cutAt = random() < 0.1 ? Math.floor(random() * size) : -1;
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    let received = 0;
    let settled = false;
    const settle = (outcome: Outcome) => {
      if (settled) return;
      settled = true;
      resolve(outcome);
    };
    const fail = (why: string) => {
      socket.destroy();
      settle({ failure: `${echo ? "echo" : "download"} of ${size} B: ${why}`, bytes: received });
    };
    socket.on("error", (err: NodeJS.ErrnoException) => fail(`error ${err.code}`));
    socket.on("data", (chunk: Buffer) => {
      const bad = firstMismatch(chunk, seed, received);
      if (bad >= 0) return fail(`wrong byte at offset ${bad}`);
      received += chunk.length;
      if (received > size) return fail(`${received} bytes, more than sent`);
      if (cutAt >= 0 && received >= cutAt) {
        socket.destroy();
        return settle({ cutOff: true, bytes: received });
      }
      if (!halfClose && echo && received === size) socket.end();
      if (random() < 0.01) {
        socket.pause();
        setTimeout(() => socket.resume(), Math.floor(random() * 30));
      }
    });
    socket.on("end", () => {
      if (received !== size) return fail(`ended after ${received} bytes`);
      socket.end();
      settle({ bytes: received });
    });
    socket.on("close", () => {
      if (cutAt >= 0) settle({ cutOff: true, bytes: received });
      else if (!settled) fail(`closed after ${received} bytes`);
    });
    if (!echo) {
      const spec = Buffer.alloc(9);
      spec.write("S");
      spec.writeUInt32BE(size, 1);
      spec.writeUInt32BE(seed, 5);
      socket.write(spec);
      return;
    }
    socket.write("E");
    writePattern(socket, random, seed, size, () => {
      if (halfClose) socket.end();
    });
  });
}

const SEED = Number(process.env.W3P_STRESS_SEED) || Math.floor(Math.random() * 2 ** 31);
const STREAMS_AT_ONCE = 24;
const ROUNDS = 6;

for (const [label, options, halfClose] of [
  ["all extensions, default windows", {}, true],
  [
    "all extensions, smallest windows and a small control buffer (credit runs out constantly)",
    {
      streamWindowBytes: 64 * 1024,
      maxStreamWindowBytes: 64 * 1024,
      controlWriteBufferBytes: 64 * 1024,
    },
    true,
  ],
  ["v1 (no extensions)", { extensions: false }, false],
] as const) {
  test(`stress, seed ${SEED}: ${label}`, async (t) => {
    const service = await stressService(t, SEED);
    const { server, client, publicPort } = await startTunnel(
      t,
      service.port,
      options as TunnelServerOptions,
      options,
    );
    const outcomes: Outcome[] = [];
    await withTimeout(
      Promise.all(
        Array.from({ length: STREAMS_AT_ONCE }, async (_, lane) => {
          const random = prng(SEED * 31 + lane);
          for (let round = 0; round < ROUNDS; round++) {
            outcomes.push(await visit(publicPort, random, halfClose));
          }
        }),
      ),
      120_000,
      "every stream to finish",
    );
    const failures = outcomes.flatMap((o) => (o.failure ? [o.failure] : []));
    assert.deepEqual(failures, [], `seed ${SEED}: streams that lost, changed or cut off bytes`);
    assert.ok(
      outcomes.some((o) => o.bytes > 1 << 20),
      "some streams moved more than 1 MiB",
    );
    // Every stream is gone on both sides once its sockets have closed.
    await until(
      () =>
        server.stats().tunnels.every((tunnel) => tunnel.streamsActive === 0) &&
        client.stats().services.every((s) => s.streamsActive === 0),
      5_000,
      "no stream left open",
    );
  });
}
