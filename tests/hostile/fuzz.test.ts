/**
 * Seeded randomized tests: random and mutated frame streams into the pure FrameDecoder, then into
 * live sessions over real sockets. Only coded TunnelErrors may ever come out; the server keeps
 * serving a healthy tunnel throughout. Reproduce a failure with W3P_FUZZ_SEED=<seed printed>.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { test } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import { TunnelError } from "../../src/errors.js";
import type { ServerEvents } from "../../src/events.js";
import {
  ALL_EXTENSIONS,
  type ExtensionName,
  FRAME_TABLE,
  FrameType,
} from "../../src/protocol/constants.js";
import { FrameDecoder, type FrameSink } from "../../src/protocol/decoder.js";
import { connect, echoService, readBytes, startTunnel, until } from "../helpers/net.js";
import {
  closedWithin,
  encodeFrame,
  encodeHandshake,
  evilServer,
  extensionHandshake,
  KNOWN_CODES,
  prng,
  rawConnect,
  u32,
  within,
} from "../helpers/raw-peer.js";

const SEED = Number(process.env.W3P_FUZZ_SEED ?? 0x5eed1);
const MAX_FRAME = 16 * 1024;
const MAX_HANDSHAKE = 2 * 1024;

type Random = () => number;

const int = (random: Random, below: number) => Math.floor(random() * below);
const pick = <T>(random: Random, items: readonly T[]): T => items[int(random, items.length)]!;

function randomBytes(random: Random, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) out[i] = int(random, 256);
  return out;
}

/** Frame types a session with these extensions accepts (v1 types always). */
function typesFor(extensions: readonly string[]): number[] {
  return FRAME_TABLE.filter((e) => e.extension === null || extensions.includes(e.extension)).map(
    (e) => e.type,
  );
}

/**
 * A plausible frame: mostly a type the session negotiated (else any byte), a small or odd stream
 * id, a payload of fitting size.
 */
function randomFrame(
  random: Random,
  allowed: readonly number[] = typesFor(ALL_EXTENSIONS),
  wellFormed = false,
): Buffer {
  const roll = wellFormed ? 0 : random();
  const type =
    roll < 0.96
      ? pick(random, allowed)
      : roll < 0.98
        ? pick(random, Object.values(FrameType))
        : int(random, 256);
  const streamId = pick(random, [0, 1, 2, 3, 4, int(random, 0x100000000)]);
  const sized: Record<number, number> = {
    [FrameType.WINDOW]: 4,
    [FrameType.PING]: 8,
    [FrameType.PONG]: 8,
    [FrameType.FIN]: 0,
  };
  const length = sized[type] ?? (random() < 0.7 ? int(random, 64) : int(random, 4096));
  const payload =
    type === FrameType.OPEN && random() < 0.5
      ? Buffer.from(JSON.stringify({ family: "IPv4", address: "1.2.3.4", port: 1, publicPort: 2 }))
      : type === FrameType.GOAWAY && random() < 0.5
        ? Buffer.from('{"code":"W3P_ERR_GOING_AWAY","message":"bye"}')
        : randomBytes(random, length);
  return encodeFrame(streamId, type, payload);
}

/** Flips, inserts, deletes, overwrites a length prefix, or truncates: one mutation. */
function mutate(random: Random, input: Buffer): Buffer {
  if (input.length === 0) return randomBytes(random, 1 + int(random, 16));
  const at = int(random, input.length);
  switch (int(random, 6)) {
    case 0: {
      const out = Buffer.from(input);
      out[at] = out[at]! ^ (1 << int(random, 8));
      return out;
    }
    case 1:
      return Buffer.concat([
        input.subarray(0, at),
        randomBytes(random, 1 + int(random, 8)),
        input.subarray(at),
      ]);
    case 2:
      return Buffer.concat([input.subarray(0, at), input.subarray(at + 1 + int(random, 8))]);
    case 3: {
      const out = Buffer.from(input);
      if (at + 4 <= out.length) out.writeUInt32BE(int(random, 0x100000000), at);
      return out;
    }
    case 4: {
      const out = Buffer.from(input);
      if (at + 4 <= out.length) out.writeUInt32BE(pick(random, [0, 1, 4, 5, 0xffffffff]), at);
      return out;
    }
    default:
      return input.subarray(0, at);
  }
}

