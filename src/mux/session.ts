import type { Socket } from "node:net";
import { debug } from "../debug.js";
import { ErrorCodes, TunnelError, toTunnelError } from "../errors.js";
import { isTlsSocket } from "../lazy-builtins.js";
import { Extension, type ExtensionName, FrameType } from "../protocol/constants.js";
import { FrameDecoder, type FrameSink } from "../protocol/decoder.js";
import { encodeFrame, encodeFrameHeader } from "../protocol/encode.js";
import type { RefusalReason } from "../protocol/handshake.js";
import { controlJsonProblem, MAX_CONTROL_JSON_BYTES } from "../protocol/json-limits.js";
import { resumeReading, stopReading } from "./read-gate.js";
import { RecentlyClosedStreams } from "./recently-closed.js";
import {
  BUSY_READ_BYTES,
  CONTROL_READ_BUFFERS,
  REUSABLE_READ_BYTES,
  readIntoReusableBuffer,
} from "./reusable-reads.js";
import type { SessionConfig } from "./session-config.js";
import { parseStreamMeta, type StreamMeta } from "./stream-meta.js";
import type { TunnelStream } from "./tunnel-stream.js";
import { WriteProgress } from "./write-progress.js";

export type SessionState = "handshake" | "open" | "closed";

/** What the owner (server-side ClientTunnel or the client) decides for the session. */
export interface SessionHandler {
  /** The magic matched. */
  onMagic(): void;
  /** The peer's handshake (server) or acknowledgement (client) arrived. */
  onHandshake(body: Buffer): void;
  /**
   * The peer opened a stream: an OPEN frame (`meta` set) or, without OPEN, the first data frame
   * for an unknown id (`meta` null; the session delivers that frame to the new stream itself).
   * Only the client side receives these.
   */
  onOpenRequest(streamId: number, meta: StreamMeta | null): void;
  /** The peer announced it is going away (GOAWAY). */
  onGoAway(reason: RefusalReason): void;
  /** A heartbeat round trip completed. */
  onRtt(ms: number): void;
  /** The session ended: `err` is null for an orderly close by either side. */
  onClose(err: TunnelError | null): void;
}

/** Payloads up to this size are copied next to their header: one small write beats two. */
export const COPY_PAYLOAD_BELOW = 1024;
const NO_PAYLOAD = Buffer.alloc(0);
/** A TLS batch (see `batchesReceives`) is written out once it holds this much. */
const MAX_BATCH_BYTES = 256 * 1024;

/**
 * One control connection: its socket, decoder, negotiated extensions, streams, heartbeat and the
 * single writer every frame goes through. It knows nothing of ports or auth; the server's
 * ClientTunnel and the TunnelClient drive it through `SessionHandler`.
 */
export class Session implements FrameSink {
  readonly socket: Socket;
  readonly config: SessionConfig;
  readonly isServer: boolean;
  readonly streams = new Map<number, TunnelStream>();
  /**
   * Streams the peer closed whose id it opened again while their local socket still drained (up
   * to `closeGraceMs`): out of `streams` so the id is the new stream's, still aborted with the
   * session.
   */
  private readonly retired = new Set<TunnelStream>();
  state: SessionState = "handshake";
  extensions: ReadonlySet<ExtensionName> = new Set();
  /** Initial credit the peer grants each stream (flow extension). */
  peerWindowBytes = 0;
  rttMs: number | null = null;
  bytesIn = 0;
  bytesOut = 0;
  /** Frames for streams that were unknown or already closed: a normal race, counted. */
  droppedFrames = 0;
  /** Length of the DATA frame being received, and whether its first part is still to come. */
  private dataFrameLength = 0;
  private dataFrameStarting = false;
  /** Sum of the receive windows of all open streams (bounded by `sessionWindowBytes`). */
  windowTotal = 0;

