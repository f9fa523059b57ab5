/**
 * A tunnel server that only accepts clients presenting a known token, compared in constant time.
 * Run: W3P_TOKENS=secret-1,secret-2 npx tsx examples/server-auth.ts [port]
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { TunnelServer } from "../src/index.js";

const digest = (value: string) => createHash("sha256").update(value).digest();
const allowed = (process.env.W3P_TOKENS ?? "change-me").split(",").map(digest);

const server = new TunnelServer({
  connectionFilter: (credentials, { remoteAddress }) => {
    const token = typeof credentials.token === "string" ? digest(credentials.token) : null;
    // Check every token, so the time taken does not tell which one nearly matched.
    let ok = false;
    for (const candidate of allowed) if (token && timingSafeEqual(token, candidate)) ok = true;
    if (!ok) console.log(`refused a client from ${remoteAddress}`);
    return ok;
  },
});
server.events.on("client-authentication-failed", ({ err }) => console.log(err.code));
server.events.on("tunnel-created", ({ clientTunnel }) => {
  console.log(`authenticated client on public port ${clientTunnel.tunnelAddress?.port}`);
});
const port = await server.start(Number(process.argv[2] ?? 9000));
console.log(`tunnel server (token auth) on control port ${port}`);
process.once("SIGINT", () => void server.stop());
