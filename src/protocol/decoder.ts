import { ErrorCodes, TunnelError } from "../errors.js";
import {
  type ExtensionName,
  FRAME_TABLE,
  FrameType,
  LENGTH_PREFIX_BYTES,
  MAGIC,
  MAGIC_LENGTH,
  TUNNEL_HEADER_BYTES,
} from "./constants.js";

/** Where decoded messages go. The decoder calls these synchronously from `push()`. */
export interface FrameSink {
  /** The magic matched: the peer speaks W3P. */
  onMagic(): void;
  /** The first frame of the connection (after the magic): the JSON handshake body. */
  onHandshake(body: Buffer): void;
  /** Every later frame. `payload` may be a view into a received chunk: copy it to keep it. */
  onFrame(streamId: number, type: number, payload: Buffer): void;
  /**
   * Optional: DATA payloads as they arrive, one view per received chunk, instead of whole frames
   * through `onFrame`. A frame that spans chunks is then never copied; `last` marks its end (an
   * empty frame comes as one empty part).
   */
  onDataPart?(streamId: number, part: Buffer, last: boolean): void;
  /**
   * Optional, with `onDataPart`: a DATA frame's header, with its whole payload length, before its
   * first part (so flow control can check the frame against the credit the peer had when it sent).
   */
  onDataHeader?(streamId: number, payloadLength: number): void;
}

export interface FrameDecoderOptions {
  /** Largest handshake body accepted; checked as soon as its length prefix arrives. */
  maxHandshakeBytes: number;
  /** Largest tunnel frame body (stream id + type + payload); checked on the length prefix. */
  maxFrameBytes: number;
}

enum State {
  Magic = 0,
  HandshakeLength = 1,
  HandshakeBody = 2,
  FrameLength = 3,
  FrameHeader = 4,
  FrameBody = 5,
  DataParts = 6,
  Failed = 7,
}

/** First bytes of a TLS record (handshake, alert): how a TLS/plain mismatch shows itself. */
const TLS_RECORD_HANDSHAKE = 0x16;
const TLS_RECORD_ALERT = 0x15;

/** Chunks below this size are copied into a slab rather than queued one Buffer each. */
const COALESCE_BELOW = 512;
const SLAB_BYTES = 16 * 1024;

/** The first 4 magic bytes read as a frame length prefix (a repeated handshake). */
const MAGIC_AS_LENGTH = MAGIC.readUInt32BE(0);

/** Sentinel in the payload-size table for "type not allowed on this session". */
const NOT_ALLOWED = -2;
const EMPTY = Buffer.alloc(0);

/**
 * Incremental, pure decoder of the W3P byte stream: magic, handshake frame, then tunnel frames.
 *
 * Received chunks are queued, not concatenated: a frame that lies inside one chunk is handed out as
 * a view of it, and only a frame spanning chunks is copied, once, when it is complete, except DATA
 * payloads for a sink with `onDataPart`, which get a view per chunk and are never copied. Lengths
 * are checked when their 4-byte prefix arrives, so an announced 4 GiB frame allocates nothing.
 * Any violation throws a coded `TunnelError`, after which the decoder ignores further input.
 */
export class FrameDecoder {
  private readonly sink: FrameSink;
  private readonly maxHandshakeBytes: number;
  private readonly maxFrameBytes: number;
  private readonly payloadSizeByType = new Int32Array(256).fill(NOT_ALLOWED);

  private chunks: Buffer[] = [];
  /** Where small chunks are copied (see queueSmall); its own ArrayBuffer, offset 0. */
  private slab: Buffer = Buffer.alloc(0);
  private slabUsed = 0;
  /** Read offset into `chunks[0]`. */
  private head = 0;
  private buffered = 0;
  private state: State = State.Magic;
  private magicMatched = 0;
  private bodyLength = 0;
  /** Stream id and type of the frame being decoded (known once its header arrived). */
  private frameStreamId = 0;
  private frameType = 0;
  private paused = false;
  private decoding = false;

  constructor(sink: FrameSink, options: FrameDecoderOptions) {
    this.sink = sink;
    this.maxHandshakeBytes = options.maxHandshakeBytes;
    this.maxFrameBytes = options.maxFrameBytes;
    this.setExtensions([]);
  }

  /** Frame types allowed from now on: the v1 types plus those of the negotiated extensions. */
  setExtensions(extensions: Iterable<ExtensionName>): void {
    const enabled = new Set<ExtensionName | null>([null, ...extensions]);
    this.payloadSizeByType.fill(NOT_ALLOWED);
    for (const entry of FRAME_TABLE) {
      if (enabled.has(entry.extension)) this.payloadSizeByType[entry.type] = entry.payloadBytes;
    }
  }

