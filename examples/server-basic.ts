/** A tunnel server that accepts every client. Run: npx tsx examples/server-basic.ts [port] */
import { TunnelServer } from "../src/index.js";

const server = new TunnelServer();
server.events.on("tunnel-created", ({ clientTunnel }) => {
  console.log(
    `client ${clientTunnel.remoteAddress} is public on port ${clientTunnel.tunnelAddress?.port}`,
  );
});
server.events.on("tunnel-destroyed", ({ clientTunnel }) => {
  console.log(`client ${clientTunnel.remoteAddress} left`);
});
const port = await server.start(Number(process.argv[2] ?? 9000));
console.log(`tunnel server listening on control port ${port}`);

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => void server.stop());
}