  private readonly handler: SessionHandler;
  private readonly decoder: FrameDecoder;
  /** Streams paused because the control socket is full; resumed on its 'drain'. */
  private readonly blockedStreams = new Set<TunnelStream>();
  /** v1 only: streams whose reader is too slow; the control socket stays paused while any exist. */
  private readonly inboundHolds = new Set<TunnelStream>();
  /** Bytes waiting for the local sockets of all streams (see `localBufferedChanged`). */
  private localBuffered = 0;
  private localHeld = false;
  /**
   * The peer has granted a stream credit while it still had plenty (as ours does, at half a
   * window): streams may then stop reading when credit runs low, trusting more to come.
   */
  peerGrantsAhead = false;
  /**
   * Bytes queued on the control socket at which sources pause: the configured limit, but never
   * below the socket's own highWaterMark. Under it a write returns true and sets no 'drain', so
   * streams paused by a queue between the two would wait for a 'drain' that never comes.
   */
  private readonly writeLimit: number;
  /** Ours unread by the peer: no pongs past it, no visitors (server), no reading (client). */
  private readonly backlogLimit: number;
  /**
   * Bytes of control frames (not data) written since the control socket's queue was last empty.
   * A busy tunnel's queue is data and empties again and again (sources resume only on 'drain');
   * frames piling up without it ever emptying are answers the peer does not read.
   */
  private controlSinceEmpty = 0;
  /** The peer is not read until the control socket drains (see `openRequested`). */
  private backlogHeld = false;
  /** Whether this session stopped the control socket's reads (v1 holds or the backlog). */
  private readsHeld = false;
  /** Streams whose sockets are corked while one received chunk is decoded. */
  private readonly receiving = new Set<TunnelStream>();
  /**
   * TLS hands over one record (16 KiB at most) per 'data' event, dozens in a row within one turn
   * of the event loop (measured: about 80 per turn in a bulk transfer). Written out one by one,
   * each would be a system call of its own; their parts are written together at the end of the
   * turn instead. Plain TCP hands over one 64 KiB read per event: its parts go out at once.
   */
  private readonly batchesReceives: boolean;
  private uncorkImmediate: NodeJS.Immediate | null = null;
  private batchedBytes = 0;
  /** v1 client: streams we closed, whose late DATA frames must not open them again. */
  private readonly closedByUs: RecentlyClosedStreams;
  /** Whether the control socket's writes move (writeStallTimeoutMs). */
  private readonly writeProgress = new WriteProgress();
  private resumeScheduled = false;
  private corked = false;
  /** The control socket reads into a buffer it keeps (see reusable-reads.ts). */
  private reusingReads = false;
  /** While a reused chunk is decoded: tracks the writes of its parts (see reusable-reads.ts). */
  private holdChunk: (() => () => void) | undefined = undefined;
  private lastReceivedAt = Date.now();
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private nextStreamId = 1;
  private closeError: TunnelError | null = null;
  private finished = false;

  constructor(socket: Socket, config: SessionConfig, handler: SessionHandler, isServer: boolean) {
    this.socket = socket;
    this.config = config;
    this.handler = handler;
    this.isServer = isServer;
    this.decoder = new FrameDecoder(this, config);
    this.closedByUs = new RecentlyClosedStreams(config.closeGraceMs);
    this.writeLimit = Math.max(config.controlWriteBufferBytes, socket.writableHighWaterMark);
    // Well above the data pause point, so a busy link still answers its pings.
    this.backlogLimit = 4 * this.writeLimit + REUSABLE_READ_BYTES;
    this.batchesReceives = isTlsSocket(socket);
    socket.on("data", this.onSocketData);
    socket.on("drain", this.onSocketDrain);
    socket.on("end", this.onSocketEnd);
    socket.on("error", this.onSocketError);
    socket.on("close", this.onSocketClose);
  }

  has(extension: ExtensionName): boolean {
    return this.extensions.has(extension);
  }

  /**
   * The handshake is done: the agreed extensions are on, the heartbeat starts, frames flow.
   * `holdDecoding` leaves what the peer sent behind its handshake undecoded until
   * `releaseDecoding()`, so the owner can announce the session first (a bad frame there closes
   * it, which listeners must then know of) while a close from those listeners is already a close
   * of an open session (GOAWAY and all).
   */
  open(
    extensions: ReadonlySet<ExtensionName>,
    peerWindowBytes: number,
    holdDecoding = false,
  ): void {
    if (this.state !== "handshake") return;
    this.state = "open";
    this.extensions = extensions;
    this.peerWindowBytes = peerWindowBytes;
    this.decoder.setExtensions(extensions);
    this.lastReceivedAt = Date.now();
    const tick = this.heartbeatTickMs();
    if (tick > 0) {
      this.heartbeatTimer = setInterval(this.onHeartbeat, tick);
      this.heartbeatTimer.unref();
    }
    if (!holdDecoding) this.resumeDecoding();
  }

