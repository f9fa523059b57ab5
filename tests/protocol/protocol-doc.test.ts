import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { ALL_EXTENSIONS } from "../../src/protocol/constants.js";
import { FrameDecoder } from "../../src/protocol/decoder.js";
import { encodeHandshake } from "../../src/protocol/encode.js";
import { parseClientHandshake, parseServerAck } from "../../src/protocol/handshake.js";

const doc = readFileSync(fileURLToPath(new URL("../../PROTOCOL.md", import.meta.url)), "utf8");

/** Every "- `name` ...: `hex`" bullet of PROTOCOL.md, by name. */
function vectors(): Map<string, Buffer> {
  const found = new Map<string, Buffer>();
  const bullet = /^- `([a-z0-9-]+)`[^\n]*?(?:\n\s+)?`([0-9a-f ]+)`\s*$/gm;
  for (const match of doc.matchAll(bullet)) {
    found.set(match[1]!, Buffer.from(match[2]!.replace(/ /g, ""), "hex"));
  }
  return found;
}

function decodeAll(bytes: Buffer, withHandshake: boolean) {
  const frames: Array<{ streamId: number; type: number; payload: Buffer }> = [];
  const handshakes: Buffer[] = [];
  const decoder = new FrameDecoder(
    {
      onMagic() {},
      onHandshake: (body) => handshakes.push(body),
      onFrame: (streamId, type, payload) => frames.push({ streamId, type, payload }),
    },
    { maxHandshakeBytes: 65536, maxFrameBytes: 65536 },
  );
  decoder.setExtensions(ALL_EXTENSIONS);
  if (!withHandshake) decoder.push(encodeHandshake({}));
  decoder.push(bytes);
  return { frames, handshakes };
}

describe("PROTOCOL.md vectors", () => {
  const all = vectors();

  it("lists every documented vector", () => {
    for (const name of [
      "v1-client-handshake",
      "v1-server-ack",
      "v1-data",
      "v1-close",
      "v1-error",
      "ext-client-handshake",
      "ext-server-ack",
      "ext-open",
      "ext-window",
      "ext-fin",
      "ext-ping",
      "ext-pong",
      "ext-goaway",
      "ext-refusal",
    ]) {
      assert.ok(all.has(name), `PROTOCOL.md has no vector named ${name}`);
    }
  });

  it("handshake vectors round-trip through the encoder and parsers", () => {
    for (const name of [
      "v1-client-handshake",
      "ext-client-handshake",
      "v1-server-ack",
      "ext-server-ack",
      "ext-refusal",
    ]) {
      const bytes = all.get(name)!;
      const { handshakes } = decodeAll(bytes, true);
      assert.equal(handshakes.length, 1, name);
      const json = JSON.parse(handshakes[0]!.toString("utf8"));
      assert.deepEqual(encodeHandshake(json), bytes, name);
    }
    const client = parseClientHandshake(
      decodeAll(all.get("ext-client-handshake")!, true).handshakes[0]!,
    );
    assert.deepEqual(client.credentials, { id: "pi-1" });
    assert.deepEqual([...client.offer!.extensions], [...ALL_EXTENSIONS]);
    const ack = parseServerAck(decodeAll(all.get("ext-server-ack")!, true).handshakes[0]!);
    assert.ok("port" in ack && ack.port === 41199 && ack.services[0]!.port === 41199);
    const refusal = parseServerAck(decodeAll(all.get("ext-refusal")!, true).handshakes[0]!);
    assert.ok("refusal" in refusal && refusal.refusal.code === "W3P_ERR_AUTH_REJECTED");
  });

  it("frame vectors decode to the documented stream, type and payload", () => {
    const expect: Record<string, [number, number, number]> = {
      "v1-data": [0x0a0b0c0d, 0x01, 16],
      "v1-close": [7, 0x02, 0],
      "v1-error": [7, 0x03, 0],
      "ext-open": [1, 0x04, 93],
      "ext-window": [1, 0x05, 4],
      "ext-fin": [1, 0x06, 0],
      "ext-ping": [0, 0x07, 8],
      "ext-pong": [0, 0x08, 8],
      "ext-goaway": [0, 0x09, 60],
    };
    for (const [name, [streamId, type, length]] of Object.entries(expect)) {
      const { frames } = decodeAll(all.get(name)!, false);
      assert.equal(frames.length, 1, name);
      assert.equal(frames[0]!.streamId, streamId, name);
      assert.equal(frames[0]!.type, type, name);
      assert.equal(frames[0]!.payload.length, length, name);
    }
    const open = decodeAll(all.get("ext-open")!, false).frames[0]!;
    assert.equal(JSON.parse(open.payload.toString()).address, "203.0.113.7");
    assert.equal(
      decodeAll(all.get("ext-window")!, false).frames[0]!.payload.readUInt32BE(0),
      65536,
    );
  });
});
