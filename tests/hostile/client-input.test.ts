/**
 * An "evil server" against the TunnelClient: each case answers the client's handshake with bad
 * bytes and asserts the exact error code, that the client closes the connection at once, and that
 * it reconnects (it never gives up, never throws). A healthy tunnel opened first still echoes at
 * the end, and a client the server refuses keeps backing off.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { test } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import { ErrorCodes, type TunnelError } from "../../src/errors.js";
import type { TunnelClientOptions } from "../../src/options.js";
import { FrameType } from "../../src/protocol/constants.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  CERT,
  connect,
  echoService,
  KEY,
  onceWithin,
  readBytes,
  startTunnel,
} from "../helpers/net.js";
import {
  answeringServer,
  closedWithin,
  encodeFrame,
  encodeHandshake,
  evilServer,
  framePrefix,
  MAGIC,
  readHandshake,
  u32,
  within,
} from "../helpers/raw-peer.js";

const PROMPT_MS = 2_000;
const HANDSHAKE_TIMEOUT_MS = 300;

type Reply = (socket: Socket, handshake: Record<string, unknown>) => void;

interface EvilRun {
  err: TunnelError;
  /** The server side of the offending connection: closed by the client. */
  victim: Socket;
  client: TunnelClient;
}

test("an evil server against the client", async (t) => {
  const service = await echoService(t);
  const { publicPort } = await startTunnel(t, service.port);
  const healthy = await connect(t, publicPort);
  healthy.write("ping-before");
  assert.equal((await readBytes(healthy, 11)).toString(), "ping-before");

  /**
   * Starts an evil server that answers every handshake with `reply`, and a client against it.
   * Resolves with the client's first tunnel-error, once the client has queued a reconnect and
   * dialled again (the second connection proves it carried on).
   */
  async function against(
    reply: Reply,
    clientOptions: Partial<TunnelClientOptions> = {},
  ): Promise<EvilRun> {
    const evil = await answeringServer(t, reply);
    const { accepted } = evil;
    const client = new TunnelClient({
      tunnelServerHost: "127.0.0.1",
      tunnelServerPort: evil.port,
      localServicePort: service.port,
      localServiceHost: "127.0.0.1",
      reconnectInitialDelayMs: 20,
      handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
      maxHandshakeBytes: 1024,
      maxFrameBytes: 64 * 1024,
      ...clientOptions,
    });
    t.after(() => client.stop());
    const failed = onceWithin<{ err: TunnelError }>(client.events, "tunnel-error");
    const queued = onceWithin<{ timeout: number }>(client.events, "tunnel-reconnect-queued");
    const started = client.start();
    const { err } = await failed;
    const victim = accepted[0]!;
    await closedWithin(victim, HANDSHAKE_TIMEOUT_MS + PROMPT_MS);
    assert.ok((await queued).timeout > 0);
    const deadline = Date.now() + PROMPT_MS;
    while (accepted.length < 2) {
      assert.ok(Date.now() < deadline, "the client reconnects");
      await onceWithin(evil.server, "connection", PROMPT_MS);
    }
    await client.stop();
    // start() resolved if a valid ack came before the bad bytes; otherwise stop() rejects it.
    await started.catch((stopped: TunnelError) => assert.equal(stopped.code, ErrorCodes.STOPPED));
    return { err, victim, client };
  }

  const ack = (port: unknown) => encodeHandshake({ port });
  const validAckBytes = ack(40000);
  const validAck = (socket: Socket) => socket.write(ack(40000));

  await t.test("bad magic: W3P_ERR_BAD_MAGIC", async () => {
    const { err } = await against((socket) => socket.write("HTTP/1.1 400 Bad Request\r\n\r\n"));
    assert.equal(err.code, ErrorCodes.BAD_MAGIC);
  });

  await t.test("an ack that is not JSON: W3P_ERR_BAD_HANDSHAKE", async () => {
    const body = Buffer.from("port=40000");
    const { err } = await against((socket) =>
      socket.write(Buffer.concat([MAGIC, u32(body.length), body])),
    );
    assert.equal(err.code, ErrorCodes.BAD_HANDSHAKE);
  });

  await t.test("an ack that is not an object: W3P_ERR_BAD_HANDSHAKE", async () => {
    const { err } = await against((socket) => socket.write(encodeHandshake([40000])));
    assert.equal(err.code, ErrorCodes.BAD_HANDSHAKE);
  });

  await t.test("an ack whose port is not a valid number: W3P_ERR_BAD_HANDSHAKE", async () => {
    for (const port of ["40000", 70000, 0, -1, 1.5, null, undefined, 65536]) {
      const { err } = await against((socket) => socket.write(ack(port)));
      assert.equal(err.code, ErrorCodes.BAD_HANDSHAKE, `port ${String(port)}`);
    }
    // An extension ack naming a service with a bad port.
    const { err } = await against((socket) =>
      socket.write(
        encodeHandshake({ port: 40000, w3p: { v: 2, ext: [], services: [{ name: "x" }] } }),
      ),
    );
    assert.equal(err.code, ErrorCodes.BAD_HANDSHAKE);
  });

  await t.test("an oversized ack: W3P_ERR_HANDSHAKE_TOO_LARGE on the prefix", async () => {
    const { err } = await against((socket) => socket.write(Buffer.concat([MAGIC, u32(1025)])));
    assert.equal(err.code, ErrorCodes.HANDSHAKE_TOO_LARGE);
  });

  await t.test("a frame announcing 4 GiB: W3P_ERR_FRAME_TOO_LARGE", async () => {
    const { err } = await against((socket) => {
      validAck(socket);
      socket.write(Buffer.concat([framePrefix(0xffffffff), Buffer.alloc(1024)]));
    });
    assert.equal(err.code, ErrorCodes.FRAME_TOO_LARGE);
  });

  await t.test("a body shorter than the header: W3P_ERR_MALFORMED_FRAME", async () => {
    const { err } = await against((socket) => {
      validAck(socket);
      socket.write(Buffer.concat([u32(2), Buffer.alloc(2)]));
    });
    assert.equal(err.code, ErrorCodes.MALFORMED_FRAME);
  });

  await t.test(
    "a server that hangs up in the middle of a frame: CONNECTION_CLOSED, not an orderly close",
    async () => {
      // Inside the length, inside the header, inside the payload (part of it already delivered).
      for (const cut of [3, 7, 9 + 100]) {
        const frame = encodeFrame(1, FrameType.DATA, Buffer.alloc(1000, 0x61));
        const { err } = await against((socket) => {
          validAck(socket);
          socket.end(frame.subarray(0, cut));
        });
        assert.equal(err.code, ErrorCodes.CONNECTION_CLOSED, `cut at ${cut}`);
        assert.match(err.message, /middle of a frame/);
        assert.doesNotMatch(err.message, /connectionFilter/, "no handshake hint after an ack");
      }
    },
  );

  await t.test("an unknown frame type: W3P_ERR_UNKNOWN_FRAME_TYPE", async () => {
    for (const type of [0x7f, FrameType.OPEN, FrameType.PING]) {
      // A v1 ack negotiates nothing: even known extension types are unknown here.
      const { err } = await against((socket) => {
        validAck(socket);
        socket.write(encodeFrame(1, type, type === FrameType.PING ? Buffer.alloc(8) : undefined));
      });
      assert.equal(err.code, ErrorCodes.UNKNOWN_FRAME_TYPE, `type ${type}`);
    }
  });

  await t.test("a second ack: W3P_ERR_UNEXPECTED_FRAME", async () => {
    const { err } = await against((socket) => {
      validAck(socket);
      validAck(socket);
    });
    assert.equal(err.code, ErrorCodes.UNEXPECTED_FRAME);
  });

  await t.test("a server that never answers: W3P_ERR_HANDSHAKE_TIMEOUT", async () => {
    const startedAt = Date.now();
    const { err } = await against(() => {});
    assert.equal(err.code, ErrorCodes.HANDSHAKE_TIMEOUT);
    assert.ok(Date.now() - startedAt >= HANDSHAKE_TIMEOUT_MS - 50);
  });

  await t.test("a server that hangs up during the handshake: CONNECTION_CLOSED", async () => {
    const { err } = await against((socket) => socket.end());
    assert.equal(err.code, ErrorCodes.CONNECTION_CLOSED);
    // As a v1 server refuses: the message names the way out for one that refuses the w3p key.
    assert.match(err.message, /without an answer.*extensions: false/);
    const v1 = await against((socket) => socket.end(), { extensions: false });
    assert.equal(v1.err.code, ErrorCodes.CONNECTION_CLOSED);
    assert.doesNotMatch(v1.err.message, /extensions: false/);
    assert.match(v1.err.message, /set tls/);
  });

  await t.test("a TLS server for a plain client, a plain server for a TLS client", async (st) => {
    // Plain client, TLS control port: the server drops it (its side reports TLS_MISMATCH).
    const tlsServer = new TunnelServer({ tls: { mainServer: { key: KEY, cert: CERT } } });
    st.after(() => tlsServer.stop());
    const tlsPort = await tlsServer.start(0, "127.0.0.1");
    const plain = new TunnelClient({
      tunnelServerHost: "127.0.0.1",
      tunnelServerPort: tlsPort,
      reconnectInitialDelayMs: 20,
    });
    st.after(() => plain.stop());
    const serverSide = onceWithin<{ err: TunnelError }>(tlsServer.events, "client-tls-error");
    const plainFailed = onceWithin<{ err: TunnelError }>(plain.events, "tunnel-error");
    void plain.start();
    assert.equal((await serverSide).err.code, ErrorCodes.TLS_MISMATCH);
    const plainErr = (await plainFailed).err;
    assert.equal(plainErr.code, ErrorCodes.CONNECTION_CLOSED);
    // No byte comes back to tell TLS by: the message names it as a possible cause.
    assert.match(plainErr.message, /speaks TLS.*set tls/);
    await plain.stop();
    // TLS client, plain server: the ClientHello is not W3P, the server drops it.
    const { err } = await against(validAck, { tls: { ca: CERT, servername: "localhost" } });
    assert.equal(err.code, ErrorCodes.TLS_HANDSHAKE);
  });

  await t.test("streams beyond the client's maxStreams are refused with ERROR", async (st) => {
    const frames: Array<[number, number]> = [];
    let sawError: () => void = () => {};
    const refused = new Promise<void>((resolve) => {
      sawError = resolve;
    });
    const evil = await evilServer(st, (socket) => {
      readHandshake(socket)
        .then(({ rest }) => {
          let buffered = rest;
          socket.on("data", (chunk: Buffer) => {
            buffered = Buffer.concat([buffered, chunk]);
            while (buffered.length >= 9 && buffered.length >= 4 + buffered.readUInt32BE(0)) {
              const frame: [number, number] = [buffered.readUInt32BE(4), buffered[8]!];
              frames.push(frame);
              if (frame[1] === FrameType.ERROR) sawError();
              buffered = buffered.subarray(4 + buffered.readUInt32BE(0));
            }
          });
          // v1: the first frame for an unknown id opens a stream; three of them, limit two.
          socket.write(
            Buffer.concat([
              validAckBytes,
              encodeFrame(1, FrameType.DATA, Buffer.from("a")),
              encodeFrame(2, FrameType.DATA, Buffer.from("b")),
              encodeFrame(3, FrameType.DATA, Buffer.from("c")),
            ]),
          );
        })
        .catch(() => socket.destroy());
    });
    const client = new TunnelClient({
      tunnelServerHost: "127.0.0.1",
      tunnelServerPort: evil.port,
      localServiceHost: "127.0.0.1",
      localServicePort: service.port,
      maxStreams: 2,
    });
    st.after(() => client.stop());
    const rejected: { streamId: number; err: { code: string } }[] = [];
    client.events.on("stream-rejected", (payload) => rejected.push(payload));
    await client.start();
    await within(refused, PROMPT_MS, "an ERROR frame for stream 3");
    assert.deepEqual(
      rejected.map(({ streamId, err }) => [streamId, err.code]),
      [[3, "W3P_ERR_TOO_MANY_STREAMS"]],
    );
    assert.deepEqual(
      frames.filter(([, type]) => type === FrameType.ERROR),
      [[3, FrameType.ERROR]],
    );
    assert.equal(client.isConnected, true, "the tunnel stays up");
    await client.stop();
  });

  await t.test("the healthy tunnel still echoes", async () => {
    healthy.write("ping-after");
    assert.equal((await readBytes(healthy, 10)).toString(), "ping-after");
  });
});