  /** Decodes what `open(..., true)` held back, unless the session closed meanwhile. */
  releaseDecoding(): void {
    if (this.state === "open") this.resumeDecoding();
  }

  /** Decodes what waited behind the handshake; a bad frame there closes the session, as live. */
  private resumeDecoding(): void {
    try {
      this.decoder.resume();
    } catch (err) {
      this.close(toTunnelError(err, ErrorCodes.MALFORMED_FRAME, "decoding failed"));
    }
    this.uncorkReceiving();
  }

  /** Holds decoding after the handshake while the owner decides (async auth). */
  pauseDecoding(): void {
    this.decoder.pause();
  }

  /** Raw bytes before the session is open (handshake, ack). */
  writeRaw(bytes: Buffer): void {
    if (this.state === "closed") return;
    this.bytesOut += bytes.length;
    this.socket.write(bytes);
  }

  /** Streams with a local socket: those open plus those retired while they drain. */
  get streamCount(): number {
    return this.streams.size + this.retired.size;
  }

  /** The streams `streamCount` counts. */
  *streamsWithSockets(): IterableIterator<TunnelStream> {
    yield* this.streams.values();
    yield* this.retired;
  }

  /** A unique id for a new stream (server side): increasing, wrapping, never 0, never in use. */
  allocateStreamId(): number {
    for (;;) {
      const id = this.nextStreamId;
      this.nextStreamId = id >= 0xffffffff ? 1 : id + 1;
      if (!this.streams.has(id)) return id;
    }
  }

  attach(stream: TunnelStream): void {
    this.streams.set(stream.id, stream);
    // A stream opened while the control socket is full waits its turn like the others; reading
    // at once would queue one more chunk per new stream past the limit.
    if (this.blockedStreams.size > 0) this.block(stream);
  }

  detach(stream: TunnelStream): void {
    if (this.streams.get(stream.id) === stream) this.streams.delete(stream.id);
    this.retired.delete(stream);
    this.blockedStreams.delete(stream);
    this.windowTotal -= stream.receiveWindow;
    this.releaseInbound(stream);
  }

  /** Grows the session's window total by `bytes` if the cap allows it. */
  reserveWindow(bytes: number): boolean {
    if (this.windowTotal + bytes > this.config.sessionWindowBytes) return false;
    this.windowTotal += bytes;
    return true;
  }

  /**
   * Writes a data frame; returns false when the control socket is full and the caller must pause
   * its source until `resumeBlocked` runs. A frame without `onWritten` goes out with the rest of
   * this tick's frames. One with `onWritten` (its payload lives in a buffer the caller wants to
   * read into again) goes out at once, with what this tick corked before it; `onWritten` runs
   * once it has left the process (or the socket failed), and only if the session is not closed.
   * `writesQueued` then tells whether the kernel took all of it.
   */
  writeData(streamId: number, payload: Buffer, onWritten?: () => void): boolean {
    if (this.state === "closed") return false;
    // Header and payload in one writev: under the session's cork, or for a tracked frame outside
    // it a cork of their own, lifted right below (the session's would schedule a tick callback
    // per chunk).
    const ownCork = onWritten !== undefined && !this.corked;
    if (ownCork) this.socket.cork();
    else this.cork();
    if (payload.length < COPY_PAYLOAD_BELOW) {
      this.socket.write(encodeFrame(streamId, FrameType.DATA, payload), onWritten);
    } else {
      this.socket.write(encodeFrameHeader(streamId, FrameType.DATA, payload.length));
      this.socket.write(payload, onWritten);
    }
    this.bytesOut += payload.length + 9;
    if (ownCork) this.socket.uncork();
    else if (onWritten) this.uncork(); // this tick's earlier frames go out with it
    if (this.checkWritable()) return true;
    this.blockAll();
    return false;
  }

  /** Bytes wait on the control socket: the kernel did not take everything written so far. */
  get writesQueued(): boolean {
    return this.socket.writableLength > 0;
  }

  /**
   * The control socket just filled up: pause every stream's source now, not one by one as each
   * next writes. Otherwise each of 1,000 busy streams reads and queues one more chunk here (and
   * then one more into its paused socket): twice 64 MiB. Resumed in batches on 'drain'.
   */
  private blockAll(): void {
    if (this.blockedStreams.size >= this.streams.size) return;
    for (const stream of this.streams.values()) {
      if (!this.blockedStreams.has(stream)) this.block(stream);
    }
  }

