import { Socket } from "node:net";
import { isTlsSocket } from "../lazy-builtins.js";

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
 * keeps its buffer until it closes (spares only while its reads need them), so each budget bounds
 * what idle-after-busy sockets hold (32 sockets with one buffer each: 2 MiB). Control connections
 * have a budget of their own: every byte of every stream crosses them, so a thousand busy
 * visitors must not use up their share.
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
 * call: return true when anything still refers to it afterwards in a way that cannot be tracked
 * (bytes kept for later, a listener that was handed it), and the next read goes into a fresh
 * buffer instead. A write of part of the chunk is tracked with `hold`: it returns the callback to
 * pass to that write; until every such callback has run, the buffer is set aside and the reads go
 * into a spare one.
 */
export type ReusedChunkHandler = (chunk: Buffer, hold: () => () => void) => boolean;

/**
 * Spares a busy socket may keep (4 MiB, what one stream's largest window keeps in flight). Let go
 * instead, they come back as fresh allocations at the next burst: freed and allocated again at
 * this pace, they fragment the C heap, which then keeps 10-20 MiB more resident than in use.
 */
const MAX_SPARE_BUFFERS = 64;
/** Spares that none of a socket's reads needed for this long are let go. */
const SPARE_TRIM_MS = 1_000;

/** A socket's spares, trimmed by the shared timer while it keeps any. */
interface SparePool {
  /** Lets go of the spares no read needed since the last call; false once none are left. */
  trim(): boolean;
  readonly size: number;
}

/** Every socket's pool while it keeps spares (a pool leaves only once it has none). */
const poolsWithSpares = new Set<SparePool>();
let trimTimer: NodeJS.Timeout | null = null;

function watchSpares(pool: SparePool): void {
  poolsWithSpares.add(pool);
  if (trimTimer) return;
  trimTimer = setInterval(trimSpares, SPARE_TRIM_MS);
  trimTimer.unref();
}

function trimSpares(): void {
  for (const pool of poolsWithSpares) {
    if (!pool.trim()) poolsWithSpares.delete(pool);
  }
  if (poolsWithSpares.size === 0 && trimTimer) {
    clearInterval(trimTimer);
    trimTimer = null;
  }
}

/** Spare read buffers kept, process-wide (for tests and debugging). */
export function spareReadBuffers(): number {
  let spares = 0;
  for (const pool of poolsWithSpares) spares += pool.size;
  return spares;
}

/** One read buffer and the writes of its bytes still in flight. */
interface ReadSlot {
  readonly buffer: Buffer;
  holds: number;
  /** Set aside while `holds` > 0; it becomes a spare when they are done. */
  waiting: boolean;
  /** Referred to in ways nobody tracks: never read into again. */
  abandoned: boolean;
  readonly release: () => void;
}

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
  if (!slots) return false;
  if (isTlsSocket(socket) || socket.destroyed || socket.readableLength > 0) return false;
  const handle = (socket as Socket & { _handle?: Partial<UserBufferHandle> | null })._handle;
  if (!handle || typeof handle.useUserBuffer !== "function") return false;
  // Only a socket that is reading and flowing: one switched while stopped would be restarted by
  // the stream machinery behind the stopper's back (see read-gate.ts).
  if (handle.reading !== true || socket.readableFlowing !== true) return false;
  if (!budget.take()) return false;

  // A stack: the spares at the bottom are the ones the reads needed least recently.
  const spares: ReadSlot[] = [];
  /** The fewest spares left unused at any read since the last trim. */
  let unusedSpares = 0;
  const pool: SparePool = {
    trim: () => {
      if (unusedSpares > 0) spares.splice(0, unusedSpares);
      unusedSpares = spares.length;
      return spares.length > 0;
    },
    get size() {
      return spares.length;
    },
  };
  const newSlot = (): ReadSlot => {
    const slot: ReadSlot = {
      buffer: Buffer.allocUnsafeSlow(REUSABLE_READ_BYTES),
      holds: 0,
      waiting: false,
      abandoned: false,
      release: () => {
        slot.holds--;
        if (slot.holds > 0 || !slot.waiting) return;
        slot.waiting = false;
        if (slot.abandoned || spares.length >= MAX_SPARE_BUFFERS || socket.destroyed) return;
        spares.push(slot);
        watchSpares(pool);
      },
    };
    return slot;
  };
  let current = newSlot();
  let retained = false;
  // Callbacks run in order and synchronously within one read, so `current` is the chunk's slot.
  const hold = (): (() => void) => {
    current.holds++;
    return current.release;
  };
  const socketSlots = socket as unknown as Record<symbol, unknown>;
  // Node reads into the current buffer, calls back, then asks the generator where the next read
  // goes: the same buffer unless its bytes are still referred to.
  socketSlots[slots.callback] = (bytes: number, into: Buffer): void => {
    retained = onChunk(into.subarray(0, bytes), hold);
  };
  socketSlots[slots.generator] = (): Buffer => {
    if (retained || current.holds > 0) {
      current.abandoned = retained;
      current.waiting = current.holds > 0;
      current = spares.pop() ?? newSlot();
      if (spares.length < unusedSpares) unusedSpares = spares.length;
      retained = false;
    }
    return current.buffer;
  };
  socketSlots[slots.buffer] = current.buffer;
  handle.useUserBuffer(current.buffer);
  socketSlots[REUSING] = true;
  socket.once("close", () => {
    budget.give();
    spares.length = 0;
    poolsWithSpares.delete(pool);
  });
  return true;
}

/** Whether `socket` reads into a reusable buffer (its chunks bypass pause() and 'data'). */
export function isReusingReads(socket: Socket): boolean {
  return (socket as unknown as Record<symbol, unknown>)[REUSING] === true;
}
