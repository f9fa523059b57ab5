/**
 * Helpers for the operators' features (services, port ranges, leases, stats): servers and clients
 * with custom options, free ports found by the OS, raw v1/extension handshakes.
 */
import { once } from "node:events";
import http from "node:http";
import net, { type AddressInfo, type Socket } from "node:net";
import type { TestContext } from "node:test";
import { TunnelClient } from "../../src/client/tunnel-client.js";
import type { TunnelClientOptions, TunnelServerOptions } from "../../src/options.js";
import { MAGIC } from "../../src/protocol/constants.js";
import { encodeHandshake } from "../../src/protocol/encode.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { onceWithin, readBytes, startService, WAIT_MS } from "./net.js";

/** A TunnelServer on an ephemeral loopback control port, stopped after the test. */
export async function startServer(
  t: TestContext,
  options: TunnelServerOptions = {},
): Promise<{ server: TunnelServer; controlPort: number }> {
  const server = new TunnelServer(options);
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  return { server, controlPort };
}

/** A TunnelClient for `controlPort` with quick reconnects, stopped after the test (not started). */
export function makeClient(
  t: TestContext,
  controlPort: number,
  options: Partial<TunnelClientOptions> = {},
): TunnelClient {
  const client = new TunnelClient({
    tunnelServerHost: "127.0.0.1",
    tunnelServerPort: controlPort,
    localServiceHost: "127.0.0.1",
    reconnectInitialDelayMs: 50,
    reconnectMaxDelayMs: 200,
    ...options,
  } as TunnelClientOptions);
  t.after(() => client.stop());
  return client;
}

/** Listens on port 0 and closes again: a port that was free a moment ago. */
async function ephemeralPort(host = "127.0.0.1"): Promise<number> {
  const server = net.createServer();
  server.listen(0, host);
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** True when nothing listens on `port` (on all interfaces) right now. */
export async function isFree(port: number): Promise<boolean> {
  const server = net.createServer();
  try {
    server.listen({ port, exclusive: true });
    await once(server, "listening");
    return true;
  } catch {
    return false;
  } finally {
    if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** `count` distinct ports that the OS handed out (and that were free when this returned). */
export async function freePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) {
    const port = await ephemeralPort();
    if (await isFree(port)) ports.add(port);
  }
  return [...ports];
}

/**
 * An inclusive range of `size` ports whose first port is free (checked). The others are only
 * likely free: busy ones are what a server must skip anyway, so tests rely on the first one
 * (and on a few of the rest) only.
 */
export async function freePortRange(size: number): Promise<[number, number]> {
  for (;;) {
    const [low] = await freePorts(1);
    if (low! + size - 1 <= 65535) return [low!, low! + size - 1];
  }
}

/** A free port outside `range`. */
export async function freePortOutside([low, high]: [number, number]): Promise<number> {
  for (;;) {
    const [port] = await freePorts(1);
    if (port! < low || port! > high) return port!;
  }
}

/** Occupies `port` (all interfaces) with a plain listener until the test ends. */
export async function occupy(t: TestContext, port: number): Promise<net.Server> {
  const server = net.createServer((socket) => socket.destroy());
  server.listen({ port, exclusive: true });
  await once(server, "listening");
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return server;
}

/** A TCP service that answers every chunk with `<tag>:<chunk>`, so a test sees who answered. */
export function taggedEchoService(t: TestContext, tag: string) {
  return startService(t, (socket) => {
    socket.on("data", (chunk: Buffer) => socket.write(`${tag}:${chunk.toString()}`));
    socket.on("end", () => socket.end());
  });
}

/** A tiny HTTP service answering every request with `body`. */
export async function httpService(t: TestContext, body: string): Promise<{ port: number }> {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/plain", connection: "close" });
    res.end(body);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { port: (server.address() as AddressInfo).port };
}

/** GET / over a tunnel's public port; resolves with the response body. */
export async function httpGet(port: number, host = "127.0.0.1"): Promise<string> {
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.get({ host, port, path: "/", agent: false }, resolve);
    req.setTimeout(WAIT_MS, () => req.destroy(new Error("http request timed out")));
    req.on("error", reject);
  });
  const chunks: Buffer[] = [];
  for await (const chunk of res) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString();
}

/** A connection that is refused (or reset) rather than served: resolves with the error code. */
export function connectionRefused(port: number, host = "127.0.0.1"): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host });
    socket.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? "error"));
    socket.on("connect", () => {
      socket.destroy();
      resolve("connected");
    });
  });
}

/**
 * A raw client: sends the magic and `message` as its handshake and reads the server's answer
 * (magic + JSON). The socket stays open, silent, like a device that lost power.
 */
export async function rawHandshake(
  t: TestContext,
  controlPort: number,
  message: Record<string, unknown>,
): Promise<{ socket: Socket; answer: Record<string, unknown> }> {
  const socket = net.connect({ port: controlPort, host: "127.0.0.1" });
  socket.on("error", () => {});
  t.after(() => socket.destroy());
  await onceWithin(socket, "connect");
  socket.write(encodeHandshake(message));
  const head = await readBytes(socket, MAGIC.length + 4);
  const length = head.readUInt32BE(MAGIC.length);
  let bytes = head;
  if (bytes.length < MAGIC.length + 4 + length) {
    const rest = await readBytes(socket, MAGIC.length + 4 + length - bytes.length);
    bytes = Buffer.concat([bytes, rest]);
  }
  const body = bytes.subarray(MAGIC.length + 4, MAGIC.length + 4 + length);
  return { socket, answer: JSON.parse(body.toString()) as Record<string, unknown> };
}