  /** Control frames (open, close, window, ping...) go out regardless of backpressure: they are tiny. */
  writeControl(streamId: number, type: number, payload: Buffer = NO_PAYLOAD): void {
    if (this.state === "closed") return;
    if ((type === FrameType.CLOSE || type === FrameType.ERROR) && this.opensByData) {
      this.closedByUs.add(streamId);
    }
    if (this.socket.writableLength === 0) this.controlSinceEmpty = 0;
    this.cork();
    this.socket.write(encodeFrame(streamId, type, payload));
    this.bytesOut += payload.length + 9;
    this.controlSinceEmpty += payload.length + 9;
  }

  /**
   * A control frame that goes out now, with what this tick corked before it, instead of at the
   * end of the tick. For FIN: it is sent from a socket's 'end', and Node closes that socket (a
   * system call) before the tick ends, on the way of every stream's last round trip.
   */
  writeControlNow(streamId: number, type: number): void {
    this.writeControl(streamId, type);
    this.uncork();
  }

  /**
   * At least `backlogLimit` of ours waits unread by the peer, and as many bytes of control frames
   * were written since its queue was last empty: it does not read its answers. The server opens
   * no streams then: each costs an OPEN and a CLOSE, so a client that stops reading while visitors
   * keep arriving would grow the server's queue without bound (a peer reading a byte now and then
   * is never taken for a stalled one). A queue that is large with data alone (credit for many
   * streams at once) does not count.
   */
  get backlogged(): boolean {
    return (
      this.controlSinceEmpty >= this.backlogLimit && this.socket.writableLength >= this.backlogLimit
    );
  }

  /** Whether `stream` waits for the control socket to drain. */
  isBlocked(stream: TunnelStream): boolean {
    return this.blockedStreams.has(stream);
  }

  /** Pauses `stream`'s source until the control socket drains. */
  block(stream: TunnelStream): void {
    this.blockedStreams.add(stream);
    stream.pauseSource("session");
  }

  /**
   * A stream's bytes waiting for its local socket changed by `delta`. Past
   * `maxSessionBufferBytes` for all streams together the control connection is not read until
   * they are down to half of it: per-stream limits (window, v1 brake) bound each stream, not a
   * peer opening thousands of them to readers that do not read.
   */
  localBufferedChanged(delta: number): void {
    this.localBuffered += delta;
    const limit = this.config.maxSessionBufferBytes;
    const hold = this.localBuffered > (this.localHeld ? limit / 2 : limit);
    if (hold === this.localHeld) return;
    this.localHeld = hold;
    if (hold) {
      debug(
        `session ${describeSession(this)}: ${this.localBuffered} bytes wait for local sockets, not reading the peer until half of them are written`,
      );
    }
    this.updateReading();
  }

  /** v1 brake: a stream's reader is too slow, so stop reading the whole control connection. */
  holdInbound(stream: TunnelStream): void {
    if (this.inboundHolds.has(stream)) return;
    this.inboundHolds.add(stream);
    this.updateReading();
  }

  releaseInbound(stream: TunnelStream): void {
    if (!this.inboundHolds.delete(stream)) return;
    this.updateReading();
  }

  /**
   * Client side: the server opened a stream. Each one costs answers (an ERROR when refused, the
   * stream's end when its service closes at once) and a local connection, so a server that keeps
   * opening streams and does not read grew the client's memory by tens of MiB a second. Once
   * `backlogged`, it is not read until our queue drains; one that never reads is cut off by the
   * write stall or heartbeat timeout. Only a client holds back this way (a server with extensions
   * always reads), so the two ends can never both wait for the other over it.
   */
  private openRequested(): void {
    if (this.backlogHeld || !this.backlogged) return;
    this.backlogHeld = true;
    debug(
      `session ${describeSession(this)}: ${this.socket.writableLength} bytes unread by the server, not reading it until they drain`,
    );
    this.updateReading();
  }

