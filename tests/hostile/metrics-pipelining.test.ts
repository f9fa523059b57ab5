/**
 * The metrics endpoint renders an answer only once the previous one on the connection has been
 * handed to the OS, and lets at most 16 pipelined requests wait for that. Before, Node parsed every
 * request a chunk held and the endpoint rendered and kept an answer for each: one 68 KB write of
 * 2,000 pipelined `GET /metrics` from a client that never read made the process hold ~150 MB per
 * connection (8 connections: 1.24 GiB RSS), for as long as the client stayed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { serveMetrics } from "../../src/metrics.js";
import type { ServerStats } from "../../src/server/tunnel-server.js";
import { httpGet } from "../helpers/http.js";
import { connect, readAll, withTimeout } from "../helpers/net.js";

// One tunnel with 200 services: a page of about 80 KB, as a busy server gives.
const big: ServerStats = {
  listening: true,
  port: 1,
  pendingConnections: 0,
  publicPorts: 200,
  heldPorts: [],
  connections: 1,
  tunnels: [
    {
      connectedSince: new Date(1_700_000_000_000),
      remoteAddress: "127.0.0.1",
      remotePort: 5000,
      clientId: "client",
      bytesIn: 0,
      bytesOut: 0,
      streamsActive: 0,
      streamsTotal: 0,
      rttMs: 1,
      services: Array.from({ length: 200 }, (_, i) => ({
        name: `service-${i}`,
        port: 20_000 + i,
        streamsActive: 0,
        streamsTotal: 0,
        bytesIn: 0,
        bytesOut: 0,
      })),
    },
  ],
};

/** Answers one more than the most a connection may have waiting plus the one on its way out. */
const MAX_RENDERED = 17;

test("metrics endpoint: 2,000 pipelined requests not read render a bounded few answers and close the connection", async (t) => {
  let renders = 0;
  let rendered: () => void = () => {};
  const firstRender = new Promise<void>((resolve) => {
    rendered = resolve;
  });
  const endpoint = await serveMetrics(
    {
      stats: () => {
        renders++;
        rendered();
        return big;
      },
    },
    { port: 0 },
  );
  t.after(() => endpoint.close());

  const hog = await connect(t, endpoint.port);
  hog.pause(); // does not read: every answer stays with the server or in the kernel
  hog.write("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2_000));
  // Node parses all the requests a read brought in one go: by the time this await resumes the
  // server has handled the first read (about 64 KB, some 1,900 requests) without our reading.
  await withTimeout(firstRender, 10_000, "the first answer");
  assert.ok(renders <= MAX_RENDERED, `${renders} answers rendered for a client that does not read`);

  // Now read: a few answers at most, then the server's close (it did not wait for us).
  hog.resume();
  const text = (await readAll(hog)).toString("latin1");
  const answers = text.match(/^HTTP\/1\.1 200 /gm)?.length ?? 0;
  assert.ok(answers <= MAX_RENDERED, `${answers} answers`);
  assert.ok(renders <= MAX_RENDERED, `${renders} answers rendered`);
  // The endpoint serves on.
  assert.equal((await httpGet(endpoint.url)).status, 200);
});

test("metrics endpoint: a scraper that pipelines within the limit and reads gets every answer, in order", async (t) => {
  let renders = 0;
  const source = {
    stats: () => {
      renders++;
      return big;
    },
  };
  const endpoint = await serveMetrics(source, { port: 0 });
  t.after(() => endpoint.close());
  const socket = await connect(t, endpoint.port);
  const request = (path: string, close = false) =>
    `GET ${path} HTTP/1.1\r\nHost: x\r\n${close ? "Connection: close\r\n" : ""}\r\n`;
  socket.write(
    request("/metrics").repeat(8) +
      request("/other") +
      request("/metrics").repeat(7) +
      request("/metrics", true),
  );
  const text = (await readAll(socket)).toString("latin1");
  const statuses = [...text.matchAll(/^HTTP\/1\.1 (\d{3}) /gm)].map((m) => Number(m[1]));
  assert.deepEqual(statuses, [...Array(8).fill(200), 404, ...Array(8).fill(200)]);
  assert.equal(renders, 16);
});
