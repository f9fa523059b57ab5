/** TLS, crypto and HTTP load on first use, on every Node this package supports. */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import net from "node:net";
import { test } from "node:test";
import tls from "node:tls";
import { fileURLToPath } from "node:url";
import { isTlsSocket, tlsModule } from "../../src/lazy-builtins.js";

test("isTlsSocket tells TLS sockets from plain ones without loading node:tls itself", () => {
  assert.equal(isTlsSocket(new tls.TLSSocket(new net.Socket())), true);
  assert.equal(isTlsSocket(new net.Socket()), false);
  assert.equal(tlsModule(), tls);
});

test("without process.getBuiltinModule (Node before 20.16) the modules still load", () => {
  const source = fileURLToPath(new URL("../../src/lazy-builtins.ts", import.meta.url));
  const script = `delete process.getBuiltinModule;
    const l = await import(${JSON.stringify(source)});
    console.log([typeof l.tlsModule().connect, typeof l.cryptoModule().X509Certificate,
      typeof l.httpModule().createServer].join(","));`;
  const out = execFileSync(
    process.execPath,
    ["--import", "tsx", "--input-type=module", "-e", script],
    {
      encoding: "utf8",
    },
  );
  assert.equal(out.trim(), "function,function,function");
});