  /** Reads the control socket unless a v1 hold or our unread backlog says otherwise. */
  private updateReading(): void {
    const hold = this.inboundHolds.size > 0 || this.backlogHeld || this.localHeld;
    if (hold === this.readsHeld || this.state === "closed") return;
    this.readsHeld = hold;
    if (hold) stopReading(this.socket);
    else resumeReading(this.socket);
  }

  /**
   * Ends the session. With `goAway` (and the extension negotiated) the peer is told why first,
   * and queued frames are flushed before the socket closes; otherwise it is destroyed at once.
   */
  close(err: TunnelError | null, goAway?: RefusalReason): void {
    if (this.state === "closed") return;
    this.closeError = err;
    const wasOpen = this.state === "open";
    this.state = "closed";
    this.stopHeartbeat();
    if (this.uncorkImmediate) clearImmediate(this.uncorkImmediate);
    this.uncorkImmediate = null;
    // A TLS batch still corked is data the peer sent before it went: written out, not dropped.
    this.uncorkReceiving();
    for (const stream of [...this.streams.values(), ...this.retired]) stream.abort();
    this.streams.clear();
    this.retired.clear();
    this.blockedStreams.clear();
    this.inboundHolds.clear();
    if (goAway && wasOpen && this.has(Extension.GOAWAY)) {
      this.socket.write(encodeFrame(0, FrameType.GOAWAY, encodeGoAway(goAway)));
    }
    if (goAway && !this.socket.destroyed && !this.socket.connecting) {
      // Flush what is queued (GOAWAY, a refusal), then close; never wait longer than the grace.
      // A fixed deadline, not socket.setTimeout: that one is reset by every byte the peer sends,
      // so a peer trickling a byte a second could keep a closed session's socket (and what is
      // queued for it) forever, outside every client limit.
      const socket = this.socket;
      const deadline = setTimeout(() => socket.destroy(), this.config.closeGraceMs);
      socket.once("close", () => clearTimeout(deadline));
      socket.end(() => socket.destroy());
    } else {
      this.socket.destroy();
    }
    // The handler hears about it once the socket has actually closed (onSocketClose), so owners
    // can resolve stop() only when every handle is gone.
    if (this.socket.closed) this.finish();
  }

  // --- FrameSink: called by the decoder -------------------------------------------------------

  onMagic(): void {
    this.handler.onMagic();
  }

  onHandshake(body: Buffer): void {
    this.handler.onHandshake(body);
  }

  /** A DATA frame starts: its whole length counts against the stream's window at once. */
  onDataHeader(streamId: number, payloadLength: number): void {
    this.dataFrameLength = payloadLength;
    this.dataFrameStarting = true;
    if (this.state !== "open") return; // onDataPart reports it
    const stream = this.streams.get(streamId);
    (this.opensByData ? this.unlessReopened(stream) : stream)?.accountIncoming(payloadLength);
  }

  /** DATA payloads arrive in parts (one per received chunk): nothing is copied on the way. */
  onDataPart(streamId: number, part: Buffer, last: boolean): void {
    if (!this.acceptsFrames()) return;
    const firstPart = this.dataFrameStarting;
    this.dataFrameStarting = false;
    let stream = this.streams.get(streamId);
    if (!stream && firstPart && this.opensByData) {
      // A stream we closed: bytes the server sent before it read our CLOSE, not a new stream
      // (a server announces a new one with an empty frame, or picks a new id).
      if (this.dataFrameLength > 0 && this.closedByUs.has(streamId)) {
        if (last) this.droppedFrames++;
        return;
      }
      this.closedByUs.delete(streamId);
      stream = this.openByData(streamId);
      if (!stream || this.state !== "open" || part.length === 0) return;
    }
    if (!stream) {
      if (last) this.droppedFrames++;
      return;
    }
    // Everything for one socket within this received chunk goes out in one writev.
    if (!this.receiving.has(stream)) {
      this.receiving.add(stream);
      stream.corkReceive();
    }
    stream.receive(part, this.holdChunk);
  }

  /**
   * Tunnel frames count only on an open session. After close() the rest of an already-received
   * chunk is simply ignored; before the handshake was answered a frame is a framing error.
   */
  private acceptsFrames(): boolean {
    if (this.state === "open") return true;
    if (this.state === "closed") return false;
    throw new TunnelError(
      ErrorCodes.UNEXPECTED_FRAME,
      "tunnel frame before the handshake was answered",
    );
  }

