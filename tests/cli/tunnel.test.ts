/**
 * Server and client started from the CLI (real child processes) carrying traffic: tokens, env
 * variables, JSON config, several services, TLS, PROXY protocol, status lines and signals.
 */
import assert from "node:assert/strict";
import { EventEmitter, once } from "node:events";
import { readFileSync } from "node:fs";
import http from "node:http";
import net, { type AddressInfo } from "node:net";
import { type TestContext, test } from "node:test";
import tls from "node:tls";
import { ExitCode } from "../../src/cli/exit-codes.js";
import { CERT_PATH, KEY_PATH, runCli, startCliServer, tempFiles } from "../helpers/cli.js";
import { httpGet } from "../helpers/http.js";
import { connect, listen, onceWithin, readAll, startService } from "../helpers/net.js";
import { v1Handshake } from "../helpers/v1-peer.js";

/** An HTTP service on loopback answering `<name> <path>`. */
async function httpService(t: TestContext, name: string): Promise<number> {
  const server = http.createServer((req, res) => res.end(`${name} ${req.url}`));
  t.after(() => {
    server.closeAllConnections();
    server.close();
  });
  return listen(server);
}

const TUNNEL_UP = (name: string) =>
  new RegExp(`^tunnel up: ${name} \\S+ -> 127\\.0\\.0\\.1:(\\d+)$`);

test("a CLI server and a CLI client carry an HTTP request; SIGTERM stops each with exit 0", async (t) => {
  const web = await httpService(t, "web");
  const tokens = tempFiles(t)("tokens", "# devices\nfirst-token\n\n  pi-token  \n");
  const { run: server, port } = await startCliServer(t, ["--tokens-file", tokens]);
  assert.match(server.stdout[0]!, /2 tokens from tokens file/);
  const client = runCli(t, [
    "client",
    "--server",
    `127.0.0.1:${port}`,
    "--local",
    `127.0.0.1:${web}`,
    "--token",
    "pi-token",
  ]);
  const [line, publicPort] = await client.waitForLine(TUNNEL_UP("default"));
  assert.equal(line, `tunnel up: default 127.0.0.1:${web} -> 127.0.0.1:${publicPort}`);
  await server.waitForLine(
    new RegExp(`^client connected: 127\\.0\\.0\\.1:\\d+: default on port ${publicPort}$`),
  );

  const res = await httpGet(`http://127.0.0.1:${publicPort}/hello`);
  assert.equal(res.status, 200);
  assert.equal(res.body, "web /hello");

  client.child.kill("SIGTERM");
  assert.equal(await client.exitCode(), ExitCode.OK);
  assert.ok(client.stdout.includes("client stopped"), client.stdout.join("\n"));
  await server.waitForLine(/^client disconnected: 127\.0\.0\.1:\d+$/);
  server.child.kill("SIGTERM");
  assert.equal(await server.exitCode(), ExitCode.OK);
  assert.ok(server.stdout.includes("server stopped"));
});

test("a wrong token: the server logs the failure and the client gives up with exit 6", async (t) => {
  const { run: server, port } = await startCliServer(t, [], { W3P_TOKENS: "right" });
  const client = runCli(t, ["client", "-s", `127.0.0.1:${port}`, "-l", "1", "--token", "wrong"]);
  assert.equal(await client.exitCode(), ExitCode.REFUSED);
  assert.match(client.stderr.join("\n"), /W3P_ERR_AUTH_REJECTED/);
  await server.waitForLine(/^authentication failed: 127\.0\.0\.1:\d+ \(W3P_ERR_AUTH_REJECTED\)$/);
  // No token at all is refused the same way.
  const anonymous = runCli(t, ["client", "-s", `127.0.0.1:${port}`, "-l", "1"]);
  assert.equal(await anonymous.exitCode(), ExitCode.REFUSED);
});

