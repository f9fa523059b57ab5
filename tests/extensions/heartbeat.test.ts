/**
 * Heartbeat: PING / PONG measure the round trip on both sides; a peer that goes silent after
 * negotiating `ping` is declared dead with W3P_ERR_PEER_TIMEOUT.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import net, { type AddressInfo, type Socket } from "node:net";
import { test } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import type { TunnelError } from "../../src/errors.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { echoService, onceWithin, startTunnel, trackSockets } from "../helpers/net.js";
import { backlogBound } from "../helpers/raw-peer.js";
import { RawFrameReader, v1Handshake } from "../helpers/v1-peer.js";

const EXT_OFFER = { v: 2, ext: ["open", "flow", "fin", "ping", "goaway", "services"], win: 262144 };

test("heartbeat events on both sides carry rttMs, also exposed as properties", async (t) => {
  const service = await echoService(t);
  const fast = { heartbeatIntervalMs: 30 };
  const { server, client } = await startTunnel(t, service.port, fast, fast);
  const [serverBeat, clientBeat] = await Promise.all([
    onceWithin<{ rttMs: number; clientTunnel: unknown }>(server.events, "heartbeat"),
    onceWithin<{ rttMs: number; clientConnection: Socket }>(client.events, "heartbeat"),
  ]);
  const tunnel = [...server.tunnels][0]!;
  assert.equal(serverBeat.clientTunnel, tunnel);
  for (const rtt of [serverBeat.rttMs, clientBeat.rttMs]) {
    assert.equal(typeof rtt, "number");
    assert.ok(rtt >= 0 && rtt < 2_000, `rtt ${rtt}`);
  }
  assert.equal(typeof client.rttMs, "number");
  assert.equal(typeof tunnel.rttMs, "number");
  assert.equal(client.stats().rttMs, client.rttMs);
  assert.equal(server.stats().tunnels[0]!.rttMs, tunnel.rttMs);
});

test("a timeout shorter than the interval does not kill a healthy idle tunnel", async (t) => {
  const service = await echoService(t);
  // Misconfigured on purpose: between two pings an idle peer is silent for a whole interval.
  const options = { heartbeatIntervalMs: 120, heartbeatTimeoutMs: 40 };
  const { server, client } = await startTunnel(t, service.port, options, options);
  const failures: string[] = [];
  client.events.on("tunnel-error", ({ err }) => failures.push(`client ${err.code}`));
  server.events.on("tunnel-error", ({ err }) => failures.push(`server ${err.code}`));
  // Five round trips on each side span five intervals, several times the timeout.
  for (let beats = 0; beats < 5; beats++) {
    await Promise.all([
      onceWithin(client.events, "heartbeat", 2_000),
      onceWithin(server.events, "heartbeat", 2_000),
    ]);
  }
  assert.deepEqual(failures, []);
  assert.equal(client.isConnected, true);
});

test("our server declares a silent extension client dead (W3P_ERR_PEER_TIMEOUT)", async (t) => {
  const server = new TunnelServer({ heartbeatIntervalMs: 50, heartbeatTimeoutMs: 300 });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const tunnelError = onceWithin<{ err: TunnelError }>(server.events, "tunnel-error", 5_000);
  const raw = net.connect({ port: controlPort, host: "127.0.0.1" });
  t.after(() => raw.destroy());
  raw.on("error", () => {});
  const pings: number[] = [];
  let ack: Record<string, unknown> | null = null;
  const reader = new RawFrameReader({
    handshake: (body) => {
      ack = JSON.parse(body.toString("utf8"));
    },
    frame: (frame) => pings.push(frame.type),
    badInput: () => {},
  });
  raw.on("data", (chunk: Buffer) => reader.push(chunk));
  // Negotiate everything, then never send another byte (no PONG).
  raw.write(v1Handshake({ id: "silent", w3p: EXT_OFFER }));
  const started = Date.now();
  const { err } = await tunnelError;
  const elapsed = Date.now() - started;
  assert.equal(err.code, "W3P_ERR_PEER_TIMEOUT");
  assert.ok(elapsed < 3_000, `declared dead after ${elapsed} ms`);
  assert.ok((ack!.w3p as { ext: string[] }).ext.includes("ping"));
  assert.ok(pings.includes(0x07), "the server pinged before giving up");
  if (!raw.closed) await once(raw, "close");
  assert.equal(server.tunnels.size, 0);
});

test("our client declares a silent extension server dead and reconnects", async (t) => {
  // A raw server that acks with the ping extension and then says nothing at all.
  const handshakes: Buffer[] = [];
  const rawServer = net.createServer((socket) => {
    socket.on("error", () => {});
    const reader = new RawFrameReader({
      handshake: (body) => {
        handshakes.push(Buffer.from(body));
        socket.write(v1Handshake({ port: 40000, w3p: { v: 2, ext: ["ping"], win: 65536 } }));
      },
      frame: () => {},
      badInput: () => socket.destroy(),
    });
    socket.on("data", (chunk: Buffer) => reader.push(chunk));
  });
  const sockets = trackSockets(rawServer);
  rawServer.listen(0, "127.0.0.1");
  await once(rawServer, "listening");
  t.after(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => rawServer.close(resolve));
  });
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: (rawServer.address() as AddressInfo).port,
    localServicePort: 1,
    heartbeatIntervalMs: 50,
    heartbeatTimeoutMs: 300,
    reconnectInitialDelayMs: 50,
  });
  t.after(() => client.stop());
  const tunnelError = onceWithin<{ err: TunnelError }>(client.events, "tunnel-error", 5_000);
  const queued = onceWithin(client.events, "tunnel-reconnect-queued");
  const started = Date.now();
  await client.start();
  const { err } = await tunnelError;
  const elapsed = Date.now() - started;
  assert.equal(err.code, "W3P_ERR_PEER_TIMEOUT");
  assert.ok(elapsed < 3_000, `declared dead after ${elapsed} ms`);
  assert.equal(client.isConnected, false);
  const back = onceWithin(client.events, "authentication-acknowledged");
  await queued;
  await back;
  assert.ok(handshakes.length >= 2, "the client came back");
});

test("a peer that floods PINGs and never reads gets no unbounded pile of PONGs", async (t) => {
  const limit = 16 * 1024;
  const server = new TunnelServer({ controlWriteBufferBytes: limit });
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const created = onceWithin<{ clientTunnel: { socket: Socket } }>(server.events, "tunnel-created");
  const raw = net.connect({ port: controlPort, host: "127.0.0.1" });
  raw.on("error", () => {});
  t.after(() => raw.destroy());
  raw.write(v1Handshake({ w3p: { v: 2, ext: ["ping"] } }));
  const { clientTunnel } = await created;
  raw.pause(); // never reads again: the server's answers can only queue up
  const ping = Buffer.from("0000000d00000000070102030405060708", "hex");
  const burst = Buffer.concat(Array.from({ length: 4096 }, () => ping)); // 68 KiB of PINGs
  let peak = 0;
  // 16 MiB of PINGs: far more PONGs than the kernel buffers on the way can absorb.
  for (let sent = 0; sent < 16 << 20; sent += burst.length) {
    if (!raw.write(burst)) await once(raw, "drain");
    peak = Math.max(peak, clientTunnel.socket.writableLength);
  }
  peak = Math.max(peak, clientTunnel.socket.writableLength);
  const bound = backlogBound(clientTunnel.socket, limit);
  assert.ok(peak <= bound, `PONGs queued on the server: ${peak} bytes (bound ${bound})`);
  assert.equal(server.tunnels.size, 1, "the flooding peer is not cut off for it");
});
