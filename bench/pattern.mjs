/**
 * Deterministic test data. Every byte the benchmark moves is a function of its offset in the
 * stream, so a receiver in another process checks what arrived with a plain memcmp instead of
 * holding or hashing it, and a sender never allocates: it writes views of one shared buffer.
 */

/** Period of the pattern: a little over 1 MiB and not a power of two, so chunks that arrive
 * reordered, duplicated or shifted by a socket-sized amount never line up with the pattern. */
export const PERIOD = 1024 * 1024 + 4099;

/** The pattern twice in a row: any window of up to PERIOD bytes is one contiguous view. */
const DOUBLE = (() => {
  const out = Buffer.allocUnsafe(PERIOD * 2);
  let x = 0x9e3779b9;
  for (let i = 0; i < PERIOD; i++) {
    // xorshift32: cheap, deterministic, no visible structure at socket-chunk scale.
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  out.copy(out, PERIOD, 0, PERIOD);
  return out;
})();

/** The `length` bytes (at most PERIOD) found at stream offset `offset`, as a view. */
export function patternAt(offset, length) {
  if (length > PERIOD) throw new RangeError(`pattern views are at most ${PERIOD} bytes`);
  const start = offset % PERIOD;
  return DOUBLE.subarray(start, start + length);
}

/** Checks an incoming byte stream against the pattern, starting at stream offset `start`. */
export class PatternChecker {
  constructor(start = 0) {
    this.start = start;
    this.received = 0;
    /** Offset of the first wrong byte (relative to the stream), or -1. */
    this.firstMismatch = -1;
  }

  get ok() {
    return this.firstMismatch < 0;
  }

  push(chunk) {
    let done = 0;
    while (done < chunk.length) {
      const length = Math.min(chunk.length - done, PERIOD);
      const got = chunk.subarray(done, done + length);
      const offset = this.start + this.received;
      if (this.firstMismatch < 0 && !got.equals(patternAt(offset, length))) {
        const want = patternAt(offset, length);
        let i = 0;
        while (got[i] === want[i]) i++;
        this.firstMismatch = this.received + i;
      }
      this.received += length;
      done += length;
    }
  }
}

/**
 * Writes `total` pattern bytes (from stream offset 0) in random pieces of 1 to `maxPiece` bytes,
 * waiting for 'drain' when the socket is full and stalling 1 % of the time (1-20 ms), then calls
 * `onDone` unless the socket was destroyed first: the soak's restless writers, on both ends.
 * `random` returns numbers in [0, 1); a seeded one makes the pieces replay.
 */
export function writeRestlessly(socket, total, { maxPiece, random = Math.random, onDone }) {
  let sent = 0;
  const next = () => {
    while (sent < total && !socket.destroyed) {
      const n = Math.min(total - sent, 1 + Math.floor(random() * maxPiece));
      let fits = true;
      for (let at = 0; at < n; ) {
        const piece = Math.min(n - at, PERIOD);
        fits = socket.write(patternAt(sent + at, piece));
        at += piece;
      }
      sent += n;
      if (!fits) return void socket.once("drain", next);
      if (random() < 0.01) return void setTimeout(next, 1 + Math.floor(random() * 20));
    }
    if (!socket.destroyed) onDone();
  };
  next();
}

/**
 * Writes `total` pattern bytes (from stream offset `start`) in `chunkBytes` views, waiting for
 * 'drain' whenever the socket asks: the sender's memory stays at one chunk whatever the total.
 * Resolves once everything is handed to the socket; stops early when `shouldStop()` says so.
 */
export function writePattern(
  socket,
  total,
  { start = 0, chunkBytes = 256 * 1024, shouldStop } = {},
) {
  return new Promise((resolve, reject) => {
    let sent = 0;
    const onError = (err) => finish(err);
    const onClose = () => finish(new Error(`socket closed after ${sent} of ${total} bytes`));
    const finish = (err) => {
      socket.off("drain", pump);
      socket.off("error", onError);
      socket.off("close", onClose);
      if (err) reject(err);
      else resolve(sent);
    };
    function pump() {
      while (sent < total) {
        if (shouldStop?.()) return finish(null);
        const length = Math.min(chunkBytes, total - sent);
        const more = socket.write(patternAt(start + sent, length));
        sent += length;
        if (!more) return;
      }
      finish(null);
    }
    socket.on("drain", pump);
    socket.on("error", onError);
    socket.on("close", onClose);
    pump();
  });
}