  /** A client without OPEN (v1): the server's first DATA frame for an id starts a stream. */
  private get opensByData(): boolean {
    return !this.isServer && !this.has(Extension.OPEN);
  }

  /**
   * A frame opening `stream`'s id again. Once the peer closed a stream its id is free on its side,
   * while ours still delivers the last bytes to its local socket (up to `closeGraceMs`); v1 peers
   * pick ids at random. Such a stream is retired and `undefined` says "open a new one".
   */
  private unlessReopened(stream: TunnelStream | undefined): TunnelStream | undefined {
    if (!stream?.peerDone) return stream;
    this.streams.delete(stream.id);
    this.retired.add(stream);
    return undefined;
  }

  /**
   * Without OPEN a stream starts with its first DATA frame (v1). That frame counts against the
   * new stream's window like any other: charged whole, from its header, before delivery.
   */
  private openByData(streamId: number): TunnelStream | undefined {
    this.handler.onOpenRequest(streamId, null);
    this.openRequested();
    const opened = this.streams.get(streamId);
    opened?.accountIncoming(this.dataFrameLength);
    return opened;
  }

  onFrame(streamId: number, type: number, payload: Buffer): void {
    if (!this.acceptsFrames()) return;
    switch (type) {
      case FrameType.DATA:
        this.onDataHeader(streamId, payload.length);
        if (this.state === "open") this.onDataPart(streamId, payload, true);
        return;
      case FrameType.CLOSE:
        this.withStream(streamId, (stream) => stream.remoteClose());
        return;
      case FrameType.ERROR:
        this.withStream(streamId, (stream) => stream.remoteReset());
        return;
      case FrameType.FIN:
        this.withStream(streamId, (stream) => stream.remoteFin());
        return;
      case FrameType.WINDOW:
        this.withStream(streamId, (stream) => stream.addCredit(payload.readUInt32BE(0)));
        return;
      case FrameType.OPEN:
        if (this.isServer) {
          throw new TunnelError(ErrorCodes.UNEXPECTED_FRAME, "clients may not open streams");
        }
        if (this.unlessReopened(this.streams.get(streamId))) {
          throw new TunnelError(ErrorCodes.UNEXPECTED_FRAME, `stream ${streamId} is already open`);
        }
        this.handler.onOpenRequest(streamId, parseStreamMeta(payload));
        this.openRequested();
        return;
      case FrameType.PING:
        // A peer that pings but does not read gets no pongs: answers must not pile up unbounded.
        if (this.socket.writableLength < this.backlogLimit) {
          this.writeControl(0, FrameType.PONG, Buffer.from(payload));
        }
        return;
      case FrameType.PONG: {
        const sentAt = payload.readBigUInt64BE(0);
        const rtt = Number(process.hrtime.bigint() - sentAt) / 1e6;
        if (rtt >= 0 && rtt < 3_600_000) {
          this.rttMs = rtt;
          this.handler.onRtt(rtt);
        }
        return;
      }
      case FrameType.GOAWAY:
        this.handler.onGoAway(parseGoAway(payload));
        return;
      default:
        // The decoder only lets negotiated types through; this is a defensive stop.
        throw new TunnelError(ErrorCodes.UNKNOWN_FRAME_TYPE, `frame type ${type}`);
    }
  }

  // --- socket events ---------------------------------------------------------------------------

  private readonly onSocketData = (chunk: Buffer): void => {
    this.receiveChunk(chunk);
    if (chunk.length >= BUSY_READ_BYTES && !this.reusingReads && this.state === "open") {
      this.reusingReads = readIntoReusableBuffer(
        this.socket,
        this.onReusedChunk,
        CONTROL_READ_BUFFERS,
      );
    }
  };

  /**
   * A chunk in the reusable buffer. Writes of its parts to local sockets are tracked with `hold`;
   * true when something else still refers to it (a listener, or an untracked write). The start
   * of an incomplete frame is copied out of it by the decoder.
   */
  private readonly onReusedChunk = (chunk: Buffer, hold: () => () => void): boolean => {
    this.holdChunk = hold;
    try {
      const retained = this.receiveChunk(chunk);
      if (this.decoder.bufferedBytes > 0) this.decoder.releaseChunk(chunk);
      return retained;
    } finally {
      this.holdChunk = undefined;
    }
  };

