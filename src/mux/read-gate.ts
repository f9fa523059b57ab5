import type { Socket } from "node:net";
import { constants } from "node:os";
import { isTlsSocket } from "../lazy-builtins.js";
import { isReusingReads } from "./reusable-reads.js";

/** The part of a plain TCP socket's native handle that starts and stops reading. */
interface ReadableHandle {
  reading: boolean;
  readStart(): number;
  readStop(): number;
}

const STOPPED = Symbol("w3p.readStopped");
const BENIGN_START_FAILURES = new Set([constants.errno.EALREADY, constants.errno.ENOTCONN]);
type GatedSocket = Socket & { _handle?: unknown; [STOPPED]?: boolean };

function readableHandle(socket: GatedSocket): ReadableHandle | null {
  if (isTlsSocket(socket) || socket.connecting || socket.destroyed) return null;
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
 *
 * A socket reading into a reusable buffer is stopped without telling the stream machinery: Node
 * restarts such a socket's reads from any `read(0)` it makes while it believes the handle is
 * stopped (a `resume()` scheduled a tick earlier does one), and a read we did not ask for would
 * overwrite a buffer whose bytes are still queued for writing. So its handle keeps reporting
 * `reading`, and only `resumeReading` starts it again.
 */
export function stopReading(socket: Socket): void {
  const gated = socket as GatedSocket;
  if (isReusingReads(socket)) {
    // pause() keeps the stream's state right (isPaused(), no 'end' before resume); for a reusing
    // socket Node also stops the handle and marks it stopped, which is then taken back.
    socket.pause();
    const handle = readableHandle(gated);
    if (!handle) return;
    if (!gated[STOPPED] && handle.readStop() === 0) gated[STOPPED] = true;
    handle.reading = true;
    return;
  }
  socket.pause();
  const handle = readableHandle(gated);
  if (!handle?.reading) return;
  handle.reading = false;
  if (handle.readStop() === 0) gated[STOPPED] = true;
  else handle.reading = true;
}

/**
 * Stops only the kernel reads of a socket reading into a reusable buffer, for a moment (until a
 * write it queued has gone out): the stream's own pause()/resume() machinery, a scheduled tick
 * and events on every chunk, is skipped. `resumeReading` undoes it. Other sockets get
 * `stopReading`.
 */
export function holdReads(socket: Socket): void {
  const gated = socket as GatedSocket;
  if (!isReusingReads(socket)) {
    stopReading(socket);
    return;
  }
  const handle = readableHandle(gated);
  if (!handle || gated[STOPPED] || !handle.reading) return;
  if (handle.readStop() === 0) gated[STOPPED] = true;
}

/** Undoes `stopReading`: restarts the kernel reads it stopped, then resumes the stream. */
export function resumeReading(socket: Socket): void {
  const gated = socket as GatedSocket;
  if (gated[STOPPED]) {
    gated[STOPPED] = false;
    const handle = readableHandle(gated);
    // A reusing socket's handle still says `reading` (see above); anything else was marked
    // stopped. Either way only a handle that is really stopped is started.
    if (handle && (isReusingReads(socket) ? handle.reading : !handle.reading)) {
      handle.reading = true;
      const status = handle.readStart();
      // Already reading is what was asked for, and a socket whose peer has finished sending
      // (not connected for reading any more) has nothing left to read: neither is a failure.
      if (status !== 0 && !BENIGN_START_FAILURES.has(-status)) {
        socket.destroy(new Error(`restarting reads failed (libuv status ${status})`));
        return;
      }
    }
  }
  socket.resume();
}

/** Whether the socket is not reading: paused, or its kernel reads held by the gate. */
export function readsStopped(socket: Socket): boolean {
  return socket.isPaused() || (socket as GatedSocket)[STOPPED] === true;
}
