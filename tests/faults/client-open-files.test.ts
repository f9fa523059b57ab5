/**
 * Every stream of a client holds a local socket, one file descriptor. Unless `maxStreams` is set,
 * a client now refuses streams short of its open-file limit (the share the server's
 * `maxConnections` uses). Before, a visitor flood made the client dial until accept-side
 * descriptors ran out: the dials failed with EMFILE, and the process around the client had no
 * descriptor left for its own files or for reconnecting. Checked with the client in a child
 * process under `ulimit -n`.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { type TestContext, test } from "node:test";
import { defaultMaxConnections } from "../../src/descriptor-limit.js";
import { ErrorCodes } from "../../src/errors.js";
import { TunnelServer } from "../../src/server/tunnel-server.js";
import { runFixture } from "../helpers/child.js";
import { connect, echoService, readBytes, WAIT_MS, withTimeout } from "../helpers/net.js";

const OPEN_FILES = 128;
/** More visitors than the child has descriptors. */
const VISITORS = 160;

/** Resolves with the visitor when its byte came back, or null when it was closed instead. */
async function visit(t: TestContext, port: number): Promise<Socket | null> {
  const visitor = await connect(t, port);
  visitor.on("error", () => {});
  const closed = new Promise<null>((resolve) => visitor.once("close", () => resolve(null)));
  visitor.write("x");
  return Promise.race([readBytes(visitor, 1).then(() => visitor), closed]);
}

test("a client under a low open-file limit refuses streams past its share instead of running out", async (t) => {
  const service = await echoService(t);
  const server = new TunnelServer();
  t.after(() => server.stop());
  const controlPort = await server.start(0, "127.0.0.1");
  const child = runFixture(t, "client-process.ts", [String(controlPort), String(service.port)], {
    openFiles: OPEN_FILES,
  });
  const { port } = await child.waitFor((r) => r.event === "ack");
  const limit = defaultMaxConnections(() => `Max open files ${OPEN_FILES} ${OPEN_FILES} files\n`);
  assert.ok(limit < VISITORS - 40, `the share (${limit}) leaves visitors over`);

  const visitors = await withTimeout(
    Promise.all(Array.from({ length: VISITORS }, () => visit(t, port as number))),
    WAIT_MS,
    "every visitor to be echoed or closed",
  );
  const served = visitors.filter((v): v is Socket => v !== null);
  assert.equal(served.length, limit, "streams served: exactly the share of the open-file limit");
  const rejected = await child.waitFor(
    () => child.reports.filter((r) => r.event === "stream-rejected").length >= VISITORS - limit,
    WAIT_MS,
    "a stream-rejected report per refused visitor",
  );
  assert.ok(rejected);
  for (const report of child.reports.filter((r) => r.event === "stream-rejected")) {
    assert.equal(report.code, ErrorCodes.TOO_MANY_STREAMS);
    assert.match(String(report.message), /open-file limit/);
  }
  assert.deepEqual(
    child.reports.filter((r) => r.event === "service-error"),
    [],
    "no local dial failed",
  );

  // The places come back: with the served visitors gone, a new one is served.
  for (const visitor of served) visitor.destroy();
  const again = await withTimeout(
    (async () => {
      for (;;) {
        const visitor = await visit(t, port as number);
        if (visitor) return visitor;
      }
    })(),
    WAIT_MS,
    "a visitor to be served again",
  );
  again.destroy();
});
