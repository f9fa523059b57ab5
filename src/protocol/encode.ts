import {
  FRAME_HEADER_BYTES,
  LENGTH_PREFIX_BYTES,
  MAGIC,
  MAGIC_LENGTH,
  TUNNEL_HEADER_BYTES,
} from "./constants.js";

/** `MAGIC + u32 length + UTF-8 JSON`: the first message in each direction. */
export function encodeHandshake(message: object): Buffer {
  const json = Buffer.from(JSON.stringify(message), "utf8");
  const out = Buffer.allocUnsafe(MAGIC_LENGTH + LENGTH_PREFIX_BYTES + json.length);
  MAGIC.copy(out, 0);
  out.writeUInt32BE(json.length, MAGIC_LENGTH);
  json.copy(out, MAGIC_LENGTH + LENGTH_PREFIX_BYTES);
  return out;
}

/**
 * The 9 bytes before a payload: length, stream id, type. The payload is written separately so a
 * large chunk goes to the socket without being copied.
 */
export function encodeFrameHeader(streamId: number, type: number, payloadLength: number): Buffer {
  const header = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  writeFrameHeader(header, 0, streamId, type, payloadLength);
  return header;
}

function writeFrameHeader(
  target: Buffer,
  offset: number,
  streamId: number,
  type: number,
  payloadLength: number,
): void {
  target.writeUInt32BE(TUNNEL_HEADER_BYTES + payloadLength, offset);
  target.writeUInt32BE(streamId >>> 0, offset + 4);
  target[offset + 8] = type;
}

/** Header and payload in one buffer: for control frames and small data, where one write is cheaper. */
export function encodeFrame(streamId: number, type: number, payload?: Uint8Array): Buffer {
  const payloadLength = payload ? payload.length : 0;
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payloadLength);
  writeFrameHeader(out, 0, streamId, type, payloadLength);
  if (payload && payloadLength > 0) out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

/** WINDOW payload: the credit increment as u32. */
export function encodeU32(value: number): Buffer {
  const out = Buffer.allocUnsafe(4);
  out.writeUInt32BE(value >>> 0, 0);
  return out;
}
