import type { Socket } from "node:net";
import { ErrorCodes, TunnelError } from "../errors.js";
import { isTlsSocket } from "../lazy-builtins.js";
import { Extension, FrameType } from "../protocol/constants.js";
import { encodeU32 } from "../protocol/encode.js";
import { holdReads, resumeReading, stopReading } from "./read-gate.js";
import {
  BUSY_READ_BYTES,
  REUSABLE_READ_BYTES,
  readIntoReusableBuffer,
  STREAM_READ_BUFFERS,
} from "./reusable-reads.js";
import { COPY_PAYLOAD_BELOW, type Session } from "./session.js";
import { WriteProgress } from "./write-progress.js";

/** Hooks the owner uses to turn stream activity into its public events. */
export interface StreamObserver {
  /** Bytes from the peer, just written to the local socket. True when a listener was handed them. */
  inbound(stream: TunnelStream, data: Buffer): boolean;
  /** Bytes read from the local socket, about to go to the peer. True when a listener was handed them. */
  outbound(stream: TunnelStream, data: Buffer): boolean;
  error(stream: TunnelStream, err: Error): void;
  closed(stream: TunnelStream): void;
}

type PauseReason = "credit" | "session" | "write";
const PAUSE_BIT: Record<PauseReason, number> = { credit: 1, session: 2, write: 4 };

/** The stream a local socket belongs to: lets one shared listener per event serve every stream. */
const STREAM = Symbol("w3p.stream");
type StreamSocket = Socket & { [STREAM]?: TunnelStream };

/**
 * One multiplexed stream: relays between a local socket (a visitor on the server, the local
 * service on the client) and the session. It holds the stream's whole state: send credit, receive
 * window, half-close flags. Only this class touches its socket's flow (pause/resume, end, destroy).
 */
export class TunnelStream {
  readonly id: number;
  readonly session: Session;
  readonly socket: Socket;
  /** Name of the service this stream belongs to. */
  readonly service: string;
  /** Bytes received from the peer (written to the socket). */
  bytesIn = 0;
  /** Bytes read from the socket and sent to the peer. */
  bytesOut = 0;
  /** Current receive window granted to the peer (flow extension), for window accounting. */
  receiveWindow = 0;

  private readonly observer: StreamObserver;
  private readonly flow: boolean;
  private readonly halfClose: boolean;
  private sendCredit: number;
  /** Part of a chunk that had no credit yet; the socket is paused while it is held. */
  private pending: Buffer | null = null;
  private received = 0;
  /** Bytes of the DATA frame being received that have not arrived yet (flow accounting). */
  private frameRemaining = 0;
  private granted = 0;
  /** Why the source is paused: PAUSE_BIT flags (a bit mask costs less than a Set per stream). */
  private pauses = 0;
  private sentFin = false;
  private finAfterPending = false;
  private receivedFin = false;
  /** The peer closed or reset the stream: nothing more is sent for it. */
  private remoteGone = false;
  private closed = false;
  /**
   * Runs while the socket has closed cleanly but the end of its bytes still waits for credit:
   * the stream stays until they are sent (or the grace period ends).
   */
  private drainTimer: NodeJS.Timeout | null = null;
  /** Closed by us because of a local failure: the peer gets ERROR, not CLOSE. */
  private failed = false;
  private idleTimer: NodeJS.Timeout | null = null;
  /** Set while the session decodes one received chunk (see `corkReceive`). */
  private receiveCorked = false;
  /** A part received since `corkReceive` was handed to a listener. */
  private receivedHandedOut = false;
  /** A part received since `corkReceive` was written as a view without tracking its write. */
  private receivedUntracked = false;
  /** The socket reads into a buffer it keeps (see reusable-reads.ts). */
  private reusingReads = false;
  /** Frames of reused-buffer chunks written to the control socket and not yet sent on. */
  private trackedWrites = 0;
  /**
   * Small payloads from the peer that arrived while the socket still had writes queued, copied
   * into one block (see `receive`); `tailLength` bytes of it are used.
   */
  private tail: Buffer | null = null;
  private tailLength = 0;
  /** Writes of received payloads not yet done: the first to finish writes the tail block. */
  private receiveWrites = 0;
  /** `bufferedForSocket()` as last told to the session (its sum over streams is bounded). */
  private reportedBuffered = 0;

