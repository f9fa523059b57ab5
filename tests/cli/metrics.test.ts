/** `--metrics` on both commands (Prometheus text, every line parsed) and ports already in use. */
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { type TestContext, test } from "node:test";
import { ExitCode } from "../../src/cli/exit-codes.js";
import { runCli, runToExit, startCliServer } from "../helpers/cli.js";
import { httpGet } from "../helpers/http.js";
import { listen } from "../helpers/net.js";
import { metricValue, parsePrometheus } from "../helpers/prometheus.js";

async function occupiedPort(t: TestContext): Promise<number> {
  const blocker = net.createServer();
  t.after(() => blocker.close());
  return listen(blocker);
}

test("--metrics serves Prometheus text for the server and the client", async (t) => {
  const web = http.createServer((_req, res) => res.end("ok"));
  t.after(() => {
    web.closeAllConnections();
    web.close();
  });
  const webPort = await listen(web);
  const { run: server, port } = await startCliServer(t, [
    "--allow-anyone",
    "--metrics",
    "127.0.0.1:0",
  ]);
  const [, serverMetrics] = await server.waitForLine(
    /^metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)$/,
  );
  const client = runCli(t, [
    "client",
    "-s",
    `127.0.0.1:${port}`,
    "--service",
    `web=127.0.0.1:${webPort}`,
    "--client-id",
    "pi-1",
    "--metrics",
    "0",
  ]);
  const [, clientMetrics] = await client.waitForLine(
    /^metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)$/,
  );
  const [, publicPort] = await client.waitForLine(/^tunnel up: web \S+ -> 127\.0\.0\.1:(\d+)$/);
  assert.equal((await httpGet(`http://127.0.0.1:${publicPort}/`)).body, "ok");

  const fromServer = parsePrometheus((await httpGet(serverMetrics!)).body);
  assert.equal(metricValue(fromServer, "w3p_server_tunnels"), 1);
  const labels = { service: "web", port: publicPort! };
  assert.equal(metricValue(fromServer, "w3p_service_streams_total", labels), 1);
  assert.ok(metricValue(fromServer, "w3p_service_received_bytes_total", labels) > 0);
  const [sample] = fromServer.get("w3p_tunnel_streams_total")!.samples;
  assert.match(sample!.labels.client_id!, /pi-1$/);

  const fromClient = parsePrometheus((await httpGet(clientMetrics!)).body);
  assert.equal(metricValue(fromClient, "w3p_client_connected"), 1);
  assert.equal(
    metricValue(fromClient, "w3p_client_service_public_port", { service: "web" }),
    Number(publicPort),
  );
  assert.equal(metricValue(fromClient, "w3p_client_service_streams_total", { service: "web" }), 1);
});

test("a control port in use: exit 4 with a clear message", async (t) => {
  const port = await occupiedPort(t);
  const { code, stderr } = await runToExit(t, [
    "server",
    "--allow-anyone",
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
  ]);
  assert.equal(code, ExitCode.LISTEN);
  assert.match(stderr, new RegExp(`control port 127\\.0\\.0\\.1:${port}: address already in use`));
});

test("a metrics port in use: the server and the client exit 4", async (t) => {
  const port = await occupiedPort(t);
  const server = await runToExit(t, [
    "server",
    "--allow-anyone",
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--metrics",
    `127.0.0.1:${port}`,
  ]);
  assert.equal(server.code, ExitCode.LISTEN);
  assert.match(server.stderr, /metrics address .*: address already in use/);
  const client = await runToExit(t, [
    "client",
    "-s",
    "127.0.0.1:1",
    "-l",
    "1",
    "--metrics",
    String(port),
  ]);
  assert.equal(client.code, ExitCode.LISTEN);
});