test("a refused client keeps backing off and says why", async (t) => {
  const server = new TunnelServer({ connectionFilter: () => false });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  let attempts = 0;
  server.events.on("client-authentication-failed", () => attempts++);

  // v1 client: simply closed each time; its delays double.
  const v1 = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    extensions: false,
    reconnectInitialDelayMs: 20,
    reconnectMaxDelayMs: 10_000,
  });
  t.after(() => v1.stop());
  const delays: number[] = [];
  const codes: string[] = [];
  v1.events.on("tunnel-error", ({ err }) => codes.push(err.code));
  const fiveQueued = new Promise<void>((resolve) => {
    v1.events.on("tunnel-reconnect-queued", ({ timeout }) => {
      delays.push(timeout);
      if (delays.length === 5) resolve();
    });
  });
  void v1.start();
  await within(fiveQueued, 5_000, `five retries (got ${delays.length})`);
  await v1.stop();
  for (let i = 1; i < delays.length; i++) {
    assert.ok(delays[i]! > delays[i - 1]!, `delays grow: ${delays.join(", ")}`);
  }
  assert.ok(
    codes.every((code) => code === ErrorCodes.CONNECTION_CLOSED),
    codes.join(", "),
  );
  assert.ok(attempts >= 5 && attempts <= 6, `${attempts} attempts for 5 queued retries`);

  // Extension client: told AUTH_REJECTED with a retry delay, and waits at least that long.
  const ext = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    reconnectInitialDelayMs: 20,
  });
  t.after(() => ext.stop());
  const rejected = onceWithin<{ err: TunnelError; retryAfterMs: number | null }>(
    ext.events,
    "authentication-rejected",
  );
  const queued = onceWithin<{ timeout: number }>(ext.events, "tunnel-reconnect-queued");
  void ext.start();
  const { err, retryAfterMs } = await rejected;
  assert.equal(err.code, ErrorCodes.AUTH_REJECTED);
  assert.ok(retryAfterMs !== null && retryAfterMs >= 1000, `retryAfterMs ${retryAfterMs}`);
  assert.ok((await queued).timeout >= retryAfterMs!, "the client honours retryAfterMs");
  await ext.stop();
});