  /** Bytes received but not yet decoded. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  get failed(): boolean {
    return this.state === State.Failed;
  }

  /**
   * Whether the input so far ends inside a tunnel frame: part of one received, not all of it.
   * Only known while decoding runs (a paused decoder may hold whole frames not yet decoded).
   */
  get endsMidFrame(): boolean {
    if (this.paused || this.state === State.Failed || this.state < State.FrameLength) return false;
    return this.state !== State.FrameLength || this.buffered > 0;
  }

  /**
   * Stops decoding after the current message (e.g. while an async auth check runs). Input is still
   * queued, but only up to `maxHandshakeBytes`: a peer that talks while it should wait is cut off.
   */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.decode();
  }

  push(chunk: Buffer): void {
    if (this.state === State.Failed || chunk.length === 0) return;
    // Into an empty queue a chunk goes as is (a frame inside it is handed out without a copy).
    if (chunk.length < COALESCE_BELOW && this.buffered > 0) this.queueSmall(chunk);
    else this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.paused) {
      if (this.buffered > this.maxHandshakeBytes) {
        this.fail(
          ErrorCodes.UNEXPECTED_FRAME,
          `peer sent ${this.buffered} bytes while the session was waiting`,
        );
      }
      return;
    }
    this.decode();
  }

  /**
   * Copies a small chunk that has to wait (an incomplete frame is queued) into a shared slab
   * instead of queueing it: a peer that trickles single bytes would otherwise cost a Buffer object
   * (hundreds of bytes of heap and RSS) per byte it sends, 1,000x the bytes announced.
   * Only the unused end of the slab is ever written, so views already handed out stay intact.
   */
  private queueSmall(chunk: Buffer): void {
    if (this.slab.length - this.slabUsed < chunk.length) {
      this.slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.slabUsed = 0;
    }
    const start = this.slabUsed;
    chunk.copy(this.slab, start);
    this.slabUsed += chunk.length;
    const last = this.chunks.length - 1;
    const tail = this.chunks[last];
    if (tail && tail.buffer === this.slab.buffer && tail.byteOffset + tail.length === start) {
      // Same start, longer view: `head` (an offset into chunks[0]) stays valid.
      this.chunks[last] = this.slab.subarray(tail.byteOffset, this.slabUsed);
    } else {
      this.chunks.push(this.slab.subarray(start, this.slabUsed));
    }
  }

  /**
   * The memory of `chunk`, pushed last, is about to be read into again (a reused read buffer): the
   * bytes of it still queued, the start of an incomplete frame, are copied out. Each byte is
   * copied once at most. Kept as a view instead, every small piece of a frame sent in pieces
   * would hold a whole read buffer of its own (64 KiB for 600 bytes).
   */
  releaseChunk(chunk: Buffer): void {
    const last = this.chunks.length - 1;
    const queued = this.chunks[last];
    if (queued === undefined || queued.buffer !== chunk.buffer) return;
    const kept = last === 0 ? queued.subarray(this.head) : queued;
    this.chunks.pop();
    if (last === 0) this.head = 0;
    if (kept.length <= SLAB_BYTES / 4) {
      this.queueSmall(kept);
    } else {
      const copy = Buffer.allocUnsafeSlow(kept.length);
      kept.copy(copy);
      this.chunks.push(copy);
    }
  }

  private decode(): void {
    // A sink callback may call resume() or push() re-entrantly; the outer loop does the work.
    if (this.decoding) return;
    this.decoding = true;
    try {
      while (!this.paused && this.step()) {}
    } finally {
      this.decoding = false;
    }
  }

  /** Decodes one unit; returns false when more input is needed. */
  private step(): boolean {
    switch (this.state) {
      case State.Magic:
        return this.matchMagic();
      case State.HandshakeLength: {
        if (this.buffered < LENGTH_PREFIX_BYTES) return false;
        const length = this.readU32();
        if (length > this.maxHandshakeBytes) {
          this.fail(
            ErrorCodes.HANDSHAKE_TOO_LARGE,
            `handshake of ${length} bytes exceeds the limit of ${this.maxHandshakeBytes}`,
          );
        }
        this.bodyLength = length;
        this.state = State.HandshakeBody;
        return true;
      }
      case State.HandshakeBody: {
        if (this.buffered < this.bodyLength) return false;
        const body = this.take(this.bodyLength);
        this.state = State.FrameLength;
        this.sink.onHandshake(body);
        return true;
      }
      case State.FrameLength: {
        if (this.buffered < LENGTH_PREFIX_BYTES) return false;
        const length = this.readU32();
        if (length > this.maxFrameBytes) {
          // "W3PT" read as a length: the peer sent a second handshake. Say so, not "too large".
          if (length === MAGIC_AS_LENGTH) {
            this.fail(ErrorCodes.UNEXPECTED_FRAME, "a second handshake after the first one");
          }
          this.fail(
            ErrorCodes.FRAME_TOO_LARGE,
            `frame of ${length} bytes exceeds the limit of ${this.maxFrameBytes}`,
          );
        }
        if (length < TUNNEL_HEADER_BYTES) {
          this.fail(
            ErrorCodes.MALFORMED_FRAME,
            `frame body of ${length} bytes is shorter than the ${TUNNEL_HEADER_BYTES}-byte header`,
          );
        }
        this.bodyLength = length;
        this.state = State.FrameHeader;
        return true;
      }
      case State.FrameHeader: {
        if (this.buffered < TUNNEL_HEADER_BYTES) return false;
        const streamId = this.readU32();
        const type = this.readU8();
        const payloadLength = this.bodyLength - TUNNEL_HEADER_BYTES;
        const payloadBytes = this.payloadSizeByType[type]!;
        if (payloadBytes === NOT_ALLOWED) {
          this.fail(
            ErrorCodes.UNKNOWN_FRAME_TYPE,
            `frame type 0x${type.toString(16)} is unknown or not negotiated`,
          );
        }
        if (payloadBytes >= 0 && payloadLength !== payloadBytes) {
          this.fail(
            ErrorCodes.MALFORMED_FRAME,
            `frame type 0x${type.toString(16)} needs a ${payloadBytes}-byte payload, got ${payloadLength}`,
          );
        }
        this.frameStreamId = streamId;
        this.frameType = type;
        this.bodyLength = payloadLength;
        if (type === FrameType.DATA && this.sink.onDataPart) {
          this.sink.onDataHeader?.(streamId, payloadLength);
          if (payloadLength === 0) {
            this.state = State.FrameLength;
            this.sink.onDataPart(streamId, EMPTY, true);
          } else {
            this.state = State.DataParts;
          }
        } else {
          this.state = State.FrameBody;
        }
        return true;
      }
      case State.FrameBody: {
        if (this.buffered < this.bodyLength) return false;
        const payload = this.take(this.bodyLength);
        this.state = State.FrameLength;
        this.sink.onFrame(this.frameStreamId, this.frameType, payload);
        return true;
      }
      case State.DataParts: {
        if (this.buffered === 0) return false;
        const first = this.chunks[0]!;
        const length = Math.min(first.length - this.head, this.bodyLength);
        const part = first.subarray(this.head, this.head + length);
        this.advance(length);
        this.bodyLength -= length;
        const last = this.bodyLength === 0;
        if (last) this.state = State.FrameLength;
        this.sink.onDataPart!(this.frameStreamId, part, last);
        return true;
      }
      default:
        return false;
    }
  }

  /** Compares byte by byte as input arrives, so garbage is rejected at its first wrong byte. */
  private matchMagic(): boolean {
    while (this.magicMatched < MAGIC_LENGTH) {
      if (this.buffered === 0) return false;
      const byte = this.take(1)[0]!;
      if (byte !== MAGIC[this.magicMatched]) {
        if (
          this.magicMatched === 0 &&
          (byte === TLS_RECORD_HANDSHAKE || byte === TLS_RECORD_ALERT)
        ) {
          // "Invalid magic bytes" first, as W3P worded it (code that matched on it keeps working).
          this.fail(
            ErrorCodes.TLS_MISMATCH,
            "Invalid magic bytes: the peer speaks TLS where plain TCP was expected",
          );
        }
        this.fail(
          ErrorCodes.BAD_MAGIC,
          `Invalid magic bytes: byte ${this.magicMatched} is 0x${byte.toString(16).padStart(2, "0")}, not the W3PTUNL magic`,
        );
      }
      this.magicMatched++;
    }
    this.state = State.HandshakeLength;
    this.sink.onMagic();
    return true;
  }

  private readU32(): number {
    const first = this.chunks[0]!;
    if (first.length - this.head >= 4) {
      const value = first.readUInt32BE(this.head);
      this.advance(4);
      return value;
    }
    return this.take(4).readUInt32BE(0);
  }

  private readU8(): number {
    const value = this.chunks[0]![this.head]!;
    this.advance(1);
    return value;
  }

  /** Returns the next `n` bytes: a view when they lie in one chunk, else one copy. */
  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (n === 0 || first === undefined) return Buffer.alloc(0);
    if (first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n);
      this.advance(n);
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    let written = 0;
    while (written < n) {
      const chunk = this.chunks[0]!;
      const available = Math.min(chunk.length - this.head, n - written);
      chunk.copy(out, written, this.head, this.head + available);
      written += available;
      this.advance(available);
    }
    return out;
  }

  private advance(n: number): void {
    this.head += n;
    this.buffered -= n;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }

  private fail(code: (typeof ErrorCodes)[keyof typeof ErrorCodes], message: string): never {
    this.state = State.Failed;
    this.chunks = [];
    this.slab = Buffer.alloc(0);
    this.buffered = 0;
    throw new TunnelError(code, message);
  }
}
