import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ErrorCodes, TunnelError } from "../../src/errors.js";
import { ALL_EXTENSIONS, FrameType } from "../../src/protocol/constants.js";
import { FrameDecoder, type FrameSink } from "../../src/protocol/decoder.js";
import { encodeFrame, encodeFrameHeader, encodeHandshake } from "../../src/protocol/encode.js";

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ""), "hex");

// Vectors from PROTOCOL-v1.md.
const CLIENT_HANDSHAKE = hex(
  "57335054554e4c 00000017 7b226964223a22616c6c6f7765642d636c69656e74227d",
);
const SERVER_ACK = hex("57335054554e4c 0000000e 7b22706f7274223a34313139397d");
const DATA_FRAME = hex("00000015 0a0b0c0d 01 474554202f20485454502f312e310d0a");
const CLOSE_FRAME = hex("00000005 00000007 02");
const ERROR_FRAME = hex("00000005 00000007 03");

type Event =
  | { kind: "magic" }
  | { kind: "handshake"; body: string }
  | { kind: "frame"; streamId: number; type: number; payload: string };

function collector(): { sink: FrameSink; events: Event[] } {
  const events: Event[] = [];
  return {
    events,
    sink: {
      onMagic: () => events.push({ kind: "magic" }),
      onHandshake: (body) => events.push({ kind: "handshake", body: body.toString("utf8") }),
      onFrame: (streamId, type, payload) =>
        events.push({ kind: "frame", streamId, type, payload: payload.toString("hex") }),
    },
  };
}

function decoder(sink: FrameSink, maxFrameBytes = 1024 * 1024) {
  return new FrameDecoder(sink, { maxHandshakeBytes: 64 * 1024, maxFrameBytes });
}

function expectCode(fn: () => void, code: string) {
  assert.throws(fn, (err: unknown) => err instanceof TunnelError && err.code === code);
}

const STREAM = Buffer.concat([CLIENT_HANDSHAKE, DATA_FRAME, CLOSE_FRAME, ERROR_FRAME]);
const EXPECTED: Event[] = [
  { kind: "magic" },
  { kind: "handshake", body: '{"id":"allowed-client"}' },
  {
    kind: "frame",
    streamId: 0x0a0b0c0d,
    type: FrameType.DATA,
    payload: Buffer.from("GET / HTTP/1.1\r\n").toString("hex"),
  },
  { kind: "frame", streamId: 7, type: FrameType.CLOSE, payload: "" },
  { kind: "frame", streamId: 7, type: FrameType.ERROR, payload: "" },
];

describe("encode", () => {
  it("matches the v1 handshake vectors", () => {
    assert.deepEqual(encodeHandshake({ id: "allowed-client" }), CLIENT_HANDSHAKE);
    assert.deepEqual(encodeHandshake({ port: 41199 }), SERVER_ACK);
  });

  it("matches the v1 frame vectors", () => {
    const payload = Buffer.from("GET / HTTP/1.1\r\n");
    assert.deepEqual(
      Buffer.concat([encodeFrameHeader(0x0a0b0c0d, FrameType.DATA, payload.length), payload]),
      DATA_FRAME,
    );
    assert.deepEqual(encodeFrame(0x0a0b0c0d, FrameType.DATA, payload), DATA_FRAME);
    assert.deepEqual(encodeFrame(7, FrameType.CLOSE), CLOSE_FRAME);
    assert.deepEqual(encodeFrame(7, FrameType.ERROR), ERROR_FRAME);
  });
});