/** A whole client-to-server byte stream: handshake, frames, then mutations. */
function randomStream(random: Random, allowed: readonly number[]): Buffer {
  const mode = int(random, 10);
  if (mode === 0) return randomBytes(random, int(random, 2048));
  const credentials = { id: "fuzz", n: int(random, 1000) };
  const parts = [random() < 0.5 ? encodeHandshake(credentials) : extensionHandshake(credentials)];
  const frames = int(random, 24);
  for (let i = 0; i < frames; i++) parts.push(randomFrame(random, allowed));
  let stream: Buffer = Buffer.concat(parts);
  const mutations = mode < 3 ? 0 : int(random, 4);
  for (let i = 0; i < mutations; i++) stream = mutate(random, stream);
  return stream;
}

/** Splits a stream into random chunk sizes (1 byte up to everything). */
function chunks(random: Random, input: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < input.length; ) {
    const size = random() < 0.3 ? 1 + int(random, 3) : 1 + int(random, input.length);
    out.push(input.subarray(at, at + size));
    at += size;
  }
  return out;
}

function assertCoded(err: unknown, where: string): void {
  assert.ok(err instanceof TunnelError, `${where}: not a TunnelError: ${String(err)}`);
  assert.ok(KNOWN_CODES.has(err.code), `${where}: unknown code ${err.code}`);
}

test("FrameDecoder: random and mutated streams only ever throw coded errors", (t) => {
  t.diagnostic(`seed ${SEED}`);
  const random = prng(SEED);
  const codes = new Map<string, number>();
  let frames = 0;
  for (let run = 0; run < 3_000; run++) {
    const extensions = ALL_EXTENSIONS.filter(() => random() < 0.5) as ExtensionName[];
    let decoder: FrameDecoder | null = null;
    const sink: FrameSink = {
      onMagic: () => {},
      onHandshake: (body) => {
        assert.ok(body.length <= MAX_HANDSHAKE);
        decoder!.setExtensions(extensions);
      },
      onFrame: (_streamId, type, payload) => {
        assert.ok(payload.length + 5 <= MAX_FRAME, "a frame over the limit came out");
        assert.ok(type >= 1 && type <= 9, `type ${type} came out`);
        frames++;
      },
    };
    decoder = new FrameDecoder(sink, {
      maxHandshakeBytes: MAX_HANDSHAKE,
      maxFrameBytes: MAX_FRAME,
    });
    const stream = randomStream(random, typesFor(extensions));
    let failed = false;
    for (const chunk of chunks(random, stream)) {
      try {
        decoder.push(chunk);
      } catch (err) {
        assert.equal(failed, false, `run ${run}: a failed decoder threw again`);
        assertCoded(err, `run ${run}`);
        codes.set((err as TunnelError).code, (codes.get((err as TunnelError).code) ?? 0) + 1);
        failed = true;
      }
    }
    assert.equal(decoder.failed, failed);
    // A failed decoder holds nothing: no memory kept for a dead connection.
    if (failed) assert.equal(decoder.bufferedBytes, 0);
    else assert.ok(decoder.bufferedBytes <= MAX_FRAME + 4);
  }
  t.diagnostic(`${frames} frames decoded; errors: ${JSON.stringify(Object.fromEntries(codes))}`);
  // The generator must actually reach the interesting paths.
  for (const code of [
    "W3P_ERR_BAD_MAGIC",
    "W3P_ERR_FRAME_TOO_LARGE",
    "W3P_ERR_MALFORMED_FRAME",
    "W3P_ERR_UNKNOWN_FRAME_TYPE",
  ]) {
    assert.ok((codes.get(code) ?? 0) > 0, `no ${code} generated`);
  }
  assert.ok(frames > 10_000, `only ${frames} frames decoded`);
});

