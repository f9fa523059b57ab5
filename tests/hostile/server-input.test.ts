/**
 * A raw TCP "attacker" against the server's control and public ports. Each case asserts the exact
 * error code, that only the offending connection is closed (within its deadline), and at the end
 * that the healthy tunnel opened first still echoes.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import tls from "node:tls";
import { ErrorCodes } from "../../src/errors.js";
import { FrameType } from "../../src/protocol/constants.js";
import type { ClientTunnel } from "../../src/server/client-tunnel.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  CERT,
  connect,
  echoService,
  KEY,
  onceWithin,
  readBytes,
  startTunnel,
  until,
} from "../helpers/net.js";
import {
  arrayBufferBytes,
  closedWithin,
  encodeFrame,
  encodeHandshake,
  extensionHandshake,
  framePrefix,
  MAGIC,
  portRefuses,
  rawConnect,
  rawSession,
  readHandshake,
  rejectionFrom,
  serverErrorFor,
  u32,
} from "../helpers/raw-peer.js";

const HANDSHAKE_TIMEOUT_MS = 400;
/** An error found on arrival must close the connection at once: generous bound for noisy CI. */
const PROMPT_MS = 2_000;
const GOOD = { token: "good" };

test("hostile input against the server", async (t) => {
  let releaseSlowFilter: () => void = () => {};
  const slowFilterGate = new Promise<void>((resolve) => {
    releaseSlowFilter = resolve;
  });
  t.after(() => releaseSlowFilter());
  const service = await echoService(t);
  const { server, controlPort, publicPort } = await startTunnel(
    t,
    service.port,
    {
      handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
      maxHandshakeBytes: 1024,
      maxFrameBytes: 64 * 1024,
      maxPendingConnections: 8,
      maxStreams: 4,
      authFailuresPerSecond: 1,
      connectionFilter: async (credentials) => {
        if (credentials.slow) await slowFilterGate;
        return credentials.token === "good";
      },
    },
    { authenticationCredentials: GOOD },
  );
  const healthy = await connect(t, publicPort);
  healthy.write("ping-before");
  assert.equal((await readBytes(healthy, 11)).toString(), "ping-before");

  /** Sends `bytes` on a fresh connection; returns the server's error code and time to close. */
  async function attack(bytes: Buffer | null, deadline = PROMPT_MS) {
    const socket = await rawConnect(t, controlPort);
    const err = serverErrorFor(server, socket);
    if (bytes) socket.write(bytes);
    const code = (await err).code;
    const closeMs = await closedWithin(socket, deadline);
    return { code, closeMs };
  }

  /** A raw session whose server-side tunnel is known, for attacks after the handshake. */
  async function openRaw(ext: readonly string[] | null) {
    const created = onceWithin<{ clientTunnel: ClientTunnel }>(server.events, "tunnel-created");
    const raw = await rawSession(t, controlPort, ext, GOOD);
    const { clientTunnel } = await created;
    assert.equal(clientTunnel.remotePort, raw.socket.localPort);
    return { ...raw, clientTunnel };
  }

  await t.test("garbage before the magic: W3P_ERR_BAD_MAGIC, closed at once", async () => {
    const http = await attack(Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert.equal(http.code, ErrorCodes.BAD_MAGIC);
    const late = await attack(Buffer.from("W3PTUNX"));
    assert.equal(late.code, ErrorCodes.BAD_MAGIC);
    const nul = await attack(Buffer.alloc(1));
    assert.equal(nul.code, ErrorCodes.BAD_MAGIC);
  });

  await t.test("a TLS ClientHello on the plain port: W3P_ERR_TLS_MISMATCH", async () => {
    const errors = onceWithin<{ clientTunnel: ClientTunnel; err: { code: string } }>(
      server.events,
      "client-error",
    );
    const socket = tls.connect({ host: "127.0.0.1", port: controlPort, ca: CERT });
    socket.on("error", () => {});
    t.after(() => socket.destroy());
    const { clientTunnel, err } = await errors;
    assert.equal(err.code, ErrorCodes.TLS_MISMATCH);
    assert.equal(clientTunnel.remotePort, socket.localPort);
    await closedWithin(socket, PROMPT_MS);
  });

  await t.test("plain bytes on a TLS control port: client-tls-error TLS_MISMATCH", async (st) => {
    const tlsServer = new TunnelServer({
      tls: { mainServer: { key: KEY, cert: CERT } },
      handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
    });
    st.after(() => tlsServer.stop());
    const port = await tlsServer.start(0, "127.0.0.1");
    const socket = await rawConnect(st, port);
    const tlsError = onceWithin<{ remotePort: number; err: { code: string } }>(
      tlsServer.events,
      "client-tls-error",
    );
    socket.write(encodeHandshake(GOOD));
    const { remotePort, err } = await tlsError;
    assert.equal(remotePort, socket.localPort);
    assert.equal(err.code, ErrorCodes.TLS_MISMATCH);
    await closedWithin(socket, PROMPT_MS);
    // A silent peer on the TLS port is cut off by the TLS handshake deadline.
    const silent = await rawConnect(st, port);
    const timedOut = onceWithin<{ err: { code: string } }>(tlsServer.events, "client-tls-error");
    assert.equal((await timedOut).err.code, ErrorCodes.TLS_HANDSHAKE);
    await closedWithin(silent, HANDSHAKE_TIMEOUT_MS + PROMPT_MS);
  });

  await t.test("a handshake that is not JSON: W3P_ERR_BAD_HANDSHAKE", async () => {
    const body = Buffer.from("{not json", "utf8");
    const { code } = await attack(Buffer.concat([MAGIC, u32(body.length), body]));
    assert.equal(code, ErrorCodes.BAD_HANDSHAKE);
    const binary = Buffer.from([0xff, 0xfe, 0x00, 0x7b]);
    assert.equal(
      (await attack(Buffer.concat([MAGIC, u32(binary.length), binary]))).code,
      ErrorCodes.BAD_HANDSHAKE,
    );
  });

  await t.test("JSON that is not an object: W3P_ERR_BAD_HANDSHAKE", async () => {
    for (const text of ["[1,2]", '"token"', "null", "42", "true", ""]) {
      const body = Buffer.from(text, "utf8");
      const { code } = await attack(Buffer.concat([MAGIC, u32(body.length), body]));
      assert.equal(code, ErrorCodes.BAD_HANDSHAKE, `handshake ${JSON.stringify(text)}`);
    }
    // A reserved "w3p" block of the wrong shape is refused just the same.
    const { code } = await attack(encodeHandshake({ ...GOOD, w3p: [1] }));
    assert.equal(code, ErrorCodes.BAD_HANDSHAKE);
  });

  await t.test(
    "a handshake nested deeper than 32 levels: W3P_ERR_BAD_HANDSHAKE, unparsed",
    async () => {
      // Deep nesting is what makes JSON.parse slow (4 MiB of it took 1.4 s); refused by count.
      const deep = Buffer.from(`{"token":"good","a":${"[".repeat(32)}${"]".repeat(32)}}`);
      const { code } = await attack(Buffer.concat([MAGIC, u32(deep.length), deep]));
      assert.equal(code, ErrorCodes.BAD_HANDSHAKE);
      // 32 levels in all (the object is one of them) is still a handshake; brackets in strings
      // do not count.
      const ok = { ...GOOD, a: JSON.parse(`${"[".repeat(31)}${"]".repeat(31)}`), s: "[[[[[[[[" };
      const raw = await rawSession(t, controlPort, null, ok);
      assert.ok(raw.publicPort > 0);
      raw.socket.destroy();
    },
  );

  await t.test("an oversized handshake is refused on its length prefix", async () => {
    // Only the prefix is sent: the server must not wait for the body.
    const { code } = await attack(Buffer.concat([MAGIC, u32(1025)]));
    assert.equal(code, ErrorCodes.HANDSHAKE_TOO_LARGE);
  });

  await t.test("a handshake announcing 4 GiB allocates nothing large", async () => {
    const before = arrayBufferBytes();
    const socket = await rawConnect(t, controlPort);
    const err = serverErrorFor(server, socket);
    socket.write(Buffer.concat([MAGIC, u32(0xffffffff), Buffer.alloc(64 * 1024, 0x41)]));
    assert.equal((await err).code, ErrorCodes.HANDSHAKE_TOO_LARGE);
    const closeMs = await closedWithin(socket, PROMPT_MS);
    const grown = arrayBufferBytes() - before;
    assert.ok(grown < 8 * 1024 * 1024, `arrayBuffers grew by ${grown} bytes`);
    t.diagnostic(`4 GiB handshake: closed in ${closeMs} ms, arrayBuffers +${grown} bytes`);
  });

  await t.test("a silent peer is closed at the handshake deadline", async () => {
    const silent = await attack(null, HANDSHAKE_TIMEOUT_MS + PROMPT_MS);
    assert.equal(silent.code, ErrorCodes.HANDSHAKE_TIMEOUT);
    // The magic alone does not buy more time.
    const startedAt = Date.now();
    const magicOnly = await attack(MAGIC, HANDSHAKE_TIMEOUT_MS + PROMPT_MS);
    assert.equal(magicOnly.code, ErrorCodes.HANDSHAKE_TIMEOUT);
    const elapsed = Date.now() - startedAt;
    assert.ok(elapsed >= HANDSHAKE_TIMEOUT_MS - 50, `closed after ${elapsed} ms`);
    assert.ok(elapsed < HANDSHAKE_TIMEOUT_MS + PROMPT_MS, `closed after ${elapsed} ms`);
  });

  await t.test("a peer trickling one byte at a time is cut off at the deadline", async (st) => {
    const socket = await rawConnect(st, controlPort);
    socket.setNoDelay(true);
    const bytes = encodeHandshake({ ...GOOD, padding: "x".repeat(500) });
    let sent = 0;
    // Trickling is the behaviour under test, not a wait: one byte every 10 ms.
    const trickle = setInterval(() => {
      if (sent < bytes.length && !socket.destroyed) socket.write(bytes.subarray(sent, ++sent));
    }, 10);
    st.after(() => clearInterval(trickle));
    const startedAt = Date.now();
    const err = await serverErrorFor(server, socket);
    assert.equal(err.code, ErrorCodes.HANDSHAKE_TIMEOUT);
    await closedWithin(socket, PROMPT_MS);
    clearInterval(trickle);
    assert.ok(sent < bytes.length, "the deadline came before the trickle finished");
    assert.ok(Date.now() - startedAt < HANDSHAKE_TIMEOUT_MS + PROMPT_MS);
  });

  await t.test("bytes piled up while auth runs: W3P_ERR_UNEXPECTED_FRAME", async () => {
    const socket = await rawConnect(t, controlPort);
    const err = serverErrorFor(server, socket);
    // The filter holds this one; the peer keeps talking past the handshake limit (1 KiB). The
    // limit is checked as bytes arrive, so keep sending (talking is the behaviour under test).
    socket.write(encodeHandshake({ ...GOOD, slow: true }));
    const talk = setInterval(() => {
      if (!socket.destroyed) socket.write(Buffer.alloc(512, 0x42));
    }, 20);
    try {
      assert.equal((await err).code, ErrorCodes.UNEXPECTED_FRAME);
      await closedWithin(socket, PROMPT_MS);
    } finally {
      clearInterval(talk);
    }
  });

  await t.test("too many pending connections: connection-rejected TOO_MANY_PENDING", async (st) => {
    const idle = [];
    for (let i = 0; i < 8; i++) idle.push(await rawConnect(st, controlPort));
    const rejected = rejectionFrom(server, (p) => p.err.code === ErrorCodes.TOO_MANY_PENDING);
    const extra = await rawConnect(st, controlPort);
    const { remotePort } = await rejected;
    assert.equal(remotePort, extra.localPort);
    await closedWithin(extra, PROMPT_MS);
    // The idle ones still die at their own deadline, and the slot frees up.
    for (const socket of idle) await closedWithin(socket, HANDSHAKE_TIMEOUT_MS + PROMPT_MS);
  });

  await t.test("too many streams per tunnel: visitor-rejected TOO_MANY_STREAMS", async (st) => {
    const raw = await openRaw(null);
    const visitors = [];
    for (let i = 0; i < 4; i++) {
      const accepted = onceWithin(server.events, "visitor-connected");
      visitors.push(await rawConnect(st, raw.publicPort));
      await accepted;
    }
    const rejected = onceWithin<{ err: { code: string } }>(server.events, "visitor-rejected");
    const fifth = await rawConnect(st, raw.publicPort);
    assert.equal((await rejected).err.code, ErrorCodes.TOO_MANY_STREAMS);
    await closedWithin(fifth, PROMPT_MS);
    assert.ok(
      visitors.every((v) => !v.destroyed),
      "the first four are untouched",
    );
    raw.socket.destroy();
    for (const visitor of visitors) await closedWithin(visitor, PROMPT_MS);
  });

  await t.test("a frame announcing 4 GiB after auth: FRAME_TOO_LARGE, port closed", async () => {
    const raw = await openRaw(null);
    const destroyed = onceWithin(server.events, "tunnel-destroyed");
    const err = serverErrorFor(server, raw.socket);
    const before = arrayBufferBytes();
    raw.socket.write(Buffer.concat([framePrefix(0xffffffff), Buffer.alloc(64 * 1024)]));
    assert.equal((await err).code, ErrorCodes.FRAME_TOO_LARGE);
    const closeMs = await closedWithin(raw.socket, PROMPT_MS);
    await destroyed;
    const grown = arrayBufferBytes() - before;
    assert.ok(grown < 8 * 1024 * 1024, `arrayBuffers grew by ${grown} bytes`);
    t.diagnostic(`4 GiB frame after auth: closed in ${closeMs} ms, arrayBuffers +${grown} bytes`);
    assert.ok(await portRefuses(raw.publicPort), "the public port is closed");
  });

  await t.test(
    "a client that hangs up in the middle of a frame: CONNECTION_CLOSED, not an orderly close",
    async () => {
      for (const ext of [null, ["open", "fin"]] as const) {
        const raw = await openRaw(ext);
        const err = serverErrorFor(server, raw.socket);
        const disconnected = onceWithin<{ hadError: boolean }>(
          server.events,
          "client-disconnected",
        );
        raw.socket.end(encodeFrame(1, FrameType.DATA, Buffer.alloc(1000)).subarray(0, 200));
        const { code, message } = await err;
        assert.equal(code, ErrorCodes.CONNECTION_CLOSED);
        assert.match(message, /middle of a frame/);
        await disconnected;
        await closedWithin(raw.socket, PROMPT_MS);
      }
    },
  );

  await t.test("a body shorter than the header: W3P_ERR_MALFORMED_FRAME", async () => {
    for (const length of [0, 3, 4]) {
      const raw = await openRaw(null);
      const err = serverErrorFor(server, raw.socket);
      raw.socket.write(Buffer.concat([u32(length), Buffer.alloc(length)]));
      assert.equal((await err).code, ErrorCodes.MALFORMED_FRAME, `length ${length}`);
      await closedWithin(raw.socket, PROMPT_MS);
    }
    // A control frame with the wrong payload size (WINDOW needs exactly 4 bytes).
    const raw = await openRaw(["flow", "ping"]);
    const err = serverErrorFor(server, raw.socket);
    raw.socket.write(encodeFrame(1, FrameType.WINDOW, Buffer.alloc(3)));
    assert.equal((await err).code, ErrorCodes.MALFORMED_FRAME);
    await closedWithin(raw.socket, PROMPT_MS);
  });

  await t.test("an unknown or unnegotiated frame type: W3P_ERR_UNKNOWN_FRAME_TYPE", async () => {
    for (const [ext, type] of [
      [null, 0x7f],
      [null, FrameType.PING], // v1 session: ping was never negotiated
      [["flow"], FrameType.FIN],
      [["open", "flow", "fin", "ping", "goaway"], 0x00],
    ] as const) {
      const raw = await openRaw(ext);
      const err = serverErrorFor(server, raw.socket);
      const payload = type === FrameType.PING ? Buffer.alloc(8) : Buffer.alloc(0);
      raw.socket.write(encodeFrame(0, type, payload));
      assert.equal((await err).code, ErrorCodes.UNKNOWN_FRAME_TYPE, `type ${type}`);
      await closedWithin(raw.socket, PROMPT_MS);
    }
  });

  await t.test("an OPEN frame from a client: W3P_ERR_UNEXPECTED_FRAME", async () => {
    const raw = await openRaw(["open", "flow", "fin"]);
    const err = serverErrorFor(server, raw.socket);
    raw.socket.write(encodeFrame(9, FrameType.OPEN, Buffer.from("{}")));
    assert.equal((await err).code, ErrorCodes.UNEXPECTED_FRAME);
    await closedWithin(raw.socket, PROMPT_MS);
  });

  await t.test("frames for unknown or closed streams are dropped, the session kept", async (st) => {
    for (const ext of [null, ["open", "flow", "fin", "ping", "goaway"]] as const) {
      const raw = await openRaw(ext);
      const session = raw.clientTunnel.session;
      raw.socket.write(
        Buffer.concat([
          encodeFrame(4242, FrameType.DATA, Buffer.from("nobody")),
          encodeFrame(4243, FrameType.CLOSE),
          encodeFrame(4244, FrameType.ERROR),
          ...(ext ? [encodeFrame(4245, FrameType.WINDOW, u32(1000))] : []),
          ...(ext ? [encodeFrame(4246, FrameType.FIN)] : []),
        ]),
      );
      // A visitor opens stream 1; the raw peer closes it, then sends data for it anyway.
      const opened = readBytes(raw.socket, 9);
      const visitor = await rawConnect(st, raw.publicPort);
      const header = await opened;
      const streamId = header.readUInt32BE(4);
      assert.equal(header[8], ext ? FrameType.OPEN : FrameType.DATA);
      raw.socket.write(encodeFrame(streamId, FrameType.CLOSE));
      await closedWithin(visitor, PROMPT_MS);
      raw.socket.write(encodeFrame(streamId, FrameType.DATA, Buffer.from("late")));
      // Three (v1) or five (extensions) frames for unknown ids, plus the late one.
      const expected = ext ? 6 : 4;
      await until(() => session.droppedFrames >= expected, PROMPT_MS, "dropped frames");
      // The session is still up: a new visitor is announced to the raw peer.
      const next = readBytes(raw.socket, 9);
      await connect(st, raw.publicPort);
      assert.notEqual((await next).readUInt32BE(4), 0);
      assert.equal(session.droppedFrames, expected);
      assert.equal(raw.clientTunnel.isOpen, true);
      raw.socket.destroy();
    }
  });

  await t.test("a second handshake after the ack: W3P_ERR_UNEXPECTED_FRAME", async () => {
    for (const ext of [null, ["ping"]] as const) {
      const raw = await openRaw(ext);
      const err = serverErrorFor(server, raw.socket);
      raw.socket.write(ext ? extensionHandshake(GOOD) : encodeHandshake(GOOD));
      assert.equal((await err).code, ErrorCodes.UNEXPECTED_FRAME);
      await closedWithin(raw.socket, PROMPT_MS);
    }
    // Two handshakes in one write: the second is found as soon as the first is answered.
    const socket = await rawConnect(t, controlPort);
    const err = serverErrorFor(server, socket);
    const acked = readHandshake(socket);
    socket.write(Buffer.concat([encodeHandshake(GOOD), encodeHandshake(GOOD)]));
    assert.equal(typeof (await acked).message.port, "number");
    assert.equal((await err).code, ErrorCodes.UNEXPECTED_FRAME);
    await closedWithin(socket, PROMPT_MS);
  });

  await t.test(
    "with an async filter, guesses sent together are paid for before the filter runs",
    async (st) => {
      const guessing = new TunnelServer({ authFailuresPerSecond: 1 });
      st.after(() => guessing.stop());
      let release: () => void = () => {};
      const gate = new Promise<void>((resolve) => {
        release = resolve;
      });
      st.after(() => release());
      let asked = 0;
      guessing.connectionFilter = async () => {
        asked++;
        await gate;
        return false;
      };
      const port = await guessing.start(0, "127.0.0.1");
      const sockets = [];
      for (let i = 0; i < 20; i++) {
        const socket = await rawConnect(st, port);
        socket.write(extensionHandshake({ token: `guess-${i}` }));
        sockets.push(socket);
      }
      const answers = sockets.map((socket) => readHandshake(socket));
      // Every guess has arrived: those past the burst (4) are refused without asking the filter.
      await until(
        () => guessing.stats().pendingConnections === asked,
        5_000,
        "the guesses to settle",
      );
      release();
      const codes = (await Promise.all(answers)).map(
        ({ message }) => (message.w3p as { error: { code: string } }).error.code,
      );
      assert.ok(asked <= 6, `the filter was asked ${asked} times`);
      assert.equal(codes.filter((code) => code === ErrorCodes.AUTH_REJECTED).length, asked);
      assert.equal(codes.filter((code) => code === ErrorCodes.AUTH_THROTTLED).length, 20 - asked);
    },
  );

  await t.test("failed auth is throttled per address: W3P_ERR_AUTH_THROTTLED", async (st) => {
    // 127.0.0.3 is a loopback alias: its bucket is separate from 127.0.0.1 (the healthy tunnel).
    const from = { localAddress: "127.0.0.3" };
    const failures: string[] = [];
    const onFailed = ({
      clientTunnel,
      err,
    }: {
      clientTunnel: ClientTunnel;
      err: { code: string };
    }) => {
      if (clientTunnel.remoteAddress === from.localAddress) failures.push(err.code);
    };
    server.events.on("client-authentication-failed", onFailed);
    st.after(() => server.events.off("client-authentication-failed", onFailed));
    // authFailuresPerSecond 1 = burst of 4 failures, then attempts are refused unread by the filter.
    for (let i = 0; i < 4; i++) {
      const socket = await rawConnect(st, controlPort, from);
      socket.write(extensionHandshake({ token: `guess-${i}` }));
      const refusal = await readHandshake(socket);
      const error = (refusal.message.w3p as { error: { code: string; retryAfterMs: number } })
        .error;
      assert.equal(error.code, ErrorCodes.AUTH_REJECTED);
      assert.ok(error.retryAfterMs >= 1000);
      await closedWithin(socket, PROMPT_MS);
    }
    assert.deepEqual(failures, Array(4).fill(ErrorCodes.AUTH_REJECTED));
    const rejected = rejectionFrom(server, (p) => p.remoteAddress === from.localAddress);
    const throttled = await rawConnect(st, controlPort, from);
    // Even the right token is refused now, without asking the filter, and the client is told
    // when to come back.
    throttled.write(extensionHandshake(GOOD));
    const throttledRefusal = await readHandshake(throttled);
    const reason = (
      throttledRefusal.message.w3p as { error: { code: string; retryAfterMs: number } }
    ).error;
    assert.equal(reason.code, ErrorCodes.AUTH_THROTTLED);
    assert.ok(reason.retryAfterMs > 0);
    const { err, remotePort } = await rejected;
    assert.equal(err.code, ErrorCodes.AUTH_THROTTLED);
    assert.equal(remotePort, throttled.localPort);
    await closedWithin(throttled, PROMPT_MS);
    assert.equal(failures.length, 4, "a throttled attempt never reaches the filter");
    // Another address is not affected.
    const other = await rawSession(st, controlPort, null, GOOD);
    assert.equal(typeof other.publicPort, "number");
  });

  await t.test("the healthy tunnel still echoes and nothing is left pending", async () => {
    healthy.write("ping-after");
    assert.equal((await readBytes(healthy, 10)).toString(), "ping-after");
    releaseSlowFilter();
    await until(() => server.stats().pendingConnections === 0, PROMPT_MS, "no pending");
  });
});

test("too many clients: refused after auth with W3P_ERR_TOO_MANY_CLIENTS", async (t) => {
  const server = new TunnelServer({ maxClients: 1 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const first = await rawSession(t, controlPort, null);
  assert.equal(typeof first.publicPort, "number");
  // v1 peer: closed, with the coded event on the server.
  const v1 = await rawConnect(t, controlPort);
  const err = serverErrorFor(server, v1, ["client-error"]);
  v1.write(encodeHandshake({ id: "second" }));
  assert.equal((await err).code, ErrorCodes.TOO_MANY_CLIENTS);
  await closedWithin(v1, PROMPT_MS);
  // Extension peer: told why, with a retry delay.
  const ext = await rawConnect(t, controlPort);
  const refusal = readHandshake(ext);
  ext.write(extensionHandshake({ id: "third" }));
  const error = ((await refusal).message.w3p as { error: { code: string; retryAfterMs: number } })
    .error;
  assert.equal(error.code, ErrorCodes.TOO_MANY_CLIENTS);
  assert.ok(error.retryAfterMs > 0);
  await closedWithin(ext, PROMPT_MS);
  assert.equal(server.tunnels.size, 1);
});
