/**
 * TLS ports. Certificate renewal on a running server: setSecureContext() switches new TLS
 * connections on the control and public ports to the new certificate, established tunnels carry
 * on, and unusable options are refused without changing anything (the second certificate is made
 * with openssl at test time; skipped where openssl is missing). A visitor that abandons its TLS
 * handshake is let go at once, half-close works over a TLS public port, and a visitor that keeps
 * renegotiating loses its stream (once), not the tunnel.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import type { Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import tls from "node:tls";
import { ErrorCodes } from "../../src/errors.js";
import {
  CERT,
  echoService,
  KEY,
  onceWithin,
  readAll,
  readBytes,
  startService,
  startTunnel,
  tlsConnect,
  until,
} from "../helpers/net.js";

function makeCertificate(): { cert: Buffer; key: Buffer } | null {
  const dir = mkdtempSync(join(tmpdir(), "w3p-renewal-"));
  try {
    const made = spawnSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-sha256",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-keyout",
        join(dir, "key.pem"),
        "-out",
        join(dir, "cert.pem"),
      ],
      { stdio: "ignore" },
    );
    if (made.status !== 0) return null;
    return { cert: readFileSync(join(dir, "cert.pem")), key: readFileSync(join(dir, "key.pem")) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Resolves true if a TLS handshake trusting only `ca` succeeds on `port`. */
function trusts(port: number, ca: Buffer): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: "127.0.0.1", port, ca, servername: "localhost" });
    socket.once("secureConnect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => {
      socket.destroy();
      resolve(false);
    });
  });
}

test("setSecureContext renews the certificate of a running server", async (t) => {
  const renewed = makeCertificate();
  if (!renewed) {
    t.skip("openssl is not available to make a second certificate");
    return;
  }
  const service = await echoService(t);
  const { server, client, controlPort, publicPort } = await startTunnel(
    t,
    service.port,
    { tls: { mainServer: { key: KEY, cert: CERT }, tunnelServer: { key: KEY, cert: CERT } } },
    { tls: { ca: [CERT, renewed.cert], servername: "localhost" } },
  );
  assert.equal(await trusts(controlPort, renewed.cert), false, "the new cert is not served yet");
  assert.equal(await trusts(publicPort, renewed.cert), false);

  // A key that does not match its certificate is refused, and nothing changes.
  assert.throws(() => server.setSecureContext({ mainServer: { key: KEY, cert: renewed.cert } }), {
    code: ErrorCodes.INVALID_OPTION,
  });
  assert.equal(await trusts(controlPort, CERT), true);

  server.setSecureContext({
    mainServer: { key: renewed.key, cert: renewed.cert },
    tunnelServer: { key: renewed.key, cert: renewed.cert },
  });
  assert.equal(await trusts(controlPort, renewed.cert), true, "control port renewed");
  assert.equal(await trusts(publicPort, renewed.cert), true, "public port renewed");
  assert.equal(await trusts(controlPort, CERT), false, "the old cert is gone");

  // The tunnel established before the renewal carries on; a visitor on the new cert echoes.
  assert.equal(client.isConnected, true);
  const visitor = tls.connect({
    host: "127.0.0.1",
    port: publicPort,
    ca: renewed.cert,
    servername: "localhost",
  });
  visitor.on("error", () => {});
  t.after(() => visitor.destroy());
  await new Promise((resolve) => visitor.once("secureConnect", resolve));
  visitor.write("renewed");
  assert.equal((await readBytes(visitor, 7)).toString(), "renewed");
});

test("setSecureContext on a plain server is an invalid option", async (t) => {
  const service = await echoService(t);
  const { server } = await startTunnel(t, service.port);
  assert.throws(() => server.setSecureContext({ mainServer: { key: KEY, cert: CERT } }), {
    code: ErrorCodes.INVALID_OPTION,
  });
});

test("TLS public port: an abandoned handshake is dropped at once, half-close still works", async (t) => {
  // The service reads to the end, then answers and ends: only half-close gets the answer back.
  const service = await startService(t, (socket) => {
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("end", () => socket.end(`got ${Buffer.concat(chunks).toString()}`));
  });
  const { server, publicPort } = await startTunnel(
    t,
    service.port,
    { tls: { tunnelServer: { key: KEY, cert: CERT } } },
    {},
  );
  const sockets = (server as unknown as { sockets: Set<Socket> }).sockets;
  const before = sockets.size;
  // A visitor that rejects the certificate hangs up mid-handshake: the server lets go at once.
  assert.equal(await trusts(publicPort, KEY), false);
  await until(() => sockets.size === before, 2_000, "the abandoned handshake's socket to close");

  const visitor = await tlsConnect(t, publicPort);
  const answer = readAll(visitor);
  visitor.end("question");
  assert.equal((await answer).toString(), "got question");
});

test("TLS public port: a visitor renegotiating past Node's limit fails its stream once, the tunnel works on", async (t) => {
  const service = await echoService(t);
  const { server, publicPort } = await startTunnel(t, service.port, {
    tls: { tunnelServer: { key: KEY, cert: CERT } },
  });
  const errors: string[] = [];
  server.events.on("visitor-error", ({ err }) => errors.push(err.message));
  const disconnected = onceWithin(server.events, "visitor-disconnected");
  // Renegotiation is TLS 1.2 only; Node lets a client renegotiate tls.CLIENT_RENEG_LIMIT times.
  const visitor = await tlsConnect(t, publicPort, { maxVersion: "TLSv1.2" });
  visitor.write("hello");
  assert.equal((await readBytes(visitor, 5)).toString(), "hello");
  const visitorClosed = onceWithin(visitor, "close");
  for (let i = 0; i <= tls.CLIENT_RENEG_LIMIT + 2 && !visitor.destroyed; i++) {
    await new Promise<void>((resolve) => {
      if (!visitor.renegotiate({}, () => resolve())) resolve();
      visitor.once("close", () => resolve());
    });
  }
  await disconnected;
  await visitorClosed;
  assert.equal(errors.length, 1, errors.join("; "));
  assert.match(errors[0]!, /renegotiation/);
  // Other visitors are served as before.
  const next = await tlsConnect(t, publicPort);
  next.write("next");
  assert.equal((await readBytes(next, 4)).toString(), "next");
});