test("FrameDecoder: any chunking of a valid stream gives the same frames, views intact", (t) => {
  t.diagnostic(`seed ${SEED}`);
  const random = prng(SEED ^ 0x0f0f0f0f);
  const allowed = typesFor(ALL_EXTENSIONS);
  for (let run = 0; run < 500; run++) {
    const parts = [extensionHandshake({ run })];
    for (let i = int(random, 40); i > 0; i--) {
      // Only well-formed frames: sized types get their size, OPEN and GOAWAY get any bytes.
      parts.push(randomFrame(random, allowed, true));
    }
    const stream = Buffer.concat(parts);
    const decode = (pieces: Buffer[]) => {
      const frames: Array<{ id: number; type: number; payload: Buffer }> = [];
      let decoder: FrameDecoder | null = null;
      decoder = new FrameDecoder(
        {
          onMagic: () => {},
          onHandshake: () => decoder!.setExtensions(ALL_EXTENSIONS),
          onFrame: (id, type, payload) => frames.push({ id, type, payload }),
        },
        { maxHandshakeBytes: MAX_HANDSHAKE, maxFrameBytes: MAX_FRAME },
      );
      for (const piece of pieces) decoder.push(piece);
      return frames;
    };
    const reference = decode([stream]).map((f) => `${f.id}/${f.type}/${f.payload.toString("hex")}`);
    // Trickle-heavy chunking, each piece its own copy (as sockets deliver them).
    const pieces = chunks(random, stream).map((piece) => Buffer.from(piece));
    const chunked = decode(pieces);
    // Compared only now: a view handed out early must not have been overwritten since.
    assert.deepEqual(
      chunked.map((f) => `${f.id}/${f.type}/${f.payload.toString("hex")}`),
      reference,
      `run ${run}`,
    );
  }
});

test("FrameDecoder: a 4 MiB frame trickled one byte at a time stays compact", () => {
  const decoder = new FrameDecoder(
    { onMagic: () => {}, onHandshake: () => {}, onFrame: () => {} },
    { maxHandshakeBytes: MAX_HANDSHAKE, maxFrameBytes: 4 * 1024 * 1024 },
  );
  decoder.push(encodeHandshake({}));
  // A DATA frame header (type checked as soon as it arrives), then its payload trickles in.
  decoder.push(Buffer.concat([u32(4 * 1024 * 1024 - 1), u32(1), Buffer.from([0x01])]));
  const bytes = 200_000;
  for (let i = 0; i < bytes; i++) decoder.push(Buffer.allocUnsafeSlow(1).fill(i & 0xff));
  assert.equal(decoder.bufferedBytes, bytes);
  // Private on purpose: one queued Buffer per received byte is the bug this guards against.
  const queued = (decoder as unknown as { chunks: Buffer[] }).chunks.length;
  assert.ok(queued <= Math.ceil(bytes / 16_384) + 2, `${queued} buffers queued for ${bytes} bytes`);
});

test("live sessions fed mutated frames: only coded error events, the server carries on", async (t) => {
  t.diagnostic(`seed ${SEED}`);
  const random = prng(SEED ^ 0xa5a5a5a5);
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);
  process.on("uncaughtException", onUncaught);
  process.on("unhandledRejection", onUncaught);
  t.after(() => {
    process.off("uncaughtException", onUncaught);
    process.off("unhandledRejection", onUncaught);
  });

  const service = await echoService(t);
  const { server, controlPort, publicPort } = await startTunnel(t, service.port, {
    maxFrameBytes: MAX_FRAME,
    maxHandshakeBytes: MAX_HANDSHAKE,
    handshakeTimeoutMs: 2_000,
    closeGraceMs: 200,
  });
  const healthy = await connect(t, publicPort);

  const seen = new Map<string, number>();
  const errorEvents = [
    "client-error",
    "tunnel-error",
    "visitor-error",
    "visitor-rejected",
    "connection-rejected",
    "client-authentication-failed",
  ] as const;
  for (const event of errorEvents) {
    server.events.on(event, (payload: { err: unknown }) => {
      assertCoded(payload.err, event);
      const key = `${event}:${(payload.err as TunnelError).code}`;
      seen.set(key, (seen.get(key) ?? 0) + 1);
    });
  }
  let listenerErrors = 0;
  server.events.on("error", (_payload: ServerEvents["error"]) => {
    listenerErrors++;
  });

  async function run(iteration: number): Promise<void> {
    const socket = await rawConnect(t, controlPort);
    socket.on("data", () => {});
    const visitors: Socket[] = [];
    const mutateHandshake = random() < 0.2;
    const extensions = ALL_EXTENSIONS.filter(() => random() < 0.6);
    const v1 = random() < 0.3;
    const handshake = v1 ? encodeHandshake({ id: iteration }) : extensionHandshake({}, extensions);
    const allowed = typesFor(v1 ? [] : extensions);
    if (mutateHandshake) {
      socket.write(mutate(random, Buffer.concat([handshake, randomFrame(random)])));
    } else {
      const acked = new Promise<boolean>((resolve) => {
        let got = 0;
        const onData = (chunk: Buffer) => {
          got += chunk.length;
          if (got >= 11) {
            socket.off("data", onData);
            resolve(true);
          }
        };
        socket.on("data", onData);
        socket.once("close", () => resolve(false));
      });
      socket.write(handshake);
      if (await acked) {
        // Visitors give the session live streams (ids 1, 2, ...) for the frames to hit.
        const tunnel = [...server.tunnels].find((x) => x.remotePort === socket.localPort);
        const port = tunnel?.tunnelAddress?.port;
        for (let i = 0; port && i < int(random, 3); i++) {
          const visitor = await rawConnect(t, port).catch(() => null);
          if (!visitor) break;
          visitor.on("data", () => {});
          visitors.push(visitor);
        }
        const parts: Buffer[] = [];
        const frames = 1 + int(random, 30);
        for (let i = 0; i < frames; i++) parts.push(randomFrame(random, allowed));
        let bytes: Buffer = Buffer.concat(parts);
        if (random() < 0.7) bytes = mutate(random, bytes);
        for (const chunk of chunks(random, bytes)) if (!socket.destroyed) socket.write(chunk);
      }
    }
    if (random() < 0.5) socket.end();
    else socket.destroy();
    await closedWithin(socket, 5_000);
    for (const visitor of visitors) visitor.destroy();
  }

  const iterations = 600;
  for (let batch = 0; batch < iterations; batch += 20) {
    await Promise.all(Array.from({ length: 20 }, (_, i) => run(batch + i)));
  }
  t.diagnostic(`events: ${JSON.stringify(Object.fromEntries(seen))}`);

  assert.deepEqual(uncaught, []);
  assert.equal(listenerErrors, 0);
  await until(
    () => server.tunnels.size === 1 && server.stats().pendingConnections === 0,
    5_000,
    "every fuzzed session gone",
  );
  healthy.write("still-here");
  assert.equal((await readBytes(healthy, 10)).toString(), "still-here");
  assert.ok(seen.size > 0, "the fuzzer provoked errors");
});

