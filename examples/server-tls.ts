/**
 * A tunnel server with TLS on the control port and on the public ports, using the TEST-ONLY
 * certificate in certs/. Run: npx tsx examples/server-tls.ts [port]
 */
import { readFileSync } from "node:fs";
import { TunnelServer } from "../src/index.js";

const key = readFileSync(new URL("../certs/localhost.key", import.meta.url));
const cert = readFileSync(new URL("../certs/localhost.crt", import.meta.url));

const server = new TunnelServer({
  tls: { mainServer: { key, cert }, tunnelServer: { key, cert } },
});
server.events.on("client-tls-error", ({ remoteAddress, err }) => {
  console.log(`TLS handshake from ${remoteAddress} failed: ${err.code}`);
});
server.events.on("tunnel-created", ({ clientTunnel }) => {
  console.log(`client on TLS public port ${clientTunnel.tunnelAddress?.port}`);
});
const port = await server.start(Number(process.argv[2] ?? 9000));
console.log(`TLS tunnel server on control port ${port}`);
process.once("SIGINT", () => void server.stop());