describe("FrameDecoder", () => {
  it("decodes the vectors in one chunk", () => {
    const { sink, events } = collector();
    decoder(sink).push(STREAM);
    assert.deepEqual(events, EXPECTED);
  });

  it("decodes the vectors split at every offset", () => {
    for (let cut = 1; cut < STREAM.length; cut++) {
      const { sink, events } = collector();
      const d = decoder(sink);
      d.push(STREAM.subarray(0, cut));
      d.push(STREAM.subarray(cut));
      assert.deepEqual(events, EXPECTED, `split at ${cut}`);
    }
  });

  it("decodes the vectors split at every pair of offsets", () => {
    for (let a = 1; a < STREAM.length; a += 3) {
      for (let b = a + 1; b < STREAM.length; b += 2) {
        const { sink, events } = collector();
        const d = decoder(sink);
        d.push(STREAM.subarray(0, a));
        d.push(STREAM.subarray(a, b));
        d.push(STREAM.subarray(b));
        assert.deepEqual(events, EXPECTED, `split at ${a}/${b}`);
      }
    }
  });

  it("decodes one byte at a time", () => {
    const { sink, events } = collector();
    const d = decoder(sink);
    for (const byte of STREAM) d.push(Buffer.from([byte]));
    assert.deepEqual(events, EXPECTED);
    assert.equal(d.bufferedBytes, 0);
  });

  it("decodes the server acknowledgement", () => {
    const { sink, events } = collector();
    decoder(sink).push(SERVER_ACK);
    assert.deepEqual(events[1], { kind: "handshake", body: '{"port":41199}' });
  });

  it("hands out frames inside one chunk as views, without copying", () => {
    const payloads: Buffer[] = [];
    const chunk = Buffer.concat([CLIENT_HANDSHAKE, DATA_FRAME]);
    const d = new FrameDecoder(
      { onMagic() {}, onHandshake() {}, onFrame: (_id, _type, p) => payloads.push(p) },
      { maxHandshakeBytes: 1024, maxFrameBytes: 1024 },
    );
    d.push(chunk);
    assert.equal(payloads[0]!.buffer, chunk.buffer);
  });

  it("accepts an empty data frame (opens a stream in v1)", () => {
    const { sink, events } = collector();
    decoder(sink).push(Buffer.concat([CLIENT_HANDSHAKE, hex("00000005 00000001 01")]));
    assert.deepEqual(events.at(-1), { kind: "frame", streamId: 1, type: 1, payload: "" });
  });

  it("rejects garbage at its first wrong byte", () => {
    const { sink } = collector();
    const d = decoder(sink);
    d.push(Buffer.from("W3P"));
    expectCode(() => d.push(Buffer.from("X")), ErrorCodes.BAD_MAGIC);
    // Afterwards the decoder ignores input instead of throwing again.
    d.push(Buffer.from("anything"));
    assert.equal(d.failed, true);
  });

  it("recognises a TLS ClientHello on a plain port", () => {
    const { sink } = collector();
    expectCode(() => decoder(sink).push(hex("160301")), ErrorCodes.TLS_MISMATCH);
  });

  it("words both magic failures as W3P did ('Invalid magic bytes'), whatever the code", () => {
    const { sink } = collector();
    assert.throws(
      () => decoder(sink).push(Buffer.from("GET /")),
      /^TunnelError: Invalid magic bytes/,
    );
    assert.throws(
      () => decoder(sink).push(hex("160301")),
      /Invalid magic bytes: the peer speaks TLS/,
    );
  });

  it("rejects an oversized frame on its length prefix, before the body arrives", () => {
    const { sink } = collector();
    const d = decoder(sink, 1000);
    d.push(CLIENT_HANDSHAKE);
    expectCode(() => d.push(hex("ffffffff")), ErrorCodes.FRAME_TOO_LARGE);
  });

  it("rejects an oversized handshake on its length prefix", () => {
    const { sink } = collector();
    const d = decoder(sink);
    expectCode(() => d.push(hex("57335054554e4c 00100001")), ErrorCodes.HANDSHAKE_TOO_LARGE);
  });

  it("rejects a body shorter than the tunnel header", () => {
    const { sink } = collector();
    const d = decoder(sink);
    d.push(CLIENT_HANDSHAKE);
    expectCode(() => d.push(hex("00000004 00000001")), ErrorCodes.MALFORMED_FRAME);
  });

  it("rejects frame types that were not negotiated", () => {
    const { sink } = collector();
    const d = decoder(sink);
    d.push(CLIENT_HANDSHAKE);
    expectCode(
      () => d.push(encodeFrame(0, FrameType.PING, Buffer.alloc(8))),
      ErrorCodes.UNKNOWN_FRAME_TYPE,
    );
  });

  it("accepts extension types once negotiated, checking their payload size", () => {
    const { sink, events } = collector();
    const d = decoder(sink);
    d.setExtensions(ALL_EXTENSIONS);
    d.push(CLIENT_HANDSHAKE);
    d.push(encodeFrame(3, FrameType.WINDOW, hex("00010000")));
    assert.deepEqual(events.at(-1), {
      kind: "frame",
      streamId: 3,
      type: FrameType.WINDOW,
      payload: "00010000",
    });
    expectCode(
      () => d.push(encodeFrame(3, FrameType.WINDOW, hex("0001"))),
      ErrorCodes.MALFORMED_FRAME,
    );
  });

  it("queues input while paused, but only up to the handshake limit", () => {
    const { sink, events } = collector();
    const d = new FrameDecoder(
      {
        ...sink,
        onHandshake: (body) => {
          sink.onHandshake(body);
          d.pause();
        },
      },
      { maxHandshakeBytes: 64, maxFrameBytes: 1024 },
    );
    d.push(Buffer.concat([CLIENT_HANDSHAKE, CLOSE_FRAME]));
    assert.equal(events.length, 2);
    d.resume();
    assert.equal(events.length, 3);
    d.pause();
    expectCode(() => d.push(Buffer.alloc(65)), ErrorCodes.UNEXPECTED_FRAME);
  });
});
