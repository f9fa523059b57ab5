/**
 * Parent <-> child messaging over the fork() IPC channel: numbered requests, one reply each.
 * Children announce themselves with `{ type: "ready", ... }` once they listen.
 */
import { fork } from "node:child_process";

/** In a child: answers the parent's requests with `handlers[cmd](args)` (sync or async). */
export function serveParent(handlers) {
  process.on("message", async (message) => {
    if (!message || typeof message.id !== "number") return;
    const handler = handlers[message.cmd];
    try {
      if (!handler) throw new Error(`unknown command ${message.cmd}`);
      const result = await handler(message.args ?? {});
      process.send({ id: message.id, ok: true, result });
    } catch (err) {
      process.send({
        id: message.id,
        ok: false,
        error: { message: err?.message ?? String(err), code: err?.code ?? null },
      });
    }
  });
  // The parent going away (crash, Ctrl-C) must not leave children behind.
  process.on("disconnect", () => process.exit(0));
}

export function announceReady(info) {
  process.send({ type: "ready", ...info });
}

/**
 * Peaks of `process.memoryUsage()` fields (MiB), sampled every 100 ms: shows whether peak RSS is
 * JS heap, or Buffers (`arrayBuffers`) waiting for the garbage collector.
 */
const memoryPeaks = {};
setInterval(() => {
  const usage = process.memoryUsage();
  for (const key of ["heapTotal", "heapUsed", "external", "arrayBuffers"]) {
    memoryPeaks[key] = Math.max(memoryPeaks[key] ?? 0, usage[key] / 1048576);
  }
}, 100).unref();

/** What every child answers besides its own commands. */
export const commonHandlers = {
  memoryPeaks: () => ({ ...memoryPeaks }),
  cpu: () => {
    const { user, system } = process.cpuUsage();
    return { userUs: user, systemUs: system };
  },
  /** Bytes still live after a full collection: JS heap plus Buffers (what is really held). */
  live: () => {
    if (typeof globalThis.gc === "function") {
      globalThis.gc();
      globalThis.gc();
    }
    const { heapUsed, arrayBuffers } = process.memoryUsage();
    return heapUsed + arrayBuffers;
  },
  gc: () => {
    if (typeof globalThis.gc === "function") {
      globalThis.gc();
      globalThis.gc();
    }
    return true;
  },
};

/** In the parent: starts `script` as a child process and returns a handle to talk to it. */
export function startChild(name, script, args = [], { execArgv = [] } = {}) {
  const child = fork(script, args, {
    execArgv: ["--expose-gc", ...execArgv],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const waiting = new Map();
  let nextId = 1;
  let exited = null;
  const ready = new Promise((resolve, reject) => {
    child.on("message", (message) => {
      if (message?.type === "ready") {
        resolve(message);
        return;
      }
      const entry = waiting.get(message?.id);
      if (!entry) return;
      waiting.delete(message.id);
      if (message.ok) entry.resolve(message.result);
      else {
        const err = new Error(`${name}: ${message.error.message}`);
        err.code = message.error.code;
        entry.reject(err);
      }
    });
    child.on("exit", (code, signal) => {
      exited = { code, signal };
      const err = new Error(`${name} exited (code ${code}, signal ${signal})`);
      reject(err);
      for (const entry of waiting.values()) entry.reject(err);
      waiting.clear();
    });
  });
  ready.catch(() => {});
  return {
    name,
    pid: child.pid,
    ready,
    call(cmd, callArgs = {}) {
      if (exited) return Promise.reject(new Error(`${name} has exited`));
      const id = nextId++;
      return new Promise((resolve, reject) => {
        waiting.set(id, { resolve, reject });
        child.send({ id, cmd, args: callArgs });
      });
    },
    /** Asks the child to stop cleanly (so --cpu-prof profiles are written), then kills it. */
    async stop(graceMs = 8_000) {
      if (exited) return;
      const gone = new Promise((resolve) => child.once("exit", resolve));
      this.call("stop").catch(() => {});
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await gone;
      clearTimeout(timer);
    },
  };
}
