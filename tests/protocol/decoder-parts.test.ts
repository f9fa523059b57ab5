import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FrameType } from "../../src/protocol/constants.js";
import { FrameDecoder, type FrameSink } from "../../src/protocol/decoder.js";
import { encodeFrame, encodeHandshake } from "../../src/protocol/encode.js";

// A sink with onDataPart gets DATA payloads per received chunk (never copied); the frames it
// reassembles from the parts must be exactly those a whole-frame sink sees.
const HANDSHAKE = encodeHandshake({ id: "parts" });
const BIG = Buffer.from(Array.from({ length: 300 }, (_, i) => i & 0xff));
const STREAM = Buffer.concat([
  HANDSHAKE,
  encodeFrame(1, FrameType.DATA, BIG),
  encodeFrame(2, FrameType.DATA),
  encodeFrame(1, FrameType.CLOSE),
  encodeFrame(3, FrameType.DATA, Buffer.from("tail")),
]);
const EXPECTED = [
  { kind: "data", streamId: 1, payload: BIG.toString("hex") },
  { kind: "data", streamId: 2, payload: "" },
  { kind: "frame", streamId: 1, type: FrameType.CLOSE, payload: "" },
  { kind: "data", streamId: 3, payload: Buffer.from("tail").toString("hex") },
];

function partsCollector() {
  const events: Array<Record<string, unknown>> = [];
  const parts: Buffer[] = [];
  const sink: FrameSink = {
    onMagic() {},
    onHandshake() {},
    onFrame: (streamId, type, payload) =>
      events.push({ kind: "frame", streamId, type, payload: payload.toString("hex") }),
    onDataPart: (streamId, part, last) => {
      parts.push(part);
      if (!last) return;
      events.push({ kind: "data", streamId, payload: Buffer.concat(parts).toString("hex") });
      parts.length = 0;
    },
  };
  return { sink, events, parts };
}

const options = { maxHandshakeBytes: 1024, maxFrameBytes: 4096 };

describe("FrameDecoder with onDataPart", () => {
  it("reassembles the same frames whatever the chunking", () => {
    for (let cut = 1; cut < STREAM.length; cut += 7) {
      for (const step of [1, 13, 64, 1000]) {
        const { sink, events } = partsCollector();
        const d = new FrameDecoder(sink, options);
        d.push(STREAM.subarray(0, cut));
        for (let at = cut; at < STREAM.length; at += step) d.push(STREAM.subarray(at, at + step));
        assert.deepEqual(events, EXPECTED, `cut ${cut}, step ${step}`);
        assert.equal(d.bufferedBytes, 0);
      }
    }
  });

  it("hands a payload split across chunks out as views of those chunks", () => {
    const { sink, parts } = partsCollector();
    const d = new FrameDecoder(sink, options);
    const frame = encodeFrame(1, FrameType.DATA, BIG);
    d.push(HANDSHAKE);
    // Buffer.alloc is never pooled: each chunk has its own memory.
    const first = Buffer.alloc(100);
    const second = Buffer.alloc(100);
    frame.copy(first, 0, 0, 100);
    frame.copy(second, 0, 100, 200);
    d.push(first);
    d.push(second);
    assert.equal(parts.length, 2);
    assert.equal(parts[0]!.buffer, first.buffer);
    assert.equal(parts[1]!.buffer, second.buffer);
    assert.deepEqual(Buffer.concat(parts), BIG.subarray(0, 191));
  });
});

describe("FrameDecoder.releaseChunk (chunks read into a buffer that is read into again)", () => {
  // Control frames up to 20 KiB, DATA around them: pieces of a frame left queued at a chunk's end
  // are copied out before the buffer is overwritten, in small pieces (slab) and large (own copy).
  const LARGE = Buffer.from(Array.from({ length: 20_000 }, (_, i) => (i * 7) & 0xff));
  const MIXED = Buffer.concat([
    HANDSHAKE,
    encodeFrame(5, FrameType.CLOSE, LARGE),
    encodeFrame(1, FrameType.DATA, BIG),
    encodeFrame(6, FrameType.ERROR, LARGE.subarray(0, 700)),
    encodeFrame(3, FrameType.DATA, Buffer.from("tail")),
  ]);
  const MIXED_EXPECTED = [
    { kind: "frame", streamId: 5, type: FrameType.CLOSE, payload: LARGE.toString("hex") },
    { kind: "data", streamId: 1, payload: BIG.toString("hex") },
    {
      kind: "frame",
      streamId: 6,
      type: FrameType.ERROR,
      payload: LARGE.subarray(0, 700).toString("hex"),
    },
    { kind: "data", streamId: 3, payload: Buffer.from("tail").toString("hex") },
  ];

  it("decodes the same frames when every chunk's memory is overwritten after its push", () => {
    for (const step of [1, 9, 600, 5000, 30_000]) {
      const { sink, events, parts } = partsCollector();
      // Parts handed out are views of the read buffer, valid during the push: copy them, as a
      // socket write that completes at once would have consumed them.
      const copyingSink: FrameSink = {
        ...sink,
        onDataPart: (streamId, part, last) => sink.onDataPart!(streamId, Buffer.from(part), last),
      };
      const d = new FrameDecoder(copyingSink, {
        maxHandshakeBytes: 1024,
        maxFrameBytes: 64 * 1024,
      });
      const readBuffer = Buffer.allocUnsafeSlow(64 * 1024);
      for (let at = 0; at < MIXED.length; at += step) {
        const n = MIXED.copy(readBuffer, 0, at, Math.min(at + step, MIXED.length));
        const chunk = readBuffer.subarray(0, n);
        d.push(chunk);
        d.releaseChunk(chunk);
        readBuffer.fill(0xee);
      }
      assert.deepEqual(events, MIXED_EXPECTED, `step ${step}`);
      assert.equal(parts.length, 0);
      assert.equal(d.bufferedBytes, 0);
    }
  });
});

describe("FrameDecoder.endsMidFrame", () => {
  it("is true only while part of a tunnel frame has been received", () => {
    const { sink } = partsCollector();
    const d = new FrameDecoder(sink, options);
    const frame = encodeFrame(1, FrameType.DATA, BIG);
    d.push(HANDSHAKE.subarray(0, 5));
    assert.equal(d.endsMidFrame, false, "inside the handshake: that is the handshake's to say");
    d.push(HANDSHAKE.subarray(5));
    assert.equal(d.endsMidFrame, false, "at a frame boundary");
    for (const cut of [1, 4, 8, 9, 100, frame.length - 1]) {
      d.push(frame.subarray(0, cut));
      assert.equal(d.endsMidFrame, true, `${cut} bytes of a frame`);
      d.push(frame.subarray(cut));
      assert.equal(d.endsMidFrame, false, `the rest after ${cut}`);
    }
  });
});
