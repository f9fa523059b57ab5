/**
 * A tunnel server for the open internet: tokens, public ports from a range, caps on what one
 * client or one address may hold, and a log line for every refusal with its code.
 * Run: W3P_TOKENS=secret-1,secret-2 npx tsx examples/server-hardened.ts [port]
 * (W3P_MAX_PUBLIC_PORTS and W3P_MAX_CONNECTIONS lower those caps, to watch a refusal.)
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { TunnelServer } from "../src/index.js";

const digest = (value: string) => createHash("sha256").update(value).digest();
const allowed = (process.env.W3P_TOKENS ?? "change-me").split(",").map(digest);

const server = new TunnelServer({
  connectionFilter: (credentials) => {
    const token = typeof credentials.token === "string" ? digest(credentials.token) : null;
    let ok = false;
    for (const candidate of allowed) if (token && timingSafeEqual(token, candidate)) ok = true;
    return ok;
  },
  // Public ports only from a range the firewall opens, at most this many at once (all clients),
  // and at most 64 for the clients of one address.
  allowedPorts: "20000-29999",
  maxPublicPorts: Number(process.env.W3P_MAX_PUBLIC_PORTS ?? 1_024),
  maxPublicPortsPerAddress: 64,
  maxClients: 1_000,
  maxServicesPerClient: 8,
  // Failed logins (and, on a TLS port, failed TLS handshakes) per address per second.
  authFailuresPerSecond: 2,
  // New visitors per address per second on a public port, and a cap on streams per tunnel.
  visitorsPerSecond: 200,
  maxStreams: 2_000,
  // Connections held at once, visitors and clients (one file descriptor each); the default is
  // 90 % of the process's open-file limit. Visitors past it are refused first, so that clients
  // can still connect while a flood lasts.
  maxConnections: Number(process.env.W3P_MAX_CONNECTIONS ?? 20_000),
  // Streams idle both ways for 10 minutes are closed.
  streamIdleTimeoutMs: 10 * 60_000,
  // A visitor cut off because its client went away gets a reset, not a clean end of stream.
  resetOnAbort: true,
});

server.events.on("tunnel-created", ({ clientTunnel }) => {
  const ports = clientTunnel.services.map(({ address }) => address.port).join(", ");
  console.log(`client ${clientTunnel.remoteAddress} is public on port ${ports}`);
});
server.events.on("client-authentication-failed", ({ clientTunnel, err }) => {
  console.log(`refused ${clientTunnel.remoteAddress}: ${err.code}`);
});
server.events.on("client-error", ({ clientTunnel, err }) => {
  console.log(`refused or dropped ${clientTunnel.remoteAddress}: ${err.code}`);
});
server.events.on("connection-rejected", ({ remoteAddress, err }) => {
  console.log(`turned away ${remoteAddress}: ${err.code}`);
});
server.events.on("visitor-rejected", ({ err }) => console.log(`visitor turned away: ${err.code}`));
server.events.on("tunnel-error", ({ clientTunnel, err }) => {
  console.log(`tunnel of ${clientTunnel.remoteAddress}: ${err.code}`);
});

const port = await server.start(Number(process.argv[2] ?? 9000));
console.log(`hardened tunnel server on control port ${port}`);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => void server.stop());
}
