/**
 * A tunnel client exposing a local service.
 * Run: npx tsx examples/client.ts <server-host> <server-port> <local-port> [token]
 */
import { TunnelClient } from "../src/index.js";

const [host = "localhost", serverPort = "9000", localPort = "3000", token] = process.argv.slice(2);
const client = new TunnelClient({
  tunnelServerHost: host,
  tunnelServerPort: Number(serverPort),
  localServicePort: Number(localPort),
  authenticationCredentials: token ? { token } : {},
});
client.events.on("authentication-acknowledged", ({ assignedPort }) => {
  console.log(`tunnel up: localhost:${localPort} -> ${host}:${assignedPort}`);
});
client.events.on("tunnel-error", ({ err }) => console.log(`tunnel error: ${err.code}`));
client.events.on("tunnel-reconnect-queued", ({ timeout }) =>
  console.log(`reconnecting in ${timeout} ms`),
);
client.events.on("service-connected", ({ visitor }) => {
  if (visitor) console.log(`visitor ${visitor.address}:${visitor.port}`);
});
void client.start();
process.once("SIGINT", () => void client.stop());
