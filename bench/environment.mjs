/**
 * One benchmark environment, four processes on 127.0.0.1 ephemeral ports: the local service, the
 * TunnelServer, the TunnelClient, and the endpoint (the load generator, i.e. the visitors).
 * Direct figures connect the load generator to the service process; tunnel figures go through
 * the server's public port and the client, as in real use. Every scenario gets a fresh environment, so peak
 * RSS (VmHWM) belongs to that scenario alone.
 */
import { startChild } from "./ipc.mjs";
import { machineBusySeconds, readRss, readUss } from "./procfs.mjs";

const here = (file) => new URL(file, import.meta.url).pathname;

export async function startEnvironment({ tls = false, profileDir = null } = {}) {
  const flags = tls ? ["--tls"] : [];
  const profile = (name) =>
    profileDir
      ? [
          "--cpu-prof",
          `--cpu-prof-dir=${profileDir}`,
          `--cpu-prof-name=${name}-${Date.now()}.cpuprofile`,
        ]
      : [];
  const started = [];
  /** Reference relay chains by kind ("plain", "reuse"), started on first use. */
  const relayChains = new Map();
  const launch = (name, file, args, options) => {
    const child = startChild(name, here(file), args, options);
    started.push(child);
    return child;
  };
  try {
    const endpoint = launch("endpoint", "./child-endpoint.mjs", []);
    const service = launch("service", "./child-service.mjs", []);
    const server = launch("tunnel server", "./child-server.mjs", flags, {
      execArgv: profile("server"),
    });
    const [, { port: servicePort }, { port: serverPort }] = await Promise.all([
      endpoint.ready,
      service.ready,
      server.ready,
    ]);
    const client = launch(
      "tunnel client",
      "./child-client.mjs",
      [String(serverPort), String(servicePort), ...flags],
      { execArgv: profile("client") },
    );
    const { publicPort } = await client.ready;
    return {
      endpoint,
      service,
      server,
      client,
      directPort: servicePort,
      tunnelPort: publicPort,
      /**
       * Port of a chain of two relays in front of the service (started on first use): the cost
       * of two extra Node processes on the path without any tunnel logic, for reference.
       * `kind` "plain" pipes with Node's defaults; "reuse" reads busy sockets into kept buffers.
       */
      async relayFloorPort(kind = "plain") {
        if (!relayChains.has(kind)) {
          relayChains.set(
            kind,
            (async () => {
              const extra = kind === "reuse" ? ["--reuse"] : [];
              const inner = launch(`relay 2 ${kind}`, "./child-relay.mjs", [
                String(servicePort),
                ...extra,
              ]);
              const { port: innerPort } = await inner.ready;
              const outer = launch(`relay 1 ${kind}`, "./child-relay.mjs", [
                String(innerPort),
                ...extra,
              ]);
              return { relays: [inner, outer], port: (await outer.ready).port };
            })(),
          );
        }
        return (await relayChains.get(kind)).port;
      },
      /** Peak RSS (VmHWM, bytes) of the busier of a chain's two relays. */
      async relayPeakRss(kind = "plain") {
        const chain = await relayChains.get(kind);
        return Math.max(0, ...(chain?.relays ?? []).map((relay) => readRss(relay.pid).peak));
      },
      /** CPU seconds both relays of a chain have used so far. */
      async relayCpuSeconds(kind = "plain") {
        const chain = await relayChains.get(kind);
        let seconds = 0;
        for (const relay of chain?.relays ?? []) {
          const { userUs, systemUs } = await relay.call("cpu");
          seconds += (userUs + systemUs) / 1e6;
        }
        return seconds;
      },
      /**
       * CPU seconds of each process and of the whole machine so far: the difference of two
       * snapshots (see `cpuSpent`) shows who was busy, including load from outside the benchmark.
       */
      async cpuSnapshot() {
        const read = async (child) => {
          const { userUs, systemUs } = await child.call("cpu");
          return (userUs + systemUs) / 1e6;
        };
        const [s, c, e, l] = await Promise.all([
          read(server),
          read(client),
          read(endpoint),
          read(service),
        ]);
        return {
          server: s,
          client: c,
          endpoint: e,
          service: l,
          machine: machineBusySeconds(),
          at: performance.now(),
        };
      },
      async gc() {
        await Promise.all([server, client, endpoint, service].map((child) => child.call("gc")));
      },
      /** Peak JS heap / Buffer memory (MiB) of the tunnel processes, for the JSON report. */
      async memoryPeaks() {
        const [s, c] = await Promise.all([server.call("memoryPeaks"), client.call("memoryPeaks")]);
        return { server: s, client: c };
      },
      /** RSS now, peak RSS and USS of a process, in bytes. */
      memory(child) {
        return { ...readRss(child.pid), uss: readUss(child.pid) };
      },
      async problems() {
        const [s, c] = await Promise.all([server.call("stats"), client.call("stats")]);
        return [...s.problems.map((p) => `server ${p}`), ...c.problems.map((p) => `client ${p}`)];
      },
      async stop() {
        await stopAll(started);
      },
    };
  } catch (err) {
    await stopAll(started);
    throw err;
  }
}

async function stopAll(children) {
  // The client first, so the server sees an orderly goodbye rather than a dead peer.
  const order = [
    "tunnel client",
    "tunnel server",
    "relay 1 plain",
    "relay 2 plain",
    "relay 1 reuse",
    "relay 2 reuse",
    "endpoint",
    "service",
  ];
  for (const name of order) {
    const child = children.find((c) => c.name === name);
    if (child) await child.stop();
  }
}

/** Cores used by each process between two `cpuSnapshot()`s; `others` is load from outside. */
export function cpuSpent(before, after) {
  const wall = (after.at - before.at) / 1000;
  const spent = {};
  for (const key of ["server", "client", "endpoint", "service", "machine"]) {
    spent[key] = after[key] === null ? null : after[key] - before[key];
  }
  const ours = spent.server + spent.client + spent.endpoint + spent.service;
  return {
    wallSeconds: wall,
    seconds: spent,
    cores: Object.fromEntries(
      Object.entries(spent).map(([k, v]) => [k, v === null ? null : v / wall]),
    ),
    othersCores: spent.machine === null ? null : Math.max(0, spent.machine - ours) / wall,
  };
}
