/**
 * A tunnel client connecting over TLS, trusting the TEST-ONLY certificate in certs/.
 * Run: npx tsx examples/client-tls.ts <server-port> <local-port>
 */
import { readFileSync } from "node:fs";
import { TunnelClient } from "../src/index.js";

const [serverPort = "9000", localPort = "3000"] = process.argv.slice(2);
const ca = readFileSync(new URL("../certs/localhost.crt", import.meta.url));
const client = new TunnelClient({
  tunnelServerHost: "localhost",
  tunnelServerPort: Number(serverPort),
  localServicePort: Number(localPort),
  tls: { ca }, // passed to tls.connect untouched (servername, cert/key for mTLS, ...)
});
client.events.on("authentication-acknowledged", ({ assignedPort }) => {
  console.log(`tunnel up (TLS): localhost:${localPort} -> localhost:${assignedPort}`);
});
client.events.on("tunnel-error", ({ err }) =>
  console.log(`tunnel error: ${err.code} ${err.message}`),
);
void client.start();
process.once("SIGINT", () => void client.stop());
