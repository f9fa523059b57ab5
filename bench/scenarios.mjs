/**
 * The scenarios and targets of issue 5. Each scenario runs in a fresh environment, measures the
 * direct connection and the tunnel in the same run, and turns its raw figures into table rows:
 * `{ measure, direct, tunnel, ratio, target, met }` (met: true / false / null = no target).
 */
import { cpuSpent } from "./environment.mjs";
import { sampleRss } from "./procfs.mjs";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const fmt = (value, digits = 1) =>
  value === null || value === undefined || Number.isNaN(value) ? "—" : value.toFixed(digits);
const mib = (bytes, digits = 1) => (bytes === null ? "—" : fmt(bytes / MiB, digits));
const ratioOf = (tunnel, direct) => (direct > 0 ? tunnel / direct : null);
const ratioText = (value, base) => (base > 0 ? `${fmt(value / base, 2)}x` : "—");
const cores = ({ cores: c, othersCores }) =>
  [c.server, c.client, c.endpoint, c.service, othersCores].map((v) => fmt(v, 2)).join("/");
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A reference relay chain's bulk figures beside the tunnel's. */
function relayRow(r, what, { up, down, peakRss }) {
  const cpu =
    up.cpuSecondsPerGiB === undefined
      ? ""
      : `; CPU ${fmt(up.cpuSecondsPerGiB, 2)} / ${fmt(down.cpuSecondsPerGiB, 2)} s/GiB`;
  return row(
    `reference: ${what}, MiB/s up / down; CPU; peak RSS`,
    `${fmt(r.directUp.mibPerSecond)} / ${fmt(r.directDown.mibPerSecond)}`,
    `${fmt(up.mibPerSecond)} / ${fmt(down.mibPerSecond)}${cpu}; peak RSS ${mib(peakRss)} MiB`,
    null,
    `floor: ${ratioText(up.mibPerSecond, r.directUp.mibPerSecond)} / ${ratioText(down.mibPerSecond, r.directDown.mibPerSecond)} of direct; tunnel at ${ratioText(r.tunnelUp.mibPerSecond, up.mibPerSecond)} / ${ratioText(r.tunnelDown.mibPerSecond, down.mibPerSecond)} of it`,
    null,
  );
}

/** The reference row of a rate measured through the plain relays (`r.relay`); `measure` follows their name. */
function rateFloorRow(r, measure, digits) {
  return row(
    `reference: 2 plain Node pipe relays${measure}`,
    fmt(r.direct.perSecond, 0),
    `${fmt(r.relay.perSecond, 0)}; ${fmt(r.relay.p50, digits)} / ${fmt(r.relay.p99, digits)}`,
    ratioOf(r.relay.perSecond, r.direct.perSecond),
    `floor; tunnel at ${ratioText(r.tunnel.perSecond, r.relay.perSecond)} of it`,
    null,
  );
}

/** Bulk: RSS of server and client before the transfer, and what the transfer added to it. */
function restRow(r) {
  const rest = (side) => r.atRest[side].rss;
  const growth = (side) => `+${mib(r[side].peak - rest(side))}`;
  return row(
    "reference: RSS MiB at rest before the transfer; peak − rest (server / client)",
    "—",
    `${mib(rest("server"))} / ${mib(rest("client"))}; ${growth("server")} / ${growth("client")}`,
    null,
    "—",
    null,
  );
}

