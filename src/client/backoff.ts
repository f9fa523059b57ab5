/**
 * Reconnect delay for the `attempt`-th consecutive failure (0-based): `initialMs` doubling up to
 * `maxMs` (1 s, 2 s, 4 s ... 30 s by default, as W3P and API.md have it), minus up to `jitter`
 * of it at random (0-1) so that many devices cut off together (a server restart) do not all come
 * back in the same instant. Jitter is opt-in: code written for W3P may expect the exact delays.
 */
export function backoffDelay(
  attempt: number,
  initialMs: number,
  maxMs: number,
  jitter = 0,
  random: () => number = Math.random,
): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  if (jitter <= 0) return base;
  return Math.max(1, Math.round(base * (1 - jitter * random())));
}
