/**
 * The extension vectors of PROTOCOL.md that tests/protocol/protocol-doc.test.ts does not cover:
 * OPEN for an IPv6 TLS visitor and the services handshake. Decoded with the independent raw
 * reader of tests/helpers/v1-peer.ts, then checked against our parsers and encoders.
 * (The PROXY header vectors are checked in proxy-protocol.test.ts by its own parser.)
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { encodeStreamMeta, parseStreamMeta } from "../../src/mux/stream-meta.js";
import { encodeFrame, encodeHandshake } from "../../src/protocol/encode.js";
import { parseClientHandshake, parseServerAck } from "../../src/protocol/handshake.js";
import {
  documentedVectors,
  type RawFrame,
  RawFrameReader,
  v1Handshake,
} from "../helpers/v1-peer.js";

const vectors = documentedVectors();

function rawDecode(
  bytes: Buffer,
  withHandshake: boolean,
): { handshake?: Buffer; frames: RawFrame[] } {
  const out: { handshake?: Buffer; frames: RawFrame[] } = { frames: [] };
  const reader = new RawFrameReader({
    handshake: (body) => {
      out.handshake = Buffer.from(body);
    },
    frame: (frame) => out.frames.push(frame),
    badInput: (reason) => assert.fail(reason),
  });
  if (!withHandshake) reader.push(v1Handshake({}));
  reader.push(bytes);
  return out;
}

test("ext-open-ipv6-tls: OPEN with IPv6 visitor, local address and server name", () => {
  const bytes = vectors.get("ext-open-ipv6-tls")!;
  assert.ok(bytes, "documented");
  const { frames } = rawDecode(bytes, false);
  assert.equal(frames.length, 1);
  const [open] = frames;
  assert.equal(open!.streamId, 2);
  assert.equal(open!.type, 0x04);
  const meta = parseStreamMeta(open!.payload);
  assert.deepEqual(meta, {
    service: "web",
    family: "IPv6",
    address: "2001:db8::7",
    port: 51234,
    publicPort: 443,
    localAddress: "2001:db8::1",
    servername: "example.com",
  });
  assert.deepEqual(
    encodeFrame(2, 0x04, encodeStreamMeta(JSON.parse(open!.payload.toString()))),
    bytes,
  );
});

test("ext-services-handshake / ext-services-ack: two services, one asking for a port", () => {
  const hello = rawDecode(vectors.get("ext-services-handshake")!, true).handshake!;
  const { credentials, offer } = parseClientHandshake(hello);
  assert.deepEqual(credentials, { id: "pi-1" });
  assert.deepEqual(offer!.services, [{ name: "web", port: 8080 }, { name: "ssh" }]);
  assert.equal(offer!.windowBytes, 262144);
  assert.deepEqual(
    encodeHandshake(JSON.parse(hello.toString())),
    vectors.get("ext-services-handshake"),
  );

  const ackBody = rawDecode(vectors.get("ext-services-ack")!, true).handshake!;
  const ack = parseServerAck(ackBody);
  assert.ok("port" in ack);
  assert.equal(ack.port, 8080, "port is the first service's, as a v1 client expects");
  assert.deepEqual(ack.services, [
    { name: "web", port: 8080 },
    { name: "ssh", port: 41200 },
  ]);
  assert.deepEqual(
    encodeHandshake(JSON.parse(ackBody.toString())),
    vectors.get("ext-services-ack"),
  );
});