  constructor(
    session: Session,
    id: number,
    socket: Socket,
    observer: StreamObserver,
    service: string,
  ) {
    this.session = session;
    this.id = id;
    this.socket = socket;
    this.observer = observer;
    this.service = service;
    this.flow = session.has(Extension.FLOW);
    this.halfClose = session.has(Extension.FIN);
    this.sendCredit = this.flow ? session.peerWindowBytes : Number.POSITIVE_INFINITY;
    if (this.flow) {
      this.receiveWindow = session.config.streamWindowBytes;
      this.granted = this.receiveWindow;
      session.windowTotal += this.receiveWindow;
    }
    // Shared listeners instead of five closures per stream: idle streams are mostly this memory.
    (socket as StreamSocket)[STREAM] = this;
    socket.on("data", socketData);
    socket.on("end", socketEnd);
    socket.on("drain", socketDrain);
    socket.on("error", socketError);
    socket.on("close", socketClose);
    if (session.config.streamIdleTimeoutMs > 0) this.armIdleTimer();
    session.attach(this);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The peer closed or reset the stream: for it the id is free, even while our socket lingers. */
  get peerDone(): boolean {
    return this.remoteGone;
  }

  // --- from the local socket to the peer --------------------------------------------------------

  /** @internal socket listener (see `socketData` below the class). */
  onData(chunk: Buffer): void {
    if (this.remoteGone) return;
    this.touch();
    this.observer.outbound(this, chunk);
    this.send(chunk);
    if (chunk.length >= BUSY_READ_BYTES && !this.reusingReads && !this.closed) {
      this.reusingReads = readIntoReusableBuffer(
        this.socket,
        (chunk, hold) => this.onReusedChunk(chunk, hold),
        STREAM_READ_BUFFERS,
      );
    }
  }

  /**
   * A chunk in the socket's reusable buffer (valid during this call only). It goes out as one
   * frame, and its buffer is set aside until that frame is written (`hold`). If the control socket
   * could not take the frame at once, the socket also stops reading until it is written: reading
   * on would only queue more in this process (tried with up to three frames in flight: no faster
   * across the bench's four processes, slower with everything in one process). Returns true when
   * the chunk is kept beyond this call some other way (a listener, or bytes waiting for credit):
   * its buffer is then never read into again.
   */
  private onReusedChunk(chunk: Buffer, hold: () => () => void): boolean {
    if (this.remoteGone) return false;
    this.touch();
    const handedOut = this.observer.outbound(this, chunk);
    this.send(chunk, hold);
    if (handedOut || this.pending) return true;
    if (this.session.writesQueued && chunk.length >= COPY_PAYLOAD_BELOW && this.trackedWrites > 0) {
      this.pauseSource("write");
    }
    return false;
  }

  /** A tracked frame left the control socket; the last one lets the socket read again. */
  private trackedWriteDone(): void {
    this.trackedWrites--;
    if (this.trackedWrites === 0 && this.pauses & PAUSE_BIT.write) this.resumeSource("write");
  }

  private send(chunk: Buffer, hold?: () => () => void): void {
    if (this.pending) {
      // Bytes read while the source waited for credit (the read gate should prevent it): they
      // queue behind the waiting ones, copied, never in their place.
      this.pending = Buffer.concat([this.pending, chunk]);
      return;
    }
    let now = chunk;
    if (chunk.length > this.sendCredit) {
      const credit = this.sendCredit;
      this.pending = chunk.subarray(credit);
      now = chunk.subarray(0, credit);
      this.pauseSource("credit");
      if (credit === 0) return;
    }
    this.sendCredit -= now.length;
    this.bytesOut += now.length;
    // A payload under COPY_PAYLOAD_BELOW is copied into its frame: nothing of the read buffer is
    // left to track, and a tracked write queued behind others would set the whole buffer aside
    // for those few bytes (a visitor sending small pieces while the control connection is backed
    // up would make each piece cost a fresh 64 KiB).
    if (hold && now.length >= COPY_PAYLOAD_BELOW && this.session.state !== "closed") {
      this.trackedWrites++;
      const release = hold();
      const written = () => {
        release();
        this.trackedWriteDone();
      };
      if (!this.session.writeData(this.id, now, written)) this.session.block(this);
    } else if (!this.session.writeData(this.id, now)) {
      this.session.block(this);
    }
    if (
      this.session.peerGrantsAhead &&
      this.sendCredit < this.creditFloor() &&
      !(this.pauses & PAUSE_BIT.credit)
    ) {
      this.pauseSource("credit");
    }
  }

  /**
   * Credit under which the source stops reading before it runs out. A read (64 KiB) that credit
   * cannot cover keeps its rest, and with it the whole read buffer, in this process until credit
   * comes: with 1,000 streams waiting that is up to 64 MiB, which unread would wait in the
   * kernel instead (concurrency bench: server peak RSS 109-169 MiB in 8 runs before, 107-139
   * in 11 after). Half the peer's window at most, so a small window still sends. Only once the
   * peer has shown it grants credit before it runs out (`peerGrantsAhead`): one that grants only
   * after it received all it granted would otherwise wait forever for the last few bytes.
   */
  private creditFloor(): number {
    return Math.min(REUSABLE_READ_BYTES, this.session.peerWindowBytes / 2);
  }

  /**
   * Whether the source may read again after a grant of `increment`: credit is at the floor, or the
   * peer is not one that grants ahead, or it grants in pieces under the floor (a receiver with a
   * small buffer, which grants only once it has received all it granted, would never reach it).
   */
  private creditSuffices(increment: number): boolean {
    const floor = this.creditFloor();
    return this.sendCredit >= floor || !this.session.peerGrantsAhead || increment < floor;
  }

  /** WINDOW from the peer: more credit; flush what waited for it, or read again. */
  addCredit(increment: number): void {
    if (increment > 0 && this.sendCredit >= this.creditFloor()) this.session.peerGrantsAhead = true;
    this.sendCredit += increment;
    const waiting = this.pending;
    if (!waiting) {
      if (this.pauses & PAUSE_BIT.credit && this.creditSuffices(increment)) {
        this.resumeSource("credit");
      }
      return;
    }
    if (this.closed && !this.drainTimer) return;
    // While the control socket is too full to take this stream's frames, a trickle of credit (a
    // peer granting a few bytes per WINDOW) adds up instead of queueing a tiny frame for each
    // grant; 'drain' sends what is due (resumeSource). Real grants are half a window.
    if (
      this.session.isBlocked(this) &&
      this.sendCredit < Math.min(waiting.length, COALESCE_BELOW)
    ) {
      return;
    }
    this.pending = null;
    this.send(waiting);
    if (this.pending) return;
    if (this.finAfterPending) this.sendFin();
    if (this.drainTimer) this.finishClose(false);
    else if (this.creditSuffices(increment)) this.resumeSource("credit");
  }

  pauseSource(reason: PauseReason): void {
    this.pauses |= PAUSE_BIT[reason];
    // Waiting for a write is brief and happens on every busy chunk: only the kernel reads stop.
    if (this.pauses === PAUSE_BIT.write) holdReads(this.socket);
    else stopReading(this.socket);
  }

  resumeSource(reason: PauseReason): void {
    this.pauses &= ~PAUSE_BIT[reason];
    if (reason === "session" && this.pending && this.sendCredit > 0) {
      // Credit that came while the session was blocked (see addCredit): send on it now.
      this.addCredit(0);
      return;
    }
    if (this.pauses === 0 && !this.closed) resumeReading(this.socket);
  }

  /** @internal socket listener (see `socketEnd` below the class). */
  onEnd(): void {
    if (this.remoteGone) return;
    if (!this.halfClose) {
      // v1 has no half-close: the stream ends when the socket closes (CLOSE frame from onClose).
      this.flushTail();
      this.socket.end();
      return;
    }
    if (this.pending) this.finAfterPending = true;
    else this.sendFin();
  }

  private sendFin(): void {
    if (this.sentFin) return;
    this.sentFin = true;
    this.session.writeControlNow(this.id, FrameType.FIN);
  }

  // --- from the peer to the local socket --------------------------------------------------------

  /**
   * A whole DATA frame is announced before its parts arrive. Checking it here, against the credit
   * granted so far, is exact: a window grown while the frame's first part was written cannot hide
   * bytes the peer sent without credit.
   */
  accountIncoming(payloadLength: number): void {
    if (!this.flow || this.closed) return;
    this.received += payloadLength;
    this.frameRemaining = payloadLength;
    if (this.received > this.granted) {
      this.session.close(
        new TunnelError(
          ErrorCodes.FLOW_VIOLATION,
          `stream ${this.id}: peer sent ${this.received - this.granted} bytes beyond its window`,
        ),
      );
    }
  }

  /** `hold` (reused chunks only) tracks the write of the payload; see reusable-reads.ts. */
  receive(payload: Buffer, hold?: () => () => void): void {
    // writableEnded: our side already ended (v1 end of a half-closed socket); late bytes are a race.
    if (this.remoteGone || this.receivedFin || this.closed || this.socket.writableEnded) {
      this.session.droppedFrames++;
      return;
    }
    this.bytesIn += payload.length;
    this.frameRemaining = Math.max(0, this.frameRemaining - payload.length);
    this.touch();
    // An empty DATA frame carries nothing (v1 opens a stream with one): no write at all. Queued,
    // each would be an entry of its own in the socket that no byte count sees.
    if (payload.length === 0) return;
    // Only behind a write of ours: its completion is what writes the block (a write the owner
    // made, such as a PROXY header, calls nothing back here).
    const behindOurs = this.receiveWrites > 0 && this.socket.writableLength > 0;
    if (payload.length < COALESCE_BELOW && (this.tailLength > 0 || behindOurs)) {
      // Behind queued writes a small payload gains nothing from a write of its own, and each
      // queued write costs a few hundred bytes that no byte limit counts: a peer sending 1-byte
      // frames would otherwise queue a million of them within a 1 MiB window.
      this.appendToTail(payload);
      if (this.observer.inbound(this, payload)) this.receivedHandedOut = true;
      if (!this.receiveCorked) this.afterReceive();
      return;
    }
    this.flushTail();
    // A tracked write into an idle socket usually completes at once: no copy. One that queues
    // behind others could pin its whole chunk for a small slice (see detachSmallView).
    const data = hold && this.socket.writableLength === 0 ? payload : detachSmallView(payload);
    this.receiveWrites++;
    if (data === payload && hold) {
      const release = hold();
      this.socket.write(data, () => {
        release();
        this.onReceivedWritten();
      });
    } else {
      this.socket.write(data, this.onReceivedWritten);
      if (data === payload) this.receivedUntracked = true;
    }
    if (this.observer.inbound(this, payload)) this.receivedHandedOut = true;
    if (!this.receiveCorked) this.afterReceive();
  }

  /** The session is about to hand over several parts in a row: write them in one go. */
  corkReceive(): void {
    this.receiveCorked = true;
    this.receivedHandedOut = false;
    this.receivedUntracked = false;
    this.socket.cork();
  }

  /**
   * The parts are written: now credit and the v1 brake see what the socket really holds. Returns
   * true when the parts may still be referred to untracked: handed to a listener, or queued in
   * the socket by a write nobody tracks.
   */
  uncorkReceive(): boolean {
    if (!this.receiveCorked) return false;
    this.receiveCorked = false;
    // Small parts copied behind the first one join it in the same writev.
    this.flushTail();
    this.socket.uncork();
    const retained =
      this.receivedHandedOut || (this.receivedUntracked && this.socket.writableLength > 0);
    this.receivedHandedOut = false;
    this.receivedUntracked = false;
    this.afterReceive();
    return retained;
  }

  private afterReceive(): void {
    if (this.flow) this.maybeGrant();
    else if (this.bufferedForSocket() >= this.session.config.maxStreamBufferBytes) {
      this.session.holdInbound(this);
    }
    this.reportBuffered();
  }

  /** Tells the session how much waits for this socket now (nothing once the stream closed). */
  private reportBuffered(): void {
    const now = this.closed ? 0 : this.bufferedForSocket();
    if (now === this.reportedBuffered) return;
    this.session.localBufferedChanged(now - this.reportedBuffered);
    this.reportedBuffered = now;
  }

  /** Bytes from the peer not yet written out: queued in the socket, and in the tail block. */
  private bufferedForSocket(): number {
    return this.socket.writableLength + this.tailLength;
  }

  private appendToTail(payload: Buffer): void {
    let size = FIRST_TAIL_BYTES;
    if (this.tail && this.tailLength + payload.length > this.tail.length) {
      // A run of small payloads: the next block is a full one.
      this.flushTail();
      size = TAIL_BLOCK_BYTES;
    }
    // Most tails are one small part of a frame split across reads: a small first block (from
    // Node's shared pool) keeps a thousand streams from holding 16 KiB each for it.
    this.tail ??= Buffer.allocUnsafe(Math.max(size, payload.length));
    payload.copy(this.tail, this.tailLength);
    this.tailLength += payload.length;
  }

  /** Writes the tail block, in order: before any later payload, and when earlier writes finish. */
  private flushTail(): void {
    if (this.tailLength === 0) return;
    const bytes = this.tail!.subarray(0, this.tailLength);
    this.tail = null;
    this.tailLength = 0;
    if (this.socket.destroyed || this.socket.writableEnded) return;
    this.receiveWrites++;
    this.socket.write(bytes, this.onReceivedWritten);
  }

  /**
   * Bytes written to the local socket have gone out: the tail block follows them now. Credit
   * withheld because they were queued is granted now: 'drain' alone comes only after a write that
   * filled the socket's buffer, which a window smaller than twice the socket's highWaterMark
   * (64 KiB from Node 22) may never do.
   */
  private readonly onReceivedWritten = (): void => {
    this.receiveWrites--;
    this.flushTail();
    if (this.receiveCorked) return;
    if (this.flow) this.maybeGrant();
    // v1: the hold on the control connection is lifted once everything is written. 'drain' alone
    // would not do: it comes only after a write that filled the socket's buffer, which with
    // maxStreamBufferBytes under the socket's highWaterMark the held connection may never make.
    else if (this.bufferedForSocket() === 0) this.session.releaseInbound(this);
    this.reportBuffered();
  };

  /** @internal socket listener (see `socketDrain` below the class). */
  onDrain(): void {
    if (this.flow) this.maybeGrant();
    else this.session.releaseInbound(this);
    this.reportBuffered();
  }

  /**
   * Returns credit once at least half the window is free again (fewer WINDOW frames). A window
   * whose reader keeps up completely (nothing buffered) doubles, up to the per-stream maximum and
   * within the session's cap, so one fast stream gets speed and a thousand slow ones stay small.
   */
  private maybeGrant(): void {
    if (this.closed || this.remoteGone) return;
    const outstanding = this.granted - this.received;
    const buffered = this.bufferedForSocket();
    // The rest of a frame still arriving is counted as received but is not in the socket yet.
    let room = this.receiveWindow - outstanding - buffered - this.frameRemaining;
    if (room < this.receiveWindow / 2) return;
    if (
      buffered === 0 &&
      this.receiveWindow < this.session.config.maxStreamWindowBytes &&
      this.session.reserveWindow(this.receiveWindow)
    ) {
      room += this.receiveWindow;
      this.receiveWindow *= 2;
    }
    this.granted += room;
    this.session.writeControl(this.id, FrameType.WINDOW, encodeU32(room));
  }

  /** FIN from the peer: it will send nothing more; end our write side after pending bytes. */
  remoteFin(): void {
    if (this.receivedFin) return;
    this.receivedFin = true;
    if (this.closed) return;
    this.flushTail();
    this.socket.end();
  }

  /** CLOSE from the peer: deliver what is queued, then close; never wait past the grace period. */
  remoteClose(): void {
    if (this.remoteGone) return;
    if (this.closed) {
      this.stopDraining();
      return;
    }
    this.remoteGone = true;
    this.pending = null;
    this.flushTail();
    // End our side after what is queued, then read on (onData drops it) until the local side
    // closes too. A socket closed with bytes it has not read is reset by the kernel, which then
    // discards what we wrote and it had not sent yet: a service that greets first lost the end
    // of a stream whose CLOSE came right behind its data.
    this.pauses = 0;
    resumeReading(this.socket);
    const socket = this.socket;
    const linger = setTimeout(() => socket.destroy(), this.session.config.closeGraceMs);
    linger.unref();
    socket.once("close", () => clearTimeout(linger));
    socket.end();
  }

  /** ERROR from the peer: drop the connection at once (an RST where the transport allows). */
  remoteReset(): void {
    if (this.remoteGone) return;
    if (this.closed) {
      this.stopDraining();
      return;
    }
    this.remoteGone = true;
    this.pending = null;
    this.resetSocket();
  }

  /** An RST where the transport allows one (plain TCP, connected), else a plain destroy. */
  private resetSocket(): void {
    if (!isTlsSocket(this.socket) && this.socket.readyState === "open") {
      this.socket.resetAndDestroy();
    } else {
      this.socket.destroy();
    }
  }

  /**
   * The session is gone: destroy the socket without telling the peer (there is no peer), with a
   * reset when `resetOnAbort` asks for one.
   */
  abort(): void {
    if (this.closed) {
      this.stopDraining();
      return;
    }
    this.remoteGone = true;
    if (this.session.config.resetOnAbort) this.resetSocket();
    else this.socket.destroy();
    // Over now, not at the socket's 'close' a tick later: each stream's disconnected event comes
    // before its tunnel's, as the streams ended first.
    this.onClose(true);
  }

  /** Local failure (e.g. the local service could not be reached): tell the peer, then destroy. */
  fail(err: Error): void {
    if (this.closed) return;
    this.failed = true;
    this.observer.error(this, err);
    this.socket.destroy();
  }

  /** Whether the local socket's writes move; made at the first stall check (held reads only). */
  private localProgress: WriteProgress | null = null;

  /**
   * Called while the session holds its reads for its local sockets: a socket that has taken
   * nothing of what waits for it for `limitMs` fails the stream (W3P_ERR_PEER_TIMEOUT), so one
   * stuck service cannot hold a v1 tunnel, and a gone server's end of stream behind it, forever.
   */
  failIfLocalStalled(now: number, limitMs: number): void {
    if (this.closed) return;
    this.localProgress ??= new WriteProgress();
    const waiting = this.bufferedForSocket();
    const stuckMs = this.localProgress.stuckFor(this.socket, waiting > 0, now);
    if (stuckMs < limitMs) return;
    this.fail(
      new TunnelError(
        ErrorCodes.PEER_TIMEOUT,
        `stream ${this.id}: the local socket took nothing of ${waiting} waiting bytes for ${stuckMs} ms while the tunnel waited on it`,
      ),
    );
  }

  /** @internal socket listener (see `socketError` below the class). */
  onError(err: Error): void {
    if (this.remoteGone) return;
    // Node leaves a few sockets open after their 'error' (a TLS visitor renegotiating past
    // tls.CLIENT_RENEG_LIMIT): such a stream fails like any other, once, instead of working on.
    if (!this.socket.destroyed) this.fail(err);
    else this.observer.error(this, err);
  }

  /** @internal socket listener (see `socketClose` below the class). */
  onClose(hadError: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.reportBuffered();
    this.clearIdleTimer();
    const clean = !hadError && !this.failed;
    if (clean && this.pending && !this.remoteGone && this.session.state === "open") {
      // The socket ended and closed while the end of its bytes waited for credit: a paused
      // socket still reads on up to its highWaterMark (Node restarts the reads), so its EOF can
      // come after the chunk that ran out of credit. Those bytes are part of the stream: it stays
      // until they are sent, at most one chunk and one grace period.
      this.drainTimer = setTimeout(() => this.abandonPending(), this.session.config.closeGraceMs);
      this.drainTimer.unref();
      return;
    }
    this.finishClose(!clean);
  }

  /** The peer gave no credit for the rest within the grace period: it learns the end is lost. */
  private abandonPending(): void {
    this.pending = null;
    this.finishClose(true);
  }

  /** The peer or the session ended a stream that was still sending its last bytes. */
  private stopDraining(): void {
    if (!this.drainTimer) return;
    this.remoteGone = true;
    this.pending = null;
    this.finishClose(false);
  }

  /** The stream is over: tells the peer unless it already knows, and lets go of the stream. */
  private finishClose(failed: boolean): void {
    if (this.drainTimer) clearTimeout(this.drainTimer);
    this.drainTimer = null;
    this.reportBuffered();
    this.session.detach(this);
    const finishedCleanly = this.sentFin && this.receivedFin;
    if (!this.remoteGone && !finishedCleanly && this.session.state === "open") {
      this.session.writeControl(this.id, failed ? FrameType.ERROR : FrameType.CLOSE);
    }
    this.observer.closed(this);
  }

  // --- idle timeout (off by default) -------------------------------------------------------------

  private lastActivityAt = 0;

  private touch(): void {
    if (this.idleTimer) this.lastActivityAt = Date.now();
  }

  private armIdleTimer(): void {
    const limit = this.session.config.streamIdleTimeoutMs;
    this.lastActivityAt = Date.now();
    this.idleTimer = setInterval(
      () => {
        if (Date.now() - this.lastActivityAt < limit) return;
        this.fail(
          new TunnelError(ErrorCodes.STREAM_IDLE, `stream ${this.id} idle for ${limit} ms`),
        );
      },
      Math.max(50, Math.ceil(limit / 4)),
    );
    this.idleTimer.unref();
  }

  private clearIdleTimer(): void {
    if (this.idleTimer) clearInterval(this.idleTimer);
    this.idleTimer = null;
  }
}

// Listeners shared by every stream; `this` is the socket that emitted the event.
function socketData(this: StreamSocket, chunk: Buffer): void {
  this[STREAM]?.onData(chunk);
}

function socketEnd(this: StreamSocket): void {
  this[STREAM]?.onEnd();
}

function socketDrain(this: StreamSocket): void {
  this[STREAM]?.onDrain();
}

function socketError(this: StreamSocket, err: Error): void {
  this[STREAM]?.onError(err);
}

function socketClose(this: StreamSocket, hadError: boolean): void {
  this[STREAM]?.onClose(hadError);
}

/** Payloads under this size are copied into the tail block when the socket has writes queued. */
const COALESCE_BELOW = 4 * 1024;
/** Size of a tail block: a run of small payloads goes out as writes of up to this size. */
const TAIL_BLOCK_BYTES = 16 * 1024;
/** Size of a stream's first tail block. */
const FIRST_TAIL_BYTES = 2 * 1024;

/** Parts at most this large are copied when they are a small slice of a bigger received chunk. */
const DETACH_BELOW = 16 * 1024;

/**
 * A payload is a view into the chunk the control connection read (up to 64 KiB). Queued in a
 * socket that is not keeping up, a small view pins the whole chunk until that socket drains: with
 * 1,000 slow visitors that is 64 MiB held for a few KiB of data each. A small slice is copied out
 * instead (cheap); a large one is written as is (it is most of its chunk anyway).
 */
function detachSmallView(payload: Buffer): Buffer {
  if (payload.length > DETACH_BELOW || payload.length * 4 > payload.buffer.byteLength) {
    return payload;
  }
  return Buffer.from(payload);
}
