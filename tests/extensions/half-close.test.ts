/**
 * Half-close (`fin`): ending one direction is not closing the stream. Each test runs through a
 * capture relay so it can also show that FIN frames (0x06) carried the EOF.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { type TestContext, test } from "node:test";
import tls from "node:tls";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import {
  CERT,
  closed,
  connect,
  KEY,
  onceWithin,
  pseudoRandomBytes,
  readAll,
  sha256,
  startService,
  startTunnel,
} from "../helpers/net.js";
import { type FrameCapture, startCapture } from "../helpers/v1-peer.js";

const FIN = 0x06;

async function tunnelVia(
  t: TestContext,
  servicePort: number,
): Promise<{ server: TunnelServer; client: TunnelClient; capture: FrameCapture; port: number }> {
  const server = new TunnelServer();
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const capture = await startCapture(t, controlPort);
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: capture.port,
    localServiceHost: "127.0.0.1",
    localServicePort: servicePort,
    reconnectInitialDelayMs: 50,
  });
  t.after(() => client.stop());
  const port = await client.start();
  return { server, client, capture, port };
}

test("the visitor ends its request and still gets the answer (service replies after EOF)", async (t) => {
  const request = pseudoRandomBytes(300_000, 51);
  let serviceSocket: Socket | null = null;
  const service = await startService(t, (socket) => {
    serviceSocket = socket;
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    // Answers only once the request is complete: EOF is the end-of-request marker.
    socket.on("end", () => socket.end(`sha256=${sha256(Buffer.concat(chunks))}`));
  });
  const { server, client, capture, port } = await tunnelVia(t, service.port);
  const serviceGone = onceWithin(client.events, "service-disconnected");
  const visitorGone = onceWithin(server.events, "visitor-disconnected");
  const visitor = await connect(t, port, "127.0.0.1", { allowHalfOpen: true });
  const answer = readAll(visitor);
  visitor.end(request);
  assert.equal((await answer).toString(), `sha256=${sha256(request)}`);
  // Then both sides close.
  await closed(visitor);
  await serviceGone;
  await visitorGone;
  await closed(serviceSocket!);
  assert.ok(capture.types.up.has(FIN) && capture.types.down.has(FIN), "FIN both ways");
  assert.equal(server.stats().tunnels[0]!.streamsActive, 0);
  assert.equal(client.stats().services[0]!.streamsActive, 0);
});

test("the service ends first and the visitor can still send to it", async (t) => {
  const upload = pseudoRandomBytes(200_000, 52);
  let receivedByService: Promise<Buffer> | null = null;
  let serviceSocket: Socket | null = null;
  const service = await startService(t, (socket) => {
    serviceSocket = socket;
    // Greets and ends its write side at once, then keeps reading.
    receivedByService = readAll(socket);
    socket.end("hello, then silence");
  });
  const { server, client, capture, port } = await tunnelVia(t, service.port);
  const serviceGone = onceWithin(client.events, "service-disconnected");
  const visitorGone = onceWithin(server.events, "visitor-disconnected");
  const visitor = await connect(t, port, "127.0.0.1", { allowHalfOpen: true });
  const fromService = readAll(visitor);
  assert.equal((await fromService).toString(), "hello, then silence");
  assert.equal(visitor.readableEnded, true, "the visitor saw EOF");
  assert.equal(visitor.destroyed, false, "but its connection is still open");
  visitor.end(upload);
  const got = await receivedByService!;
  assert.equal(got.length, upload.length);
  assert.equal(sha256(got), sha256(upload));
  await closed(visitor);
  await closed(serviceSocket!);
  await serviceGone;
  await visitorGone;
  assert.ok(capture.types.up.has(FIN) && capture.types.down.has(FIN), "FIN both ways");
});

test("half-close works through a TLS public port too", async (t) => {
  const request = pseudoRandomBytes(100_000, 53);
  const service = await startService(t, (socket) => {
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("end", () => socket.end(`sha256=${sha256(Buffer.concat(chunks))}`));
  });
  const { publicPort } = await startTunnel(t, service.port, {
    tls: { tunnelServer: { cert: CERT, key: KEY } },
  });
  const visitor = tls.connect({
    host: "127.0.0.1",
    port: publicPort,
    servername: "localhost",
    ca: CERT,
    allowHalfOpen: true,
  } as tls.ConnectionOptions);
  t.after(() => visitor.destroy());
  await onceWithin(visitor, "secureConnect");
  const answer = readAll(visitor);
  visitor.end(request);
  assert.equal((await answer).toString(), `sha256=${sha256(request)}`);
});
