/** The TunnelClient process: dials the server's control port, exposes the local service. */
import { readFileSync } from "node:fs";
import { announceReady, commonHandlers, serveParent } from "./ipc.mjs";

// The built library (dist/), or another build to compare against (`run.mjs --lib DIR`).
const { TunnelClient } = await import(process.env.W3P_BENCH_LIB ?? "../dist/index.js");

const [serverPort, servicePort] = process.argv.slice(2, 4).map(Number);
/** Limit options from `run.mjs --set` (defaults otherwise: the benchmark measures the defaults). */
const limits = JSON.parse(process.env.W3P_BENCH_OPTIONS || "{}");
const useTls = process.argv.includes("--tls");
const ca = useTls ? readFileSync(new URL("../certs/localhost.crt", import.meta.url)) : null;

// Soak --services N: N named services on the one local service, each with its own public port.
const serviceCount = Number(process.env.W3P_BENCH_SERVICES) || 0;
const client = new TunnelClient({
  ...limits,
  tunnelServerHost: "127.0.0.1",
  tunnelServerPort: serverPort,
  localServiceHost: "127.0.0.1",
  ...(serviceCount > 0
    ? {
        services: Array.from({ length: serviceCount }, (_, i) => ({
          name: `s${i}`,
          localPort: servicePort,
        })),
      }
    : { localServicePort: servicePort }),
  authenticationCredentials: { id: "bench" },
  tls: ca ? { ca } : false,
});
const problems = [];
for (const event of ["tunnel-error", "error"]) {
  client.events.on(event, ({ err }) => problems.push(`${event}: ${err?.code} ${err?.message}`));
}
let serviceErrors = 0;
let disconnects = 0;
client.events.on("service-error", () => serviceErrors++);
client.events.on("tunnel-disconnected", () => disconnects++);

const publicPort = await client.start();
announceReady({ publicPort });

serveParent({
  ...commonHandlers,
  /** The public port of each service. */
  publicPorts: () => client.stats().services.map((service) => service.publicPort),
  stats: () => ({
    problems: problems.slice(0, 20),
    serviceErrors,
    disconnects,
    connected: client.isConnected,
    streamsActive: client.stats().services.reduce((sum, service) => sum + service.streamsActive, 0),
  }),
  /** Soak --chaos: drops the control connection as a network failure would; the client redials. */
  dropControl: () => {
    const control = client.tunnelSocketContext;
    control?.destroy();
    return control !== null;
  },
  stop: async () => {
    await client.stop();
    setImmediate(() => process.exit(0));
    return true;
  },
});
