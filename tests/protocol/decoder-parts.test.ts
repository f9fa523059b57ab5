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
