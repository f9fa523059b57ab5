import { readFileSync } from "node:fs";

/**
 * The default for `maxConnections`: a share of the process's open-file limit, so that a flood of
 * connections is refused by the library (with an event) before accept() runs out of descriptors.
 * At the limit libuv closes what it cannot accept without telling anyone, every listener of the
 * process stops taking connections (clients cannot reconnect), and while another thread competes
 * for descriptors its accept loop can spin at 100 % CPU. A tenth and 32 more are left to the
 * rest of the application (files, outgoing connections, the listeners themselves).
 */
export function defaultMaxConnections(readLimits: () => string = readProcLimits): number {
  const soft = openFileLimit(readLimits);
  if (soft === null) return Number.POSITIVE_INFINITY;
  return Math.max(16, Math.floor(soft * 0.9) - 32);
}

/**
 * Of `maxConnections`, this many are kept for control connections: visitors are refused first, so
 * a visitor flood leaves room for clients to connect and reconnect.
 */
export function controlReserve(maxConnections: number): number {
  if (!Number.isFinite(maxConnections)) return 0;
  return Math.min(256, Math.floor(maxConnections / 8));
}

/** The soft open-file limit, or null where it cannot be read (no /proc, or "unlimited"). */
export function openFileLimit(readLimits: () => string = readProcLimits): number | null {
  let text: string;
  try {
    text = readLimits();
  } catch {
    return null;
  }
  const line = /^Max open files\s+(\S+)/m.exec(text);
  const soft = line ? Number(line[1]) : Number.NaN;
  return Number.isInteger(soft) && soft > 0 ? soft : null;
}

function readProcLimits(): string {
  return readFileSync("/proc/self/limits", "latin1");
}
