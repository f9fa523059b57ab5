import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import type { ClientEvents } from "../../src/events.js";
import { renderMetrics, serveMetrics } from "../../src/metrics.js";
import type { ServerStats } from "../../src/server/tunnel-server.js";
import { httpGet } from "../helpers/http.js";
import {
  connect,
  echoService,
  listen,
  onceWithin,
  readAll,
  readBytes,
  startTunnel,
  until,
} from "../helpers/net.js";
import { metricValue, parsePrometheus } from "../helpers/prometheus.js";

const FAST_HEARTBEAT = { heartbeatIntervalMs: 50 };

test("server metrics: every line parses; tunnels, services, bytes, streams and RTT are there", async (t) => {
  const alpha = await echoService(t);
  const beta = await echoService(t);
  // Quote, backslash and newline: the label escaping must survive a real identity.
  const clientId = 'pi "1" \\ kitchen\nnorth';
  const { server, client } = await startTunnel(t, alpha.port, FAST_HEARTBEAT, {
    ...FAST_HEARTBEAT,
    clientId,
    services: [
      { name: "alpha", localHost: "127.0.0.1", localPort: alpha.port },
      { name: "beta", localHost: "127.0.0.1", localPort: beta.port },
    ],
  });
  await onceWithin(server.events, "heartbeat");
  const ports = new Map(client.stats().services.map((s) => [s.name, s.publicPort!]));
  const visitor = await connect(t, ports.get("alpha")!);
  visitor.write("hello");
  await readBytes(visitor, 5);

  const endpoint = await serveMetrics(server, { port: 0 });
  t.after(() => endpoint.close());
  assert.equal(endpoint.host, "127.0.0.1", "metrics bind to loopback by default");
  assert.match(endpoint.url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
  const res = await httpGet(endpoint.url);
  assert.equal(res.status, 200);
  assert.equal(res.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
  const families = parsePrometheus(res.body);

  assert.equal(metricValue(families, "w3p_server_listening"), 1);
  assert.equal(metricValue(families, "w3p_server_tunnels"), 1);
  assert.equal(metricValue(families, "w3p_server_pending_connections"), 0);
  assert.equal(metricValue(families, "w3p_server_held_ports"), 0);
  const [tunnelSample] = families.get("w3p_tunnel_streams_active")!.samples;
  assert.ok(tunnelSample!.labels.client_id!.endsWith(clientId), tunnelSample!.labels.client_id);
  assert.match(tunnelSample!.labels.remote_address!, /^127\.0\.0\.1:\d+$/);
  const tunnel = { tunnel: tunnelSample!.labels.tunnel! };
  assert.equal(metricValue(families, "w3p_tunnel_streams_active", tunnel), 1);
  assert.equal(metricValue(families, "w3p_tunnel_streams_total", tunnel), 1);
  const since = metricValue(families, "w3p_tunnel_connected_since_seconds", tunnel);
  assert.ok(Math.abs(since - Date.now() / 1000) < 60, `connected since ${since}`);
  const rtt = metricValue(families, "w3p_tunnel_rtt_seconds", tunnel);
  assert.ok(rtt >= 0 && rtt < 2, `rtt ${rtt}`);
  assert.ok(metricValue(families, "w3p_tunnel_received_bytes_total", tunnel) > 5);
  assert.ok(metricValue(families, "w3p_tunnel_sent_bytes_total", tunnel) > 5);

  const alphaLabels = { service: "alpha", port: String(ports.get("alpha")) };
  assert.equal(metricValue(families, "w3p_service_streams_active", alphaLabels), 1);
  assert.equal(metricValue(families, "w3p_service_streams_total", alphaLabels), 1);
  assert.equal(metricValue(families, "w3p_service_sent_bytes_total", alphaLabels), 5);
  assert.equal(metricValue(families, "w3p_service_received_bytes_total", alphaLabels), 5);
  const betaLabels = { service: "beta", port: String(ports.get("beta")) };
  assert.equal(metricValue(families, "w3p_service_streams_total", betaLabels), 0);
  for (const family of families.values()) {
    assert.equal(family.type, family.name.endsWith("_total") ? "counter" : "gauge", family.name);
  }
});

test("client metrics: connected, reconnects, public port and streams per service, RTT", async (t) => {
  const service = await echoService(t);
  const { client, publicPort } = await startTunnel(t, service.port, FAST_HEARTBEAT, {
    ...FAST_HEARTBEAT,
  });
  await onceWithin<ClientEvents["heartbeat"]>(client.events, "heartbeat");
  const visitor = await connect(t, publicPort);
  visitor.write("abc");
  await readBytes(visitor, 3);

  const endpoint = await serveMetrics(client, { port: 0, path: "/m" });
  t.after(() => endpoint.close());
  assert.ok(endpoint.url.endsWith("/m"));
  const families = parsePrometheus((await httpGet(endpoint.url)).body);
  assert.equal(metricValue(families, "w3p_client_connected"), 1);
  assert.equal(metricValue(families, "w3p_client_reconnects_total"), 0);
  const since = metricValue(families, "w3p_client_connected_since_seconds");
  assert.ok(Math.abs(since - Date.now() / 1000) < 60);
  const rtt = metricValue(families, "w3p_client_rtt_seconds");
  assert.ok(rtt >= 0 && rtt < 2, `rtt ${rtt}`);
  assert.ok(metricValue(families, "w3p_client_received_bytes_total") > 3);
  assert.ok(metricValue(families, "w3p_client_sent_bytes_total") > 3);
  const labels = { service: "default", local_address: `127.0.0.1:${service.port}` };
  assert.equal(metricValue(families, "w3p_client_service_public_port", labels), publicPort);
  assert.equal(metricValue(families, "w3p_client_service_streams_active", labels), 1);
  assert.equal(metricValue(families, "w3p_client_service_streams_total", labels), 1);
  assert.equal(metricValue(families, "w3p_client_service_received_bytes_total", labels), 3);
  assert.equal(metricValue(families, "w3p_client_service_sent_bytes_total", labels), 3);
});

test("renderMetrics: IPv6 addresses bracketed, absent RTT leaves no sample, escaping is exact", () => {
  const stats: ServerStats = {
    listening: false,
    port: null,
    pendingConnections: 2,
    publicPorts: 1,
    heldPorts: [20001],
    connections: 3,
    tunnels: [
      {
        connectedSince: new Date(1_700_000_000_000),
        remoteAddress: "::1",
        remotePort: 5000,
        clientId: null,
        bytesIn: 10,
        bytesOut: 20,
        streamsActive: 0,
        streamsTotal: 3,
        rttMs: null,
        services: [
          {
            name: 'we"b\\x',
            port: 20002,
            streamsActive: 0,
            streamsTotal: 3,
            bytesIn: 1,
            bytesOut: 2,
          },
        ],
      },
    ],
  };
  const text = renderMetrics(stats);
  const families = parsePrometheus(text);
  assert.equal(metricValue(families, "w3p_server_listening"), 0);
  assert.equal(metricValue(families, "w3p_server_held_ports"), 1);
  assert.equal(metricValue(families, "w3p_server_public_ports"), 1);
  assert.equal(metricValue(families, "w3p_server_connections"), 3);
  assert.equal(metricValue(families, "w3p_server_pending_connections"), 2);
  assert.equal(families.get("w3p_tunnel_rtt_seconds")!.samples.length, 0);
  assert.equal(
    metricValue(families, "w3p_tunnel_connected_since_seconds", {
      tunnel: "[::1]:5000",
      client_id: "",
    }),
    1_700_000_000,
  );
  assert.ok(text.includes('service="we\\"b\\\\x"'), "quote and backslash escaped");
  assert.equal(metricValue(families, "w3p_service_streams_total", { service: 'we"b\\x' }), 3);
});

test("metrics endpoint: 404 elsewhere, 405 for POST, HEAD has no body, close frees the port", async (t) => {
  const endpoint = await serveMetrics({ stats: () => renderable }, { port: 0 });
  t.after(() => endpoint.close());
  assert.equal((await httpGet(endpoint.url.replace("/metrics", "/other"))).status, 404);
  const post = await httpGet(endpoint.url, "POST");
  assert.equal(post.status, 405);
  assert.equal(post.headers.allow, "GET, HEAD");
  const head = await httpGet(endpoint.url, "HEAD");
  assert.equal(head.status, 200);
  assert.equal(head.body, "");
  assert.ok(Number(head.headers["content-length"]) > 0);
  // A scraper's keep-alive connection must not hold close() open.
  const idle = net.connect(endpoint.port, "127.0.0.1");
  t.after(() => idle.destroy());
  await onceWithin(idle, "connect");
  await endpoint.close();
  const again = await serveMetrics({ stats: () => renderable }, { port: endpoint.port });
  await again.close();
});

test("metrics endpoint: a request target no URL can be made of gets 400, and the endpoint serves on", async (t) => {
  const endpoint = await serveMetrics({ stats: () => renderable }, { port: 0 });
  t.after(() => endpoint.close());
  const socket = net.connect(endpoint.port, "127.0.0.1");
  t.after(() => socket.destroy());
  await onceWithin(socket, "connect");
  socket.write("GET http://[ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  const answer = await readAll(socket);
  assert.match(answer.toString("latin1"), /^HTTP\/1\.1 400 /);
  assert.equal((await httpGet(endpoint.url)).status, 200);
});

test("metrics endpoint: at most 64 connections at once; the next is dropped, and scrapes work again once they go", async (t) => {
  const endpoint = await serveMetrics({ stats: () => renderable }, { port: 0 });
  t.after(() => endpoint.close());
  const idle: net.Socket[] = [];
  t.after(() => {
    for (const socket of idle) socket.destroy();
  });
  for (let i = 0; i < 64; i++) {
    const socket = net.connect(endpoint.port, "127.0.0.1");
    socket.on("error", () => {});
    idle.push(socket);
    await onceWithin(socket, "connect");
  }
  // The server counts a connection when it accepts it: wait until all 64 are counted.
  await until(() => idle.every((socket) => socket.localPort !== undefined));
  const extra = net.connect(endpoint.port, "127.0.0.1");
  extra.on("error", () => {});
  t.after(() => extra.destroy());
  await onceWithin(extra, "close");
  for (const socket of idle) socket.destroy();
  await until(() => idle.every((socket) => socket.closed));
  // The server learns of the closes as it reads them: a scrape may be dropped until then.
  const deadline = Date.now() + 5_000;
  for (;;) {
    const status = await httpGet(endpoint.url).then(
      (answer) => answer.status,
      () => 0,
    );
    if (status === 200) break;
    assert.ok(Date.now() < deadline, "no scrape answered after the connections went");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
});

test("metrics endpoint: a port in use rejects with W3P_ERR_PORT_UNAVAILABLE", async (t) => {
  const blocker = net.createServer();
  t.after(() => blocker.close());
  const port = await listen(blocker);
  await assert.rejects(serveMetrics({ stats: () => renderable }, { port }), {
    code: "W3P_ERR_PORT_UNAVAILABLE",
  });
});

const renderable: ServerStats = {
  listening: true,
  port: 1,
  pendingConnections: 0,
  publicPorts: 0,
  heldPorts: [],
  connections: 0,
  tunnels: [],
};
