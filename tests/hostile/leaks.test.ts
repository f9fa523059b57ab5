/**
 * No leaks: after 1,000 visitor connect/close cycles and 100 client connect/disconnect cycles,
 * handles, file descriptors, timers, listeners and the server's own bookkeeping are back to their
 * baseline.
 *
 * Tolerance: socket and server handles, listeners and bookkeeping must match exactly. Timers
 * (counted by wrapping the global timer functions, unref'd ones included) may differ by 2: the
 * polling in `until` and node:test keep one or two of their own, while a leak of one timer per
 * cycle would show up as hundreds. File descriptors may differ by 2 (libuv opens and closes its own
 * descriptors, e.g. for the threadpool's DNS lookups of "localhost"; a leak per cycle would again
 * show up as hundreds).
 */
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import type { Socket } from "node:net";
import { test } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import type { TunnelServer } from "../../src/server/tunnel-server.js";
import { echoService, onceWithin, readBytes, startTunnel, until } from "../helpers/net.js";
import { rawConnect } from "../helpers/raw-peer.js";

const VISITOR_CYCLES = 1_000;
const CLIENT_CYCLES = 100;
const TIMER_TOLERANCE = 2;
const FD_TOLERANCE = 2;

/**
 * Counts live timers, unref'd ones included (getActiveResourcesInfo() lists only timers that keep
 * the loop alive, and the library unrefs all of its own): wraps the global timer functions for
 * the duration of the test.
 */
function trackTimers(t: Parameters<typeof rawConnect>[0]): () => number {
  const live = new Set<unknown>();
  const g = globalThis as unknown as Record<string, (...args: unknown[]) => unknown>;
  const saved = {
    setTimeout: g.setTimeout!,
    setInterval: g.setInterval!,
    clearTimeout: g.clearTimeout!,
    clearInterval: g.clearInterval!,
  };
  g.setTimeout = (callback: unknown, ...rest: unknown[]) => {
    const timer = saved.setTimeout(
      (...args: unknown[]) => {
        live.delete(timer);
        (callback as (...a: unknown[]) => void)(...args);
      },
      ...rest,
    );
    live.add(timer);
    return timer;
  };
  g.setInterval = (...args: unknown[]) => {
    const timer = saved.setInterval(...args);
    live.add(timer);
    return timer;
  };
  g.clearTimeout = (timer: unknown) => {
    live.delete(timer);
    return saved.clearTimeout(timer);
  };
  g.clearInterval = (timer: unknown) => {
    live.delete(timer);
    return saved.clearInterval(timer);
  };
  t.after(() => Object.assign(g, saved));
  return () => live.size;
}

let liveTimers: () => number = () => 0;

interface Snapshot {
  timers: number;
  resources: Record<string, number>;
  fds: number;
  serverListeners: number;
  clientListeners: number;
  processListeners: number;
  serverSockets: number;
  clientLocalSockets: number;
  tunnels: number;
  pending: number;
  heldPorts: number;
  publicPorts: number;
  connections: number;
}

function countBy(items: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const item of items) out[item] = (out[item] ?? 0) + 1;
  return out;
}

function totalListeners(emitter: NodeJS.EventEmitter): number {
  return emitter.eventNames().reduce((sum, name) => sum + emitter.listenerCount(name), 0);
}

function snapshot(server: TunnelServer, client: TunnelClient): Snapshot {
  const stats = server.stats();
  // Private bookkeeping, read on purpose: a Set that only grows is a leak even if handles close.
  const internals = server as unknown as { sockets: Set<Socket> };
  const clientInternals = client as unknown as { localSockets: Set<Socket> };
  return {
    timers: liveTimers(),
    resources: countBy(process.getActiveResourcesInfo()),
    fds: readdirSync("/proc/self/fd").length,
    serverListeners: totalListeners(server.events),
    clientListeners: totalListeners(client.events),
    processListeners: process
      .eventNames()
      .reduce((sum, name) => sum + process.listenerCount(name as string), 0),
    serverSockets: internals.sockets.size,
    clientLocalSockets: clientInternals.localSockets.size,
    tunnels: stats.tunnels.length,
    pending: stats.pendingConnections,
    heldPorts: stats.heldPorts.length,
    publicPorts: stats.publicPorts,
    connections: stats.connections,
  };
}

