/** Timeouts and limits that one control connection (a `Session`) works with. */
export interface SessionConfig {
  /** Largest handshake body accepted before auth. */
  maxHandshakeBytes: number;
  /** Largest tunnel frame body (stream id + type + payload) accepted. */
  maxFrameBytes: number;
  /** How often to ping a peer that negotiated heartbeats; 0 disables pings. */
  heartbeatIntervalMs: number;
  /** A peer silent for this long (no byte at all) is declared dead. */
  heartbeatTimeoutMs: number;
  /** A control socket whose writes make no progress for this long is declared dead. */
  writeStallTimeoutMs: number;
  /** Bytes queued on the control socket before producers are paused. */
  controlWriteBufferBytes: number;
  /** Initial per-stream receive window granted to the peer (flow extension). */
  streamWindowBytes: number;
  /** A stream whose reader keeps up grows its window up to this. */
  maxStreamWindowBytes: number;
  /** Cap on the sum of all stream windows of one session: bounds memory per session. */
  sessionWindowBytes: number;
  /**
   * Without flow control (v1 peers), bytes buffered toward one slow reader before the whole
   * control connection is paused (the only brake v1 has).
   */
  maxStreamBufferBytes: number;
  /**
   * Bytes waiting to be written to the local sockets of all streams together (v1 or not) before
   * the whole control connection is paused: the last brake against a peer opening thousands of
   * streams to readers that do not read.
   */
  maxSessionBufferBytes: number;
  /** Streams open at once on this session. */
  maxStreams: number;
  /** After a stream's peer closed, how long its pending bytes may take to flush. */
  closeGraceMs: number;
  /** Close a stream with no traffic in either direction for this long; 0 = never. */
  streamIdleTimeoutMs: number;
  /**
   * When the control connection goes (lost, or stop()), reset its streams' sockets instead of
   * closing them with a FIN, which a peer could take for a complete transfer.
   */
  resetOnAbort: boolean;
}

export const DEFAULT_SESSION_CONFIG: SessionConfig = {
  maxHandshakeBytes: 64 * 1024,
  maxFrameBytes: 4 * 1024 * 1024,
  heartbeatIntervalMs: 10_000,
  heartbeatTimeoutMs: 30_000,
  writeStallTimeoutMs: 60_000,
  // 256 KiB keeps a fast link busy (measured: bulk throughput unchanged from 1 MiB) while 1,000
  // busy streams resumed in batches hold less at once (concurrency peak RSS ~126 -> ~111 MiB).
  controlWriteBufferBytes: 256 * 1024,
  streamWindowBytes: 256 * 1024,
  maxStreamWindowBytes: 4 * 1024 * 1024,
  sessionWindowBytes: 64 * 1024 * 1024,
  maxStreamBufferBytes: 1024 * 1024,
  // 1,000 streams of a full 256 KiB window (the most the defaults must carry) fit, nearly.
  maxSessionBufferBytes: 256 * 1024 * 1024,
  maxStreams: 10_000,
  closeGraceMs: 10_000,
  streamIdleTimeoutMs: 0,
  // W3P closed them (FIN); a reset is opt-in, as a peer without an 'error' listener would throw.
  resetOnAbort: false,
};
