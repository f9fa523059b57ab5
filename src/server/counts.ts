/** Per-key counts (connections, ports per remote address) that forget a key at zero. */

/** `amount` more for `key`. */
export function countUp(counts: Map<string, number>, key: string, amount = 1): void {
  counts.set(key, (counts.get(key) ?? 0) + amount);
}

/** `amount` fewer for `key`; a key whose count reaches zero is forgotten (the map stays small). */
export function countDown(counts: Map<string, number>, key: string, amount = 1): void {
  const left = (counts.get(key) ?? amount) - amount;
  if (left > 0) counts.set(key, left);
  else counts.delete(key);
}
