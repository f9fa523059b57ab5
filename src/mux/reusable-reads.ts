import { Socket } from "node:net";
import { TLSSocket } from "node:tls";

/**
 * Node's slots for sockets made with the `onread` option. They are not exported, so they are
 * found by their descriptions on a fresh socket; if a Node release renames them, busy sockets
 * simply keep the ordinary 'data' path.
 */
interface ReadSlots {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

const slots = findSlots();

function findSlots(): ReadSlots | null {
  try {
    const probe = new Socket();
    const byName = new Map(Object.getOwnPropertySymbols(probe).map((s) => [s.description, s]));
    probe.destroy();
    const buffer = byName.get("kBuffer");
    const callback = byName.get("kBufferCb");
    const generator = byName.get("kBufferGen");
    return buffer && callback && generator ? { buffer, callback, generator } : null;
  } catch {
    return null;
  }
}

/** What one kernel read fills at most (the size Node itself reads with). */
export const REUSABLE_READ_BYTES = 64 * 1024;
/** A read at least this large marks a socket as busy enough to switch. */
export const BUSY_READ_BYTES = 32 * 1024;
/**
 * How many sockets of one kind may hold a buffer of their own, process-wide. A switched socket
 * keeps its 64 KiB until it closes, so each budget bounds what idle-after-busy sockets hold
 * (2 MiB each). Control connections have a budget of their own: every byte of every stream
 * crosses them, so a thousand busy visitors must not use up their share.
 */
export class ReadBufferBudget {
  private used = 0;
  constructor(readonly max: number) {}

  get inUse(): number {
    return this.used;
  }

  /** @internal */
  take(): boolean {
    if (this.used >= this.max) return false;
    this.used++;
    return true;
  }

  /** @internal */
  readonly give = (): void => {
    this.used--;
  };
}

export const CONTROL_READ_BUFFERS = new ReadBufferBudget(32);
export const STREAM_READ_BUFFERS = new ReadBufferBudget(32);
/** Marks a switched socket (the read gate stops and starts those differently). */
const REUSING = Symbol("w3p.reusingReads");

/**
 * Handles one chunk read into the socket's reusable buffer. The chunk is only valid during the
 * call: return true when anything still refers to it afterwards (a write still queued, bytes kept
 * for later, a listener that was handed it), and the next read goes into a fresh buffer instead.
 */
export type ReusedChunkHandler = (chunk: Buffer) => boolean;

interface UserBufferHandle {
  reading: boolean;
  useUserBuffer(buffer: Uint8Array): void;
}

/**
 * Switches a busy plain TCP socket from a fresh 64 KiB allocation per read (garbage for the
 * collector, which on a bulk transfer lets tens of MiB pile up before it runs) to reading into
 * one buffer it keeps. This is what Node's `onread` socket option does for sockets it dials; it is
 * set up here the same way for any socket, including accepted ones, once it is seen moving data.
 * 'data' events stop for the socket; 'end', pause() and resume() keep working as before.
 *
 * Returns false, changing nothing, when the socket cannot switch: TLS (its handle decrypts), no
 * native handle, paused, bytes already waiting in the stream's buffer, or `budget` used up.
 */
export function readIntoReusableBuffer(
  socket: Socket,
  onChunk: ReusedChunkHandler,
  budget: ReadBufferBudget,
): boolean {
  if (!slots || budget.inUse >= budget.max) return false;
  if (socket instanceof TLSSocket || socket.destroyed || socket.readableLength > 0) return false;
  const handle = (socket as Socket & { _handle?: Partial<UserBufferHandle> | null })._handle;
  if (!handle || typeof handle.useUserBuffer !== "function") return false;
  // Only a socket that is reading and flowing: one switched while stopped would be restarted by
  // the stream machinery behind the stopper's back (see read-gate.ts).
  if (handle.reading !== true || socket.readableFlowing !== true) return false;
  if (!budget.take()) return false;

  let buffer = Buffer.allocUnsafeSlow(REUSABLE_READ_BYTES);
  let retained = false;
  const socketSlots = socket as unknown as Record<symbol, unknown>;
  // Node reads into `buffer`, calls back, then asks the generator where the next read goes.
  socketSlots[slots.callback] = (bytes: number, into: Buffer): void => {
    retained = onChunk(into.subarray(0, bytes));
  };
  socketSlots[slots.generator] = (): Buffer => {
    if (retained) {
      retained = false;
      buffer = Buffer.allocUnsafeSlow(REUSABLE_READ_BYTES);
    }
    return buffer;
  };
  socketSlots[slots.buffer] = buffer;
  handle.useUserBuffer(buffer);
  socketSlots[REUSING] = true;
  socket.once("close", budget.give);
  return true;
}

/** Whether `socket` reads into a reusable buffer (its chunks bypass pause() and 'data'). */
export function isReusingReads(socket: Socket): boolean {
  return (socket as unknown as Record<symbol, unknown>)[REUSING] === true;
}
