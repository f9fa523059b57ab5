/**
 * Stream open with metadata (`open`): the client's `service-connected` event says who the visitor
 * is (family, address, port, public port, TLS server name) for IPv4, IPv6 and TLS visitors.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { test } from "node:test";
import tls from "node:tls";
import type { StreamMeta } from "../../src/mux/stream-meta.js";
import {
  CERT,
  connect,
  echoService,
  KEY,
  onceWithin,
  readBytes,
  startTunnel,
} from "../helpers/net.js";

interface ServiceConnected {
  serviceSocket: Socket;
  streamId: number;
  service: string;
  visitor: StreamMeta | null;
}

test("the public listener accepts IPv4 and IPv6 visitors and names them exactly", async (t) => {
  const service = await echoService(t);
  const { client, publicPort } = await startTunnel(t, service.port);
  for (const [host, family] of [
    ["127.0.0.1", "IPv4"],
    ["::1", "IPv6"],
  ] as const) {
    const connected = onceWithin<ServiceConnected>(client.events, "service-connected");
    const visitor = await connect(t, publicPort, host);
    const { visitor: meta, service: name } = await connected;
    assert.equal(name, "default");
    assert.ok(meta, "metadata present");
    assert.equal(meta.family, family, host);
    assert.equal(meta.address, host);
    assert.equal(meta.port, visitor.localPort);
    assert.equal(meta.publicPort, publicPort);
    assert.equal(meta.servername, undefined, "no TLS, no server name");
    visitor.write("hi");
    assert.equal((await readBytes(visitor, 2)).toString(), "hi");
    visitor.destroy();
  }
});

test("a TLS public port passes the visitor's server name (SNI)", async (t) => {
  const service = await echoService(t);
  const { client, publicPort } = await startTunnel(t, service.port, {
    tls: { tunnelServer: { cert: CERT, key: KEY } },
  });
  const connected = onceWithin<ServiceConnected>(client.events, "service-connected");
  const visitor = tls.connect({
    host: "127.0.0.1",
    port: publicPort,
    servername: "localhost",
    ca: CERT,
  });
  t.after(() => visitor.destroy());
  await onceWithin(visitor, "secureConnect");
  const { visitor: meta } = await connected;
  assert.ok(meta);
  assert.equal(meta.servername, "localhost");
  assert.equal(meta.family, "IPv4");
  assert.equal(meta.address, "127.0.0.1");
  assert.equal(meta.port, visitor.localPort);
  assert.equal(meta.publicPort, publicPort);
  visitor.write("over tls");
  assert.equal((await readBytes(visitor, 8)).toString(), "over tls");
});

test("behind a server without `open` the visitor metadata is null", async (t) => {
  const service = await echoService(t);
  const { client, publicPort } = await startTunnel(t, service.port, { extensions: false });
  const connected = onceWithin<ServiceConnected>(client.events, "service-connected");
  const visitor = await connect(t, publicPort);
  assert.equal((await connected).visitor, null);
  visitor.write("v1");
  assert.equal((await readBytes(visitor, 2)).toString(), "v1");
});