test("settings from environment variables; a flag wins over its variable", async (t) => {
  const web = await httpService(t, "env");
  const server = runCli(t, ["server"], {
    W3P_PORT: "0",
    W3P_HOST: "127.0.0.1",
    W3P_TOKENS: "one, two",
    W3P_STATUS_INTERVAL: "0",
  });
  const [, port] = await server.waitForLine(/^server listening on 127\.0\.0\.1:(\d+) /);
  assert.match(server.stdout[0]!, /2 tokens from W3P_TOKENS/);
  const client = runCli(t, ["client", "--token", "two"], {
    W3P_SERVER: `127.0.0.1:${port}`,
    W3P_LOCAL: `127.0.0.1:${web}`,
    W3P_TOKEN: "wrong-but-overridden",
  });
  const [, publicPort] = await client.waitForLine(TUNNEL_UP("default"));
  assert.equal((await httpGet(`http://127.0.0.1:${publicPort}/`)).body, "env /");
});

test("settings from a JSON config file; environment and flags win over it", async (t) => {
  const a = await httpService(t, "a");
  const b = await httpService(t, "b");
  const file = tempFiles(t);
  const serverConfig = file(
    "server.json",
    JSON.stringify({ port: 1, host: "127.0.0.1", allowAnyone: true, "max-clients": 5 }),
  );
  // The file's port 1 would fail (privileged); W3P_PORT=0 wins over it.
  const server = runCli(t, ["server", "--config", serverConfig], { W3P_PORT: "0" });
  const [, port] = await server.waitForLine(/^server listening on 127\.0\.0\.1:(\d+) /);
  assert.match(server.stdout[0]!, /no authentication/);
  const clientConfig = file(
    "client.json",
    JSON.stringify({
      server: `127.0.0.1:${port}`,
      service: [`a=127.0.0.1:${a}`, `b=127.0.0.1:${b}`],
      statusInterval: 0,
      clientId: "from-file",
    }),
  );
  const client = runCli(t, ["client", "--config", clientConfig, "--client-id", "from-flag"]);
  const [, portA] = await client.waitForLine(TUNNEL_UP("a"));
  const [, portB] = await client.waitForLine(TUNNEL_UP("b"));
  await server.waitForLine(/^client connected: .*\(from-flag\)/);
  assert.equal((await httpGet(`http://127.0.0.1:${portA}/x`)).body, "a /x");
  assert.equal((await httpGet(`http://127.0.0.1:${portB}/y`)).body, "b /y");
});

test("several --service: one public port each, a chosen remote port, each request reaches its service", async (t) => {
  const services = { api: await httpService(t, "api"), metrics: await httpService(t, "metrics") };
  // A port that was free a moment ago, to ask for by number.
  const probe = net.createServer();
  await listen(probe);
  const wanted = (probe.address() as AddressInfo).port;
  probe.close();
  await once(probe, "close");
  const { port } = await startCliServer(t, ["--allow-anyone"]);
  const client = runCli(t, [
    "client",
    "--server",
    `127.0.0.1:${port}`,
    "--service",
    `api=127.0.0.1:${services.api}:${wanted}`,
    "--service",
    `metrics=127.0.0.1:${services.metrics}`,
  ]);
  const [, apiPort] = await client.waitForLine(TUNNEL_UP("api"));
  const [, metricsPort] = await client.waitForLine(TUNNEL_UP("metrics"));
  assert.equal(Number(apiPort), wanted);
  assert.notEqual(apiPort, metricsPort);
  assert.equal((await httpGet(`http://127.0.0.1:${apiPort}/a`)).body, "api /a");
  assert.equal((await httpGet(`http://127.0.0.1:${metricsPort}/m`)).body, "metrics /m");
});