test("a client fed mutated frames by an evil server: only coded errors, it keeps reconnecting", async (t) => {
  t.diagnostic(`seed ${SEED}`);
  const random = prng(SEED ^ 0x3c3c3c3c);
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);
  process.on("uncaughtException", onUncaught);
  t.after(() => process.off("uncaughtException", onUncaught));
  const service = await echoService(t);
  const connections = 150;
  let accepted = 0;
  let finished: () => void = () => {};
  const allServed = new Promise<void>((resolve) => {
    finished = resolve;
  });
  const evil = await evilServer(t, (socket) => {
    accepted++;
    if (accepted >= connections) finished();
    socket.on("data", () => {});
    const extensions = ALL_EXTENSIONS.filter(() => random() < 0.6);
    const v1 = random() < 0.3;
    const ack = v1
      ? encodeHandshake({ port: 40000 })
      : encodeHandshake({ port: 40000, w3p: { v: 2, ext: extensions, win: 262144 } });
    const parts: Buffer[] = [ack];
    const allowed = typesFor(v1 ? [] : extensions);
    const frames = 1 + int(random, 30);
    for (let i = 0; i < frames; i++) parts.push(randomFrame(random, allowed));
    let bytes: Buffer = Buffer.concat(parts);
    if (random() < 0.7) bytes = mutate(random, bytes);
    for (const chunk of chunks(random, bytes)) socket.write(chunk);
    socket.end();
  });
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: evil.port,
    localServiceHost: "127.0.0.1",
    localServicePort: service.port,
    reconnectInitialDelayMs: 1,
    reconnectMaxDelayMs: 5,
    maxFrameBytes: MAX_FRAME,
    maxHandshakeBytes: MAX_HANDSHAKE,
    closeGraceMs: 200,
  });
  t.after(() => client.stop());
  const seen = new Map<string, number>();
  for (const event of ["tunnel-error", "service-error", "authentication-rejected"] as const) {
    client.events.on(event, (payload: { err: unknown }) => {
      assertCoded(payload.err, event);
      const key = `${event}:${(payload.err as TunnelError).code}`;
      seen.set(key, (seen.get(key) ?? 0) + 1);
    });
  }
  let listenerErrors = 0;
  client.events.on("error", () => {
    listenerErrors++;
  });
  void client.start();
  await within(allServed, 15_000, `${connections} connections (got ${accepted})`);
  await client.stop();
  t.diagnostic(`events: ${JSON.stringify(Object.fromEntries(seen))}`);
  assert.deepEqual(uncaught, []);
  assert.equal(listenerErrors, 0);
  assert.ok(seen.size > 0, "the fuzzer provoked errors");
});