  /**
   * Decodes one chunk; returns true when parts of it may still be referred to without being
   * tracked: handed to a listener, or queued in a socket by an untracked write.
   */
  private receiveChunk(chunk: Buffer): boolean {
    this.bytesIn += chunk.length;
    this.lastReceivedAt = Date.now();
    try {
      this.decoder.push(chunk);
    } catch (err) {
      this.close(toTunnelError(err, ErrorCodes.MALFORMED_FRAME, "decoding failed"));
    }
    if (this.batchesReceives) {
      this.batchedBytes += chunk.length;
      if (this.batchedBytes >= MAX_BATCH_BYTES) {
        this.batchedBytes = 0;
        return this.uncorkReceiving();
      }
      if (this.receiving.size > 0 && this.uncorkImmediate === null && this.state === "open") {
        this.uncorkImmediate = setImmediate(this.uncorkBatch);
      }
      return false;
    }
    return this.uncorkReceiving();
  }

  private readonly uncorkBatch = (): void => {
    this.uncorkImmediate = null;
    this.batchedBytes = 0;
    this.uncorkReceiving();
  };

  /**
   * Streams that received parts of this chunk write them out together now. Returns true when a
   * part may still be referred to untracked (see `TunnelStream.uncorkReceive`).
   */
  private uncorkReceiving(): boolean {
    if (this.receiving.size === 0) return false;
    let retained = false;
    for (const stream of this.receiving) {
      if (stream.uncorkReceive()) retained = true;
    }
    this.receiving.clear();
    return retained;
  }

  private readonly onSocketDrain = (): void => {
    this.controlSinceEmpty = 0;
    if (this.backlogHeld) {
      this.backlogHeld = false;
      this.updateReading();
    }
    this.resumeBlocked();
  };

  /**
   * Resumes paused streams, longest-waiting first, only as many as the control socket has room
   * for (one socket read each). Resuming all of them at once would let every one read a chunk in
   * the same turn of the event loop: with 1,000 streams that is 64 MiB queued in one go.
   */
  private resumeBlocked(): void {
    let room = this.writeLimit - this.socket.writableLength;
    for (const stream of this.blockedStreams) {
      if (room <= 0) break;
      this.blockedStreams.delete(stream);
      stream.resumeSource("session");
      room -= REUSABLE_READ_BYTES;
    }
    if (this.blockedStreams.size > 0 && !this.resumeScheduled && this.state !== "closed") {
      this.resumeScheduled = true;
      setImmediate(this.resumeMore);
    }
  }

  /** The next batch, once the last one had a chance to read: now, or at the next 'drain'. */
  private readonly resumeMore = (): void => {
    this.resumeScheduled = false;
    if (this.state === "closed") return;
    // At or above the limit a write has returned false, so a 'drain' is sure to follow.
    if (this.socket.writableLength < this.writeLimit) this.resumeBlocked();
  };

  private readonly onSocketEnd = (): void => {
    if (this.state === "handshake") {
      this.close(
        new TunnelError(
          ErrorCodes.CONNECTION_CLOSED,
          "peer closed the connection during the handshake",
        ),
      );
    } else if (this.decoder.endsMidFrame) {
      // Not an orderly close: what the last frame carried is lost, and a stream it was for ends
      // short of what the peer meant to send.
      this.close(
        new TunnelError(
          ErrorCodes.CONNECTION_CLOSED,
          "peer closed the connection in the middle of a frame",
        ),
      );
    } else {
      this.close(null);
    }
  };

  private readonly onSocketError = (err: Error): void => {
    this.close(toTunnelError(err, ErrorCodes.SOCKET, "control connection failed"));
  };

