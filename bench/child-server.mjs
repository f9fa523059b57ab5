/** The TunnelServer process: built library (dist/), control port on 127.0.0.1, defaults. */
import { readFileSync } from "node:fs";
import { announceReady, commonHandlers, serveParent } from "./ipc.mjs";

// The built library (dist/), or another build to compare against (`run.mjs --lib DIR`).
const { TunnelServer } = await import(process.env.W3P_BENCH_LIB ?? "../dist/index.js");

/** Limit options from `run.mjs --set` (defaults otherwise: the benchmark measures the defaults). */
const limits = JSON.parse(process.env.W3P_BENCH_OPTIONS || "{}");
const useTls = process.argv.includes("--tls");
const certs = new URL("../certs/", import.meta.url);
const tls = useTls
  ? {
      mainServer: {
        key: readFileSync(new URL("localhost.key", certs)),
        cert: readFileSync(new URL("localhost.crt", certs)),
      },
    }
  : false;

const server = new TunnelServer({
  ...limits,
  // Soak --chaos: clients are known by their credentials' id (v1 ones too), so one that redials
  // gets its port back.
  ...(process.env.W3P_BENCH_IDENTITY ? { clientIdentity: (c) => String(c.id ?? "") } : {}),
  host: "127.0.0.1",
  publicHost: "127.0.0.1",
  tls,
});
const problems = [];
for (const event of ["tunnel-error", "client-error", "error", "client-tls-error"]) {
  server.events.on(event, ({ err }) => problems.push(`${event}: ${err?.code} ${err?.message}`));
}
let visitorErrors = 0;
let visitorsRejected = 0;
server.events.on("visitor-error", () => visitorErrors++);
server.events.on("visitor-rejected", () => visitorsRejected++);

const port = await server.start(0);
announceReady({ port });

serveParent({
  ...commonHandlers,
  stats: () => ({
    problems: problems.slice(0, 20),
    visitorErrors,
    visitorsRejected,
    streamsActive: server.stats().tunnels.reduce((sum, tunnel) => sum + tunnel.streamsActive, 0),
  }),
  stop: async () => {
    await server.stop();
    setImmediate(() => process.exit(0));
    return true;
  },
});