test("TLS: the server with --tls-cert/--tls-key, the client with --ca", async (t) => {
  const web = await httpService(t, "tls");
  const { run: server, port } = await startCliServer(t, [
    "--allow-anyone",
    "--tls-cert",
    CERT_PATH,
    "--tls-key",
    KEY_PATH,
  ]);
  assert.match(server.stdout[0]!, /\(TLS;/);
  const client = runCli(t, [
    "client",
    "-s",
    `127.0.0.1:${port}`,
    "-l",
    `127.0.0.1:${web}`,
    "--ca",
    CERT_PATH,
  ]);
  await client.waitForLine(/^connecting to 127\.0\.0\.1:\d+ \(TLS\)$/);
  const [, publicPort] = await client.waitForLine(TUNNEL_UP("default"));
  assert.equal((await httpGet(`http://127.0.0.1:${publicPort}/`)).body, "tls /");
});

test("--proxy-protocol 1: the local service reads a PROXY header first", async (t) => {
  const received = new EventEmitter();
  const service = await startService(t, (socket) => {
    socket.setEncoding("utf8");
    socket.once("data", (chunk: string) => received.emit("header", chunk));
  });
  const { port } = await startCliServer(t, ["--allow-anyone"]);
  const client = runCli(t, [
    "client",
    "-s",
    `127.0.0.1:${port}`,
    "-l",
    `127.0.0.1:${service.port}`,
    "--proxy-protocol",
    "1",
  ]);
  const [, publicPort] = await client.waitForLine(TUNNEL_UP("default"));
  const header = onceWithin<string>(received, "header");
  const visitor = await connect(t, Number(publicPort));
  visitor.write("payload");
  assert.match(await header, /^PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ \d+\r\n/);
});

test("status: a plain log line every --status-interval seconds when not on a terminal", async (t) => {
  const web = await httpService(t, "s");
  const { run: server, port } = await startCliServer(t, [
    "--allow-anyone",
    "--status-interval",
    "1",
  ]);
  const client = runCli(t, [
    "client",
    "-s",
    `127.0.0.1:${port}`,
    "-l",
    `127.0.0.1:${web}`,
    "--status-interval",
    "1",
  ]);
  await client.waitForLine(
    /^status: 1\/1 tunnel up, 0 streams, in [\d.]+ [KMG]?i?B\/s, out [\d.]+ [KMG]?i?B\/s/,
  );
  await server.waitForLine(
    /^status: 1 tunnel, 0 streams, in [\d.]+ [KMG]?i?B\/s, out [\d.]+ [KMG]?i?B\/s$/,
  );
  assert.ok(!client.stdout.join("").includes("\x1b"), "no terminal escapes in a log");
});

test("a client keeps retrying an unreachable server, then SIGINT exits 0", async (t) => {
  // A port nobody listens on: taken from a listener that is closed at once.
  const probe = net.createServer();
  await listen(probe);
  const dead = (probe.address() as AddressInfo).port;
  probe.close();
  await once(probe, "close");
  const client = runCli(t, [
    "client",
    "-s",
    `127.0.0.1:${dead}`,
    "-l",
    "1",
    "--reconnect-max-delay-ms",
    "200",
  ]);
  await client.waitForLine(/^reconnecting in [\d.]+ s \(.*\)$/);
  client.child.kill("SIGINT");
  assert.equal(await client.exitCode(), ExitCode.OK);
});

test("a stopping server tells the client, which notices and keeps retrying", async (t) => {
  const web = await httpService(t, "back");
  const { run: server, port } = await startCliServer(t, ["--allow-anyone"]);
  const client = runCli(t, [
    "client",
    "-s",
    `127.0.0.1:${port}`,
    "-l",
    `127.0.0.1:${web}`,
    "--reconnect-max-delay-ms",
    "200",
  ]);
  await client.waitForLine(TUNNEL_UP("default"));
  server.child.kill("SIGTERM");
  assert.equal(await server.exitCode(), ExitCode.OK);
  await client.waitForLine(/^server is going away: /);
  await client.waitForLine(/^tunnel down/);
  await client.waitForLine(/^reconnecting in /);
});

test("SIGHUP re-reads the tokens file: a token added later is accepted", async (t) => {
  const write = tempFiles(t);
  const tokens = write("tokens", "old-token\n");
  const { run: server, port } = await startCliServer(t, ["--tokens-file", tokens]);
  write("tokens", "old-token\nnew-token\n");
  server.child.kill("SIGHUP");
  await server.waitForLine(/^tokens reloaded: 2 tokens from tokens file /);
  const client = runCli(t, [
    "client",
    "-s",
    `127.0.0.1:${port}`,
    "-l",
    "1",
    "--token",
    "new-token",
  ]);
  await client.waitForLine(TUNNEL_UP("default"));
});

test("--allowed-ports: a port inside the range is given, one outside is refused (exit 6)", async (t) => {
  const probe = net.createServer();
  await listen(probe);
  const allowed = (probe.address() as AddressInfo).port;
  probe.close();
  await once(probe, "close");
  const { port } = await startCliServer(t, ["--allow-anyone", "--allowed-ports", String(allowed)]);
  const outside = allowed === 65535 ? allowed - 1 : allowed + 1;
  const refused = runCli(t, [
    "client",
    "-s",
    `127.0.0.1:${port}`,
    "-l",
    "1",
    "--remote-port",
    String(outside),
  ]);
  assert.equal(await refused.exitCode(), ExitCode.REFUSED);
  assert.match(refused.stderr.join("\n"), /W3P_ERR_PORT_NOT_ALLOWED/);
  const client = runCli(t, ["client", "-s", `127.0.0.1:${port}`, "-l", "1"]);
  const [, publicPort] = await client.waitForLine(TUNNEL_UP("default"));
  assert.equal(Number(publicPort), allowed);
});

test("--v1: a pure v1 handshake still gets a tunnel from the CLI server", async (t) => {
  const web = await httpService(t, "v1");
  const { port } = await startCliServer(t, [], { W3P_TOKENS: "v1-token" });
  const client = runCli(t, [
    "client",
    "-s",
    `127.0.0.1:${port}`,
    "-l",
    `127.0.0.1:${web}`,
    "--token",
    "v1-token",
    "--v1",
  ]);
  const [, publicPort] = await client.waitForLine(TUNNEL_UP("default"));
  assert.equal((await httpGet(`http://127.0.0.1:${publicPort}/old`)).body, "v1 /old");
});

test("--public-tls: visitors reach the service over TLS with the server's certificate", async (t) => {
  const web = await httpService(t, "secure");
  const { port } = await startCliServer(t, [
    "--allow-anyone",
    "--tls-cert",
    CERT_PATH,
    "--tls-key",
    KEY_PATH,
    "--public-tls",
  ]);
  const client = runCli(t, [
    "client",
    "-s",
    `127.0.0.1:${port}`,
    "-l",
    `127.0.0.1:${web}`,
    "--ca",
    CERT_PATH,
  ]);
  const [, publicPort] = await client.waitForLine(TUNNEL_UP("default"));
  const visitor = tls.connect({
    host: "127.0.0.1",
    port: Number(publicPort),
    ca: readFileSync(CERT_PATH),
  });
  t.after(() => visitor.destroy());
  await onceWithin(visitor, "secureConnect");
  const response = readAll(visitor);
  visitor.end("GET /tls HTTP/1.0\r\n\r\n");
  assert.match((await response).toString(), /secure \/tls$/);
});

test("--public-host, --verbose, limit flags (server) and --servername (client) take effect", async (t) => {
  const web = await httpService(t, "flags");
  const { run: server, port } = await startCliServer(t, [
    "--allow-anyone",
    "--verbose",
    "--public-host",
    "127.0.0.1",
    "--handshake-timeout-ms",
    "300",
    "--max-clients",
    "1",
    "--tls-cert",
    CERT_PATH,
    "--tls-key",
    KEY_PATH,
  ]);
  // --servername: the certificate names localhost, not the address dialled.
  const clientArgs = ["client", "-s", `127.0.0.1:${port}`, "-l", `127.0.0.1:${web}`, "--ca"];
  const client = runCli(t, [...clientArgs, CERT_PATH, "--servername", "localhost"]);
  const [, publicPort] = await client.waitForLine(TUNNEL_UP("default"));
  assert.equal((await httpGet(`http://127.0.0.1:${publicPort}/`)).body, "flags /");
  // --public-host 127.0.0.1: the public port is not reachable on ::1.
  const v6 = net.connect({ port: Number(publicPort), host: "::1" });
  const outcome = await new Promise<string>((resolve) => {
    v6.once("connect", () => resolve("connected"));
    v6.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? "error"));
  });
  v6.destroy();
  assert.notEqual(outcome, "connected");
  // --max-clients 1: a second client is refused as "server full" (and keeps retrying later).
  const second = runCli(t, [...clientArgs, CERT_PATH, "--servername", "localhost"]);
  await second.waitForLine(/^server refused the tunnel: .*\(W3P_ERR_TOO_MANY_CLIENTS\)$/, "stderr");
  // --verbose with --handshake-timeout-ms 300: a silent TLS peer is logged once it times out.
  const silent = net.connect({ port, host: "127.0.0.1" });
  silent.on("error", () => {});
  t.after(() => silent.destroy());
  await server.waitForLine(/^TLS error: 127\.0\.0\.1:\d+: W3P_ERR_TLS_HANDSHAKE$/, "stdout", 5_000);
});

