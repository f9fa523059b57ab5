/**
 * Reconnect delay for the `attempt`-th consecutive failure (0-based): `initialMs` doubling up to
 * `maxMs`, minus up to 20 % random jitter so that many devices cut off together (a server restart)
 * do not all come back in the same instant.
 */
export function backoffDelay(
  attempt: number,
  initialMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return Math.max(1, Math.round(base * (1 - 0.2 * random())));
}