export const SCENARIOS = {
  bulk: {
    describe: "one connection, 1 GiB each way",
    key: (r) =>
      r.tunnelUp.mibPerSecond / r.directUp.mibPerSecond +
      r.tunnelDown.mibPerSecond / r.directDown.mibPerSecond,
    sizes: { full: { bytes: GiB }, quick: { bytes: 128 * MiB } },
    async run(env, { bytes }) {
      const { endpoint } = env;
      // Before any byte moves: how much of the peak is the process itself with the library loaded.
      const atRest = { server: env.memory(env.server), client: env.memory(env.client) };
      const call = (cmd, port) => endpoint.call(cmd, { port, bytes });
      const measured = async (cmd, port) => {
        const before = await env.cpuSnapshot();
        const result = await call(cmd, port);
        result.cpu = cpuSpent(before, await env.cpuSnapshot());
        return result;
      };
      const directUp = await measured("bulkUp", env.directPort);
      const tunnelUp = await measured("bulkUp", env.tunnelPort);
      const directDown = await measured("bulkDown", env.directPort);
      const tunnelDown = await measured("bulkDown", env.tunnelPort);
      const relayed = async (kind) => {
        const port = await env.relayFloorPort(kind);
        const phase = async (cmd) => {
          const before = await env.relayCpuSeconds(kind);
          const result = await call(cmd, port);
          result.cpuSecondsPerGiB = ((await env.relayCpuSeconds(kind)) - before) / (bytes / GiB);
          return result;
        };
        const up = await phase("bulkUp");
        const down = await phase("bulkDown");
        return { up, down, peakRss: await env.relayPeakRss(kind) };
      };
      const plainRelays = await relayed("plain");
      const reusingRelays = await relayed("reuse");
      const relayUp = plainRelays.up;
      const relayDown = plainRelays.down;
      const relayPeakRss = plainRelays.peakRss;
      const tunnelSeconds = (phase) => phase.cpu.seconds.server + phase.cpu.seconds.client;
      return {
        bytes,
        directUp,
        tunnelUp,
        directDown,
        tunnelDown,
        relayUp,
        relayDown,
        relayPeakRss,
        reusingRelays,
        cpuSecondsPerGiBUp: tunnelSeconds(tunnelUp) / (bytes / GiB),
        cpuSecondsPerGiBDown: tunnelSeconds(tunnelDown) / (bytes / GiB),
        server: env.memory(env.server),
        client: env.memory(env.client),
        atRest,
      };
    },
    rows(r) {
      const up = ratioOf(r.tunnelUp.mibPerSecond, r.directUp.mibPerSecond);
      const down = ratioOf(r.tunnelDown.mibPerSecond, r.directDown.mibPerSecond);
      const cpu = Math.max(r.cpuSecondsPerGiBUp, r.cpuSecondsPerGiBDown);
      const peak = Math.max(r.server.peak, r.client.peak);
      return [
        row(
          "upload MiB/s",
          fmt(r.directUp.mibPerSecond),
          fmt(r.tunnelUp.mibPerSecond),
          up,
          ">= 0.85x",
          up >= 0.85,
        ),
        row(
          "download MiB/s",
          fmt(r.directDown.mibPerSecond),
          fmt(r.tunnelDown.mibPerSecond),
          down,
          ">= 0.85x",
          down >= 0.85,
        ),
        row(
          "CPU s/GiB, server + client (up / down)",
          "—",
          `${fmt(r.cpuSecondsPerGiBUp, 2)} / ${fmt(r.cpuSecondsPerGiBDown, 2)}`,
          null,
          "<= 1.2",
          cpu <= 1.2,
        ),
        row(
          "peak RSS MiB (server / client)",
          "—",
          `${mib(r.server.peak)} / ${mib(r.client.peak)}`,
          null,
          "<= 64 each",
          peak <= 64 * MiB,
        ),
        ...(r.atRest ? [restRow(r)] : []),
        relayRow(r, "2 plain Node pipe relays", {
          up: r.relayUp,
          down: r.relayDown,
          peakRss: r.relayPeakRss,
        }),
        ...(r.reusingRelays ? [relayRow(r, "2 buffer-reusing Node relays", r.reusingRelays)] : []),
        row(
          "cores busy up; down (server/client/visitors/service/others)",
          `${cores(r.directUp.cpu)}; ${cores(r.directDown.cpu)}`,
          `${cores(r.tunnelUp.cpu)}; ${cores(r.tunnelDown.cpu)}`,
          null,
          "—",
          null,
        ),
      ];
    },
  },

  rtt: {
    describe: "sequential 64-byte round trips on one connection",
    key: (r) => r.tunnel.perSecond / r.direct.perSecond,
    sizes: { full: { count: 20_000, size: 64 }, quick: { count: 2_000, size: 64 } },
    async run(env, sizes) {
      const direct = await env.endpoint.call("rtt", { port: env.directPort, ...sizes });
      const tunnel = await env.endpoint.call("rtt", { port: env.tunnelPort, ...sizes });
      const relay = await env.endpoint.call("rtt", { port: await env.relayFloorPort(), ...sizes });
      return { ...sizes, direct, tunnel, relay };
    },
    rows(r) {
      const ratio = ratioOf(r.tunnel.perSecond, r.direct.perSecond);
      return [
        row(
          `round trips/s (${r.count})`,
          fmt(r.direct.perSecond, 0),
          fmt(r.tunnel.perSecond, 0),
          ratio,
          ">= 0.6x",
          ratio >= 0.6,
        ),
        row(
          "p50 / p99 ms",
          `${fmt(r.direct.p50, 3)} / ${fmt(r.direct.p99, 3)}`,
          `${fmt(r.tunnel.p50, 3)} / ${fmt(r.tunnel.p99, 3)}`,
          null,
          "—",
          null,
        ),
        rateFloorRow(r, ", round trips/s; p50 / p99 ms", 3),
      ];
    },
  },

  connect: {
    describe: "sequential short connections: connect, echo 64 B, close",
    key: (r) => r.tunnel.perSecond,
    sizes: { full: { count: 2_000, size: 64 }, quick: { count: 300, size: 64 } },
    async run(env, sizes) {
      const direct = await env.endpoint.call("connect", { port: env.directPort, ...sizes });
      const tunnel = await env.endpoint.call("connect", { port: env.tunnelPort, ...sizes });
      const relayPort = await env.relayFloorPort();
      const relay = await env.endpoint.call("connect", { port: relayPort, ...sizes });
      return { ...sizes, direct, tunnel, relay };
    },
    rows(r) {
      const ratio = ratioOf(r.tunnel.perSecond, r.direct.perSecond);
      return [
        row(
          `connections/s (${r.count})`,
          fmt(r.direct.perSecond, 0),
          fmt(r.tunnel.perSecond, 0),
          ratio,
          ">= 700/s",
          r.tunnel.perSecond >= 700,
        ),
        row(
          "connect-to-echo p50 / p99 ms",
          `${fmt(r.direct.p50, 2)} / ${fmt(r.direct.p99, 2)}`,
          `${fmt(r.tunnel.p50, 2)} / ${fmt(r.tunnel.p99, 2)}`,
          null,
          "—",
          null,
        ),
        // Older results have no relay run.
        ...(r.relay
          ? [
              rateFloorRow(
                r,
                " (each dials the next hop), connections/s; connect-to-echo p50 / p99 ms",
                2,
              ),
            ]
          : []),
      ];
    },
  },

  concurrency: {
    describe: "streams at once, each echoing 1 MiB",
    key: (r) => r.tunnel.mibPerSecond / r.direct.mibPerSecond,
    sizes: { full: { streams: 1_000, bytes: MiB }, quick: { streams: 200, bytes: MiB } },
    async run(env, sizes) {
      const direct = await env.endpoint.call("concurrency", { port: env.directPort, ...sizes });
      const tunnel = await env.endpoint.call("concurrency", { port: env.tunnelPort, ...sizes });
      // The floor: the same thousand streams through two buffer-reusing relays, one connection
      // per stream each (the tunnel carries them all on one).
      const relay = await env.endpoint.call("concurrency", {
        port: await env.relayFloorPort("reuse"),
        ...sizes,
      });
      return {
        ...sizes,
        direct,
        tunnel,
        relay,
        server: env.memory(env.server),
        client: env.memory(env.client),
      };
    },
    rows(r) {
      const ratio = ratioOf(r.tunnel.mibPerSecond, r.direct.mibPerSecond);
      return [
        row(
          `aggregate MiB/s (${r.streams} x ${mib(r.bytes, 0)} MiB)`,
          fmt(r.direct.mibPerSecond),
          fmt(r.tunnel.mibPerSecond),
          ratio,
          ">= 0.5x",
          ratio >= 0.5,
        ),
        row(
          "slowest stream s",
          fmt(r.direct.slowestSeconds, 2),
          fmt(r.tunnel.slowestSeconds, 2),
          null,
          "—",
          null,
        ),
        // Older results have no relay run.
        ...(r.relay
          ? [
              row(
                "reference: 2 buffer-reusing Node relays, aggregate MiB/s; slowest stream s",
                fmt(r.direct.mibPerSecond),
                `${fmt(r.relay.mibPerSecond)}; ${fmt(r.relay.slowestSeconds, 2)}`,
                ratioOf(r.relay.mibPerSecond, r.direct.mibPerSecond),
                `floor; tunnel at ${ratioText(r.tunnel.mibPerSecond, r.relay.mibPerSecond)} of it`,
                null,
              ),
            ]
          : []),
        row(
          "peak RSS MiB (server / client)",
          "—",
          `${mib(r.server.peak)} / ${mib(r.client.peak)}`,
          null,
          "server <= 128",
          r.server.peak <= 128 * MiB,
        ),
      ];
    },
  },

  "slow-reader": {
    describe: "pushing into a service that reads 1 MiB/s, 64-byte pings on a second visitor",
    key: (r) => r.tunnel.p99 ?? Number.POSITIVE_INFINITY,
    sizes: {
      full: { seconds: 15, idleSeconds: 3, pingEveryMs: 10, size: 64 },
      quick: { seconds: 4, idleSeconds: 1, pingEveryMs: 10, size: 64 },
    },
    async run(env, sizes) {
      const measure = async (port, sampled) => {
        const sampler = sampled ? sampleRss([env.server.pid, env.client.pid], 100) : null;
        const live = () => Promise.all([env.server.call("live"), env.client.call("live")]);
        // Live memory (after a full GC) once the pipes are full, a third into the run.
        let liveFrom = null;
        const third = sampled
          ? setTimeout(
              async () => {
                liveFrom = await live();
              },
              (sizes.seconds * 1000) / 3,
            )
          : null;
        const pushed = await env.endpoint.call("slowReader", { port, ...sizes });
        clearTimeout(third);
        const samples = sampler?.stop() ?? [];
        const liveTo = sampled ? await live() : null;
        const { slow } = await env.service.call("serviceStats");
        await env.endpoint.call("closeAll");
        if (slow.firstMismatch >= 0) {
          const err = new Error(`slow reader: wrong byte at offset ${slow.firstMismatch}`);
          err.code = "BENCH_VERIFY";
          throw err;
        }
        return {
          ...pushed,
          serviceRead: slow.bytesRead,
          buffered: pushed.pusherWrote - slow.bytesRead,
          samples,
          live: liveFrom && liveTo ? { from: liveFrom, to: liveTo } : null,
        };
      };
      const direct = await measure(env.directPort, false);
      const tunnel = await measure(env.tunnelPort, true);
      // The floor of the ping latency: the same run through two plain relays, which have no
      // queue of their own to share but cross as many processes as the tunnel does.
      const relay = await measure(await env.relayFloorPort(), false);
      const growth = (index) => {
        // "Flat": RSS once the pipes are full (a third into the run) versus the end.
        const series = tunnel.samples.map((s) => s.rss[index]).filter((v) => v !== null);
        const from = series[Math.floor(series.length / 3)] ?? 0;
        return {
          from,
          to: series[series.length - 1] ?? 0,
          growth: (series[series.length - 1] ?? 0) - from,
        };
      };
      const rss = { server: growth(0), client: growth(1) };
      const live = tunnel.live
        ? {
            server: { from: tunnel.live.from[0], to: tunnel.live.to[0] },
            client: { from: tunnel.live.from[1], to: tunnel.live.to[1] },
          }
        : null;
      delete tunnel.live;
      delete direct.live;
      delete tunnel.samples;
      delete direct.samples;
      delete relay.live;
      delete relay.samples;
      return {
        ...sizes,
        direct,
        tunnel,
        relay,
        rss,
        live,
        server: env.memory(env.server),
        client: env.memory(env.client),
      };
    },
    rows(r) {
      // "Flat RSS" is judged on live memory (after a full GC): RSS also holds Buffers the GC has
      // not collected yet, which at 1 MiB/s pile up for many seconds without being held by anyone.
      const liveGrowth = r.live
        ? Math.max(r.live.server.to - r.live.server.from, r.live.client.to - r.live.client.from)
        : null;
      const arrow = (x) => `${mib(x.from)}→${mib(x.to)}`;
      const answered = (x) => `${x.pingsAnswered}/${x.pingsSent}`;
      return [
        row(
          `bytes buffered at the end MiB (${r.seconds} s)`,
          mib(r.direct.buffered),
          mib(r.tunnel.buffered),
          null,
          "<= 16",
          r.tunnel.buffered <= 16 * MiB,
        ),
        row(
          "live MiB after GC, 1/3 → end (server; client)",
          "—",
          r.live ? `${arrow(r.live.server)}; ${arrow(r.live.client)}` : "—",
          null,
          "flat (<= +4)",
          liveGrowth !== null && liveGrowth <= 4 * MiB,
        ),
        row(
          "RSS MiB, 1/3 → end (server; client)",
          "—",
          `${arrow(r.rss.server)}; ${arrow(r.rss.client)}`,
          null,
          "—",
          null,
        ),
        row(
          "peak RSS MiB (server / client)",
          "—",
          `${mib(r.server.peak)} / ${mib(r.client.peak)}`,
          null,
          "—",
          null,
        ),
        row(
          "ping p50 / p99 ms",
          `${fmt(r.direct.p50, 2)} / ${fmt(r.direct.p99, 2)}`,
          `${fmt(r.tunnel.p50, 2)} / ${fmt(r.tunnel.p99, 2)}`,
          null,
          "p99 <= 5",
          r.tunnel.p99 !== null && r.tunnel.p99 <= 5,
        ),
        row(
          "reference: the same pings before the push starts (idle), p50 / p99 ms",
          `${fmt(r.direct.idle.p50, 2)} / ${fmt(r.direct.idle.p99, 2)}`,
          `${fmt(r.tunnel.idle.p50, 2)} / ${fmt(r.tunnel.idle.p99, 2)}`,
          null,
          "—",
          null,
        ),
        row(
          "reference: 2 plain Node pipe relays, ping p50 / p99 ms while pushing; idle",
          `${fmt(r.direct.p50, 2)} / ${fmt(r.direct.p99, 2)}`,
          `${fmt(r.relay.p50, 2)} / ${fmt(r.relay.p99, 2)}; ${fmt(r.relay.idle.p50, 2)} / ${fmt(r.relay.idle.p99, 2)}`,
          null,
          `floor; tunnel p99 at ${ratioText(r.tunnel.p99, r.relay.p99)} of it`,
          null,
        ),
        row(
          "pings answered",
          answered(r.direct),
          answered(r.tunnel),
          null,
          "all",
          r.tunnel.pingsAnswered === r.tunnel.pingsSent,
        ),
      ];
    },
  },

  footprint: {
    describe: "idle visitor connections",
    key: (r) => r.rss.server + r.rss.client,
    sizes: { full: { count: 1_000, size: 8 }, quick: { count: 200, size: 8 } },
    async run(env, { count, size }) {
      // Warm up every code path once, so the figures show per-connection cost, not first use.
      await env.endpoint.call("footprintOpen", { port: env.tunnelPort, count: 50, size });
      await env.endpoint.call("footprintOpen", { port: env.directPort, count: 50, size });
      await env.endpoint.call("closeAll");
      const settle = async () => {
        await pause(500);
        await env.gc();
        await pause(200);
      };
      const snapshot = () => ({
        endpoint: env.memory(env.endpoint),
        service: env.memory(env.service),
        server: env.memory(env.server),
        client: env.memory(env.client),
      });
      const perConnection = (before, after, who, field) =>
        (after[who][field] - before[who][field]) / count;
      await settle();
      const d0 = snapshot();
      await env.endpoint.call("footprintOpen", { port: env.directPort, count, size });
      await settle();
      const d1 = snapshot();
      await env.endpoint.call("closeAll");
      await settle();
      const t0 = snapshot();
      await env.endpoint.call("footprintOpen", { port: env.tunnelPort, count, size });
      await settle();
      const t1 = snapshot();
      await env.endpoint.call("closeAll");
      const growth = (field) => ({
        direct: perConnection(d0, d1, "endpoint", field) + perConnection(d0, d1, "service", field),
        server: perConnection(t0, t1, "server", field),
        client: perConnection(t0, t1, "client", field),
      });
      return { count, rss: growth("rss"), uss: growth("uss") };
    },
    rows(r) {
      const kib = (bytes) => fmt(bytes / 1024, 1);
      const sumRss = r.rss.server + r.rss.client;
      const sumUss = r.uss.server + r.uss.client;
      return [
        row(
          `RSS growth KiB/conn (server + client = sum; ${r.count} conns)`,
          `${kib(r.rss.direct)} (2 sockets)`,
          `${kib(r.rss.server)} + ${kib(r.rss.client)} = ${kib(sumRss)}`,
          null,
          "<= 14",
          sumRss <= 14 * 1024,
        ),
        row(
          "USS growth KiB/conn (server + client = sum)",
          `${kib(r.uss.direct)} (2 sockets)`,
          `${kib(r.uss.server)} + ${kib(r.uss.client)} = ${kib(sumUss)}`,
          null,
          "<= 14",
          sumUss <= 14 * 1024,
        ),
      ];
    },
  },
};

function row(measure, direct, tunnel, ratio, target, met) {
  return {
    measure,
    direct,
    tunnel,
    ratio: ratio === null ? "—" : `${fmt(ratio, 2)}x`,
    target,
    met,
  };
}
