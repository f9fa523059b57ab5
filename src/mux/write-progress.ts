import type { Socket } from "node:net";

/**
 * Whether a socket's writes make progress, judged on a regular tick: how long bytes have waited
 * with none of them written. By progress, not by how much is queued: a writer that holds back
 * until its last write is done never fills the queue up to any limit.
 */
export class WriteProgress {
  /** Bytes the socket had written (handed to the kernel) at the last tick. */
  private written = 0;
  /** Since when bytes wait with none written (0: none wait, or they move). */
  private stuckSince = 0;

  /** Ms that bytes (`waiting`) have waited with none of `socket`'s written since; 0 if they move. */
  stuckFor(socket: Socket, waiting: boolean, now: number): number {
    // bytesWritten counts queued bytes too; without them it is what has been written.
    const written = (socket.bytesWritten ?? 0) - socket.writableLength;
    if (!waiting || written !== this.written || this.stuckSince === 0) {
      this.written = written;
      this.stuckSince = waiting ? now : 0;
      return 0;
    }
    return now - this.stuckSince;
  }
}