/** What differs from the baseline beyond the tolerances (empty = back to baseline). */
function drift(base: Snapshot, now: Snapshot): string[] {
  const out: string[] = [];
  const kinds = new Set([...Object.keys(base.resources), ...Object.keys(now.resources)]);
  for (const kind of kinds) {
    const delta = (now.resources[kind] ?? 0) - (base.resources[kind] ?? 0);
    const tolerance = kind === "Timeout" ? TIMER_TOLERANCE : 0;
    if (delta > tolerance) out.push(`${kind} +${delta}`);
  }
  if (now.timers - base.timers > TIMER_TOLERANCE) out.push(`timers +${now.timers - base.timers}`);
  if (now.fds - base.fds > FD_TOLERANCE) out.push(`fds +${now.fds - base.fds}`);
  for (const key of [
    "serverListeners",
    "clientListeners",
    "processListeners",
    "serverSockets",
    "clientLocalSockets",
    "tunnels",
    "pending",
    "heldPorts",
    "publicPorts",
    "connections",
  ] as const) {
    if (now[key] !== base[key]) out.push(`${key} ${base[key]} -> ${now[key]}`);
  }
  return out;
}

async function backToBaseline(server: TunnelServer, client: TunnelClient, base: Snapshot) {
  let last: string[] = [];
  await until(
    () => {
      last = drift(base, snapshot(server, client));
      return last.length === 0;
    },
    10_000,
    "baseline",
  ).catch(() => assert.fail(`not back to baseline: ${last.join(", ")}`));
}

async function visitorCycle(port: number, t: Parameters<typeof rawConnect>[0], i: number) {
  const visitor = await rawConnect(t, port);
  const payload = `visitor-${i}`;
  visitor.write(payload);
  await readBytes(visitor, payload.length);
  // Half end politely, half reset: both paths must clean up.
  if (i % 2 === 0) visitor.end();
  else visitor.destroy();
  if (!visitor.closed) await onceWithin(visitor, "close");
}

test("1,000 visitor and 100 client cycles leave nothing behind", async (t) => {
  liveTimers = trackTimers(t);
  const service = await echoService(t);
  const { server, client, controlPort, publicPort } = await startTunnel(t, service.port, {
    portLeaseMs: 300,
  });
  let visitors = 0;
  let tunnelsCreated = 0;
  const countVisitor = () => visitors++;
  const countTunnel = () => tunnelsCreated++;
  server.events.on("visitor-connected", countVisitor);
  server.events.on("tunnel-created", countTunnel);
  // Warm up once so one-time allocations (lazy modules, DNS of "localhost") are in the baseline.
  await visitorCycle(publicPort, t, 0);
  await backToBaseline(server, client, snapshot(server, client));
  const base = snapshot(server, client);
  t.diagnostic(`baseline: ${JSON.stringify(base)}`);

  const batch = 50;
  for (let start = 0; start < VISITOR_CYCLES; start += batch) {
    await Promise.all(
      Array.from({ length: batch }, (_, i) => visitorCycle(publicPort, t, start + i)),
    );
  }
  await backToBaseline(server, client, base);

  for (let i = 0; i < CLIENT_CYCLES; i++) {
    // Half with an identity: its port is held for the lease, then must be released too.
    const extra = new TunnelClient({
      tunnelServerHost: "127.0.0.1",
      tunnelServerPort: controlPort,
      localServiceHost: "127.0.0.1",
      localServicePort: service.port,
      ...(i % 2 === 0 ? { clientId: "cycling" } : {}),
    });
    const port = await extra.start();
    if (i % 10 === 0) await visitorCycle(port, t, i);
    await extra.stop();
  }
  assert.equal(visitors, 1 + VISITOR_CYCLES + CLIENT_CYCLES / 10);
  assert.equal(tunnelsCreated, CLIENT_CYCLES);
  await backToBaseline(server, client, base);
  server.events.off("visitor-connected", countVisitor);
  server.events.off("tunnel-created", countTunnel);
  t.diagnostic(`after: ${JSON.stringify(snapshot(server, client))}`);
});