  private readonly onSocketClose = (): void => {
    if (this.state !== "closed") {
      this.close(
        this.state === "handshake"
          ? new TunnelError(ErrorCodes.CONNECTION_CLOSED, "connection closed during the handshake")
          : null,
      );
    }
    this.finish();
  };

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.socket.setTimeout(0);
    this.handler.onClose(this.closeError);
  }

  // --- internals -------------------------------------------------------------------------------

  private withStream(streamId: number, action: (stream: TunnelStream) => void): void {
    const stream = this.streams.get(streamId);
    if (stream) action(stream);
    else this.droppedFrames++;
  }

  /** Batch every frame written in this tick into one writev. */
  private cork(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    process.nextTick(this.uncork);
  }

  private readonly uncork = (): void => {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  };

  private checkWritable(): boolean {
    return this.socket.writableLength < this.writeLimit;
  }

  private heartbeatTickMs(): number {
    const pingEvery = this.has(Extension.PING) ? this.config.heartbeatIntervalMs : 0;
    const stallEvery = Math.ceil(this.config.writeStallTimeoutMs / 4);
    if (pingEvery > 0 && stallEvery > 0) return Math.min(pingEvery, stallEvery);
    return pingEvery || stallEvery;
  }

  private readonly onHeartbeat = (): void => {
    const now = Date.now();
    if (this.readsHeld && !this.backlogHeld) {
      // We stopped reading for our local sockets' sake: the peer's pings wait unread in the
      // kernel, so its silence says nothing. What would tell of a peer gone (a reset, or TCP
      // keepalive giving up) sits on the socket unseen while it is not read: an empty write
      // (nothing is sent) brings it out as a socket error.
      this.lastReceivedAt = now;
      if (!this.socket.writableEnded) this.socket.write(NO_PAYLOAD);
      const limit = this.config.writeStallTimeoutMs;
      const holding = this.inboundHolds.size > 0 ? this.inboundHolds : this.streams.values();
      if (limit > 0) for (const stream of [...holding]) stream.failIfLocalStalled(now, limit);
      if (this.state === "closed") return;
    }
    if (this.has(Extension.PING) && this.config.heartbeatIntervalMs > 0) {
      // An idle peer is silent for up to one interval between our ping and its pong, so a timeout
      // under two intervals would declare healthy idle tunnels dead.
      const timeoutMs = Math.max(
        this.config.heartbeatTimeoutMs,
        2 * this.config.heartbeatIntervalMs,
      );
      if (now - this.lastReceivedAt > timeoutMs) {
        // Not read because it reads nothing of ours: say so, "silent" would send one looking
        // for a dead peer.
        const why = this.backlogHeld
          ? `peer left ${this.socket.writableLength} bytes of ours unread, not read for`
          : "peer silent for";
        this.close(
          new TunnelError(
            ErrorCodes.PEER_TIMEOUT,
            `${why} ${now - this.lastReceivedAt} ms (heartbeat timeout ${timeoutMs} ms)`,
          ),
        );
        return;
      }
      const payload = Buffer.allocUnsafe(8);
      payload.writeBigUInt64BE(process.hrtime.bigint(), 0);
      this.writeControl(0, FrameType.PING, payload);
    }
    // A source that holds its reads until its frame is written (reusable-reads.ts) never fills
    // the queue up to the limit: a stall is seen by the lack of progress.
    const stuckMs = this.writeProgress.stuckFor(this.socket, this.socket.writableLength > 0, now);
    if (stuckMs > this.config.writeStallTimeoutMs) {
      this.close(
        new TunnelError(ErrorCodes.PEER_TIMEOUT, `writes to the peer stalled for ${stuckMs} ms`),
      );
    }
  };

  private stopHeartbeat(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }
}

/** Our reason as a GOAWAY body, within the size a peer reads (a long close reason is cut). */
function encodeGoAway(reason: RefusalReason): Buffer {
  const body = Buffer.from(JSON.stringify({ ...reason, message: reason.message.slice(0, 1024) }));
  return body.length <= MAX_CONTROL_JSON_BYTES
    ? body
    : Buffer.from(JSON.stringify({ code: reason.code, message: "going away" }));
}

function parseGoAway(payload: Buffer): RefusalReason {
  // The peer is leaving either way: a reason too large or too deep to read is only not read.
  if (controlJsonProblem(payload)) {
    return { code: ErrorCodes.GOING_AWAY, message: "peer is going away" };
  }
  try {
    const value = JSON.parse(payload.toString("utf8")) as Partial<RefusalReason>;
    return {
      code: typeof value.code === "string" ? value.code : ErrorCodes.GOING_AWAY,
      message: typeof value.message === "string" ? value.message : "peer is going away",
      ...(typeof value.retryAfterMs === "number" ? { retryAfterMs: value.retryAfterMs } : {}),
    };
  } catch {
    return { code: ErrorCodes.GOING_AWAY, message: "peer is going away" };
  }
}

export function describeSession(session: Session): string {
  return `${session.socket.remoteAddress}:${session.socket.remotePort}`;
}
