/**
 * One-process demo: a local HTTP service, a tunnel server and a client. It fetches a page through
 * the public port, prints what came back, and exits 0.   Run: npm run demo
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { TunnelClient, TunnelServer } from "../src/index.js";

async function main(): Promise<void> {
  const service = http.createServer((req, res) => {
    res.end(`hello from the local service (you asked for ${req.url})\n`);
  });
  await new Promise<void>((resolve) => service.listen(0, "127.0.0.1", resolve));
  const servicePort = (service.address() as AddressInfo).port;

  const server = new TunnelServer();
  const controlPort = await server.start(0);

  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServiceHost: "127.0.0.1",
    localServicePort: servicePort,
    authenticationCredentials: { id: "demo-device" },
  });
  const publicPort = await client.start();
  console.log(`tunnel up: local service 127.0.0.1:${servicePort} is public on port ${publicPort}`);

  const response = await fetch(`http://127.0.0.1:${publicPort}/through-the-tunnel`);
  console.log(`GET http://127.0.0.1:${publicPort}/through-the-tunnel -> ${response.status}`);
  console.log(await response.text());

  await client.stop();
  await server.stop();
  await new Promise<void>((resolve) => service.close(() => resolve()));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