test("a second SIGTERM while a stop is stuck flushing exits at once with code 1", async (t) => {
  const { run: server, port } = await startCliServer(t, [
    "--allow-anyone",
    "--stop-grace-ms",
    "60000",
  ]);
  // A v1 client that authenticates, then never reads again: whatever the server queues for it
  // can never be flushed, so a graceful stop has to wait (up to its grace periods).
  const stuck = await connect(t, port);
  stuck.write(v1Handshake({ id: "stuck" }));
  const ack = await onceWithin<Buffer>(stuck, "data");
  const publicPort = Number(/"port":(\d+)/.exec(ack.toString("latin1"))?.[1]);
  stuck.pause();
  const visitor = await connect(t, publicPort);
  const chunk = Buffer.alloc(1 << 20, 0x62);
  // Push until the tunnel stops taking bytes: the server's queue toward `stuck` is then full.
  for (let sent = 0; sent < 256; sent++) {
    if (visitor.write(chunk)) continue;
    const drained = await Promise.race([
      once(visitor, "drain").then(() => true),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 1_000)),
    ]);
    if (!drained) break;
  }
  server.child.kill("SIGTERM");
  await server.waitForLine(/^SIGTERM: stopping$/);
  const signalledAt = Date.now();
  server.child.kill("SIGTERM");
  assert.equal(await server.exitCode(), ExitCode.RUNTIME);
  assert.ok(Date.now() - signalledAt < 5_000, "exited without waiting for the grace period");
  await server.waitForLine(/^SIGTERM again: exiting without waiting$/, "stderr");
  assert.ok(!server.stdout.includes("server stopped"), "the graceful stop had not finished");
});

