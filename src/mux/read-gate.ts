import type { Socket } from "node:net";
import { TLSSocket } from "node:tls";

/** The part of a plain TCP socket's native handle that starts and stops reading. */
interface ReadableHandle {
  reading: boolean;
  readStart(): number;
  readStop(): number;
}

const STOPPED = Symbol("w3p.readStopped");
type GatedSocket = Socket & { _handle?: unknown; [STOPPED]?: boolean };

function readableHandle(socket: GatedSocket): ReadableHandle | null {
  if (socket instanceof TLSSocket || socket.connecting || socket.destroyed) return null;
  const handle = socket._handle as Partial<ReadableHandle> | null | undefined;
  if (
    !handle ||
    typeof handle.reading !== "boolean" ||
    typeof handle.readStart !== "function" ||
    typeof handle.readStop !== "function"
  ) {
    return null;
  }
  return handle as ReadableHandle;
}

/**
 * Pauses a socket and stops the kernel reads at once. `socket.pause()` alone keeps reading until
 * the stream's own buffer is full, so each paused socket still takes one more 64 KiB read: with
 * 1,000 paused visitors that is 64 MiB held in the process instead of in the kernel's socket
 * buffers, where it belongs. Node does exactly this itself for sockets made with `onread`; for
 * other plain TCP sockets it is done here through the same handle calls. TLS sockets (whose
 * handle decrypts) are only paused.
 */
export function stopReading(socket: Socket): void {
  socket.pause();
  const gated = socket as GatedSocket;
  const handle = readableHandle(gated);
  if (!handle?.reading) return;
  handle.reading = false;
  if (handle.readStop() === 0) gated[STOPPED] = true;
  else handle.reading = true;
}

/** Undoes `stopReading`: restarts the kernel reads it stopped, then resumes the stream. */
export function resumeReading(socket: Socket): void {
  const gated = socket as GatedSocket;
  if (gated[STOPPED]) {
    gated[STOPPED] = false;
    const handle = readableHandle(gated);
    if (handle && !handle.reading) {
      handle.reading = true;
      const status = handle.readStart();
      if (status !== 0) {
        socket.destroy(new Error(`restarting reads failed (libuv status ${status})`));
        return;
      }
    }
  }
  socket.resume();
}
