/**
 * Bounds on the JSON a peer sends. `JSON.parse` does not refuse deep nesting, it only gets slow:
 * 4 MiB of `[[[[...` took 1.4 s (against 35 ms flat), stalling every tunnel of the process per
 * frame. So nesting is counted first, in one pass over the bytes, and the small JSON frames
 * (OPEN metadata, GOAWAY reasons) have a size cap of their own, far under the frame limit.
 */

/** Deepest nesting of objects and arrays accepted in any JSON from a peer. */
export const MAX_JSON_DEPTH = 32;

/** Largest OPEN metadata or GOAWAY reason (real ones are a few hundred bytes). */
export const MAX_CONTROL_JSON_BYTES = 4096;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACE = 0x7d;
const CLOSE_BRACKET = 0x5d;

/**
 * Whether the JSON text in `bytes` nests objects and arrays deeper than `maxDepth`. Brackets
 * inside strings do not count. It does not validate: malformed text is left to `JSON.parse`.
 */
export function jsonNestsDeeperThan(bytes: Uint8Array, maxDepth: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i];
    if (inString) {
      if (byte === BACKSLASH)
        i++; // the escaped character cannot end the string
      else if (byte === QUOTE) inString = false;
    } else if (byte === QUOTE) {
      inString = true;
    } else if (byte === OPEN_BRACE || byte === OPEN_BRACKET) {
      if (++depth > maxDepth) return true;
    } else if (byte === CLOSE_BRACE || byte === CLOSE_BRACKET) {
      depth--;
    }
  }
  return false;
}

/**
 * Why OPEN metadata or a GOAWAY reason will not be parsed (too large, nested too deep), or null.
 * Worded to follow "the <frame's JSON> ...".
 */
export function controlJsonProblem(payload: Uint8Array): string | null {
  if (payload.length > MAX_CONTROL_JSON_BYTES) {
    return `is ${payload.length} bytes (at most ${MAX_CONTROL_JSON_BYTES})`;
  }
  if (jsonNestsDeeperThan(payload, MAX_JSON_DEPTH)) {
    return `nests deeper than ${MAX_JSON_DEPTH} levels`;
  }
  return null;
}