test("--max-services-per-client: a client asking for more is refused with W3P_ERR_TOO_MANY_SERVICES", async (t) => {
  const web = await httpService(t, "one");
  const { port } = await startCliServer(t, ["--allow-anyone", "--max-services-per-client", "1"]);
  const client = runCli(t, [
    "client",
    "-s",
    `127.0.0.1:${port}`,
    "--service",
    `a=127.0.0.1:${web}`,
    "--service",
    `b=127.0.0.1:${web}`,
  ]);
  await client.waitForLine(
    /^server refused the tunnel: .*\(W3P_ERR_TOO_MANY_SERVICES\)$/,
    "stderr",
  );
});

test("--max-public-ports: past the cap a client is refused with W3P_ERR_TOO_MANY_PORTS", async (t) => {
  const web = await httpService(t, "one");
  const { port } = await startCliServer(t, ["--allow-anyone", "--max-public-ports", "1"]);
  const clientArgs = ["client", "-s", `127.0.0.1:${port}`, "-l", `127.0.0.1:${web}`];
  const first = runCli(t, clientArgs);
  await first.waitForLine(TUNNEL_UP("default"));
  const second = runCli(t, clientArgs);
  await second.waitForLine(/^server refused the tunnel: .*\(W3P_ERR_TOO_MANY_PORTS\)$/, "stderr");
});

test("a client id with a newline and escapes cannot forge or colour server log lines", async (t) => {
  const { run: server, port } = await startCliServer(t, ["--allow-anyone"]);
  const raw = await connect(t, port);
  const evilId = "pi\nclient connected: 10.0.0.66:4444: forged\x1b[31m";
  raw.write(v1Handshake({ w3p: { v: 2, ext: ["services"], clientId: evilId } }));
  const [line] = await server.waitForLine(/^client connected: .*$/);
  assert.ok(line.includes("pi\\u000aclient connected: 10.0.0.66:4444: forged\\u001b[31m"), line);
  assert.ok(!server.stdout.some((l) => l.startsWith("client connected: 10.0.0.66")));
  assert.ok(!server.stdout.join("\n").includes("\x1b"), "no raw escape reached the log");
});
