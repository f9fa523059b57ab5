/**
 * Stream ids this side closed while the peer may still have been sending on them, remembered for
 * a while. v1 opens a stream with its first DATA frame, so without this the peer's DATA frames
 * already on the way when our CLOSE left would open the stream again: a new connection to the
 * local service that gets the tail of someone else's bytes and that the peer knows nothing of.
 *
 * Bounded both ways: ids older than `maxAgeMs` are forgotten, and at most `capacity` are kept
 * (the oldest go first), so a busy tunnel holds a few KiB, not one entry per stream it ever had.
 */
export class RecentlyClosedStreams {
  /** id -> when it closed (ms); a Map iterates in insertion order, so the oldest come first. */
  private readonly closedAt = new Map<number, number>();

  constructor(
    private readonly maxAgeMs: number,
    private readonly capacity = 4096,
  ) {}

  add(streamId: number, now = Date.now()): void {
    this.forgetOld(now);
    this.closedAt.delete(streamId);
    this.closedAt.set(streamId, now);
    if (this.closedAt.size > this.capacity) {
      const oldest = this.closedAt.keys().next().value as number;
      this.closedAt.delete(oldest);
    }
  }

  has(streamId: number, now = Date.now()): boolean {
    this.forgetOld(now);
    return this.closedAt.has(streamId);
  }

  /** The peer announced a new stream with this id: it is not a late frame any more. */
  delete(streamId: number): void {
    this.closedAt.delete(streamId);
  }

  get size(): number {
    return this.closedAt.size;
  }

  private forgetOld(now: number): void {
    for (const [id, at] of this.closedAt) {
      if (now - at < this.maxAgeMs) return;
      this.closedAt.delete(id);
    }
  }
}
