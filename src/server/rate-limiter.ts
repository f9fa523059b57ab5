/**
 * Token buckets keyed by remote address: `ratePerSecond` tokens refill continuously up to `burst`.
 * The map is bounded: when it grows past `maxKeys`, buckets that have refilled completely (they
 * carry no information) are dropped, then the oldest ones.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; updatedAt: number }>();
  private readonly ratePerSecond: number;
  private readonly burst: number;
  private readonly maxKeys: number;

  constructor(ratePerSecond: number, burst: number, maxKeys = 10_000) {
    this.ratePerSecond = ratePerSecond;
    this.burst = burst;
    this.maxKeys = maxKeys;
  }

  get enabled(): boolean {
    return this.ratePerSecond > 0;
  }

  /** True when `key` has at least one token (without taking it). */
  allows(key: string, now = Date.now()): boolean {
    if (!this.enabled) return true;
    return this.refill(key, now) >= 1;
  }

  /** Takes a token; returns false (and takes nothing) when the bucket is empty. */
  take(key: string, now = Date.now()): boolean {
    if (!this.enabled) return true;
    const tokens = this.refill(key, now);
    if (tokens < 1) return false;
    this.buckets.set(key, { tokens: tokens - 1, updatedAt: now });
    this.prune(now);
    return true;
  }

  /**
   * Gives back a token taken for an attempt that turned out well: attempts are paid for before
   * their costly part runs (so any number of them in flight at once cannot pass a check made while
   * none had failed yet), and only the failures stay paid.
   */
  refund(key: string, now = Date.now()): void {
    if (!this.enabled || !this.buckets.has(key)) return;
    const tokens = Math.min(this.burst, this.refill(key, now) + 1);
    this.buckets.set(key, { tokens, updatedAt: now });
  }

  /** Milliseconds until `key` has a token again (0 when it has one now). */
  retryAfterMs(key: string, now = Date.now()): number {
    if (!this.enabled) return 0;
    const tokens = this.refill(key, now);
    return tokens >= 1 ? 0 : Math.ceil(((1 - tokens) / this.ratePerSecond) * 1000);
  }

  get size(): number {
    return this.buckets.size;
  }

  private refill(key: string, now: number): number {
    const bucket = this.buckets.get(key);
    if (!bucket) return this.burst;
    const elapsed = Math.max(0, now - bucket.updatedAt) / 1000;
    return Math.min(this.burst, bucket.tokens + elapsed * this.ratePerSecond);
  }

  private prune(now: number): void {
    if (this.buckets.size <= this.maxKeys) return;
    for (const [key] of this.buckets) {
      if (this.refill(key, now) >= this.burst) this.buckets.delete(key);
    }
    // Still too many: forget the oldest (Map iterates in insertion order).
    for (const key of this.buckets.keys()) {
      if (this.buckets.size <= this.maxKeys) break;
      this.buckets.delete(key);
    }
  }
}
