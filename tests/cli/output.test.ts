/** The status line on a terminal (redrawn in place) and in a log; byte rates from counters. */
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, test } from "node:test";
import { formatBytes, Output, oneLine, RateMeter } from "../../src/cli/output.js";

function fakeStream(tty: boolean): { stream: PassThrough & { isTTY?: boolean }; text(): string } {
  const stream = new PassThrough() as PassThrough & { isTTY?: boolean };
  if (tty) stream.isTTY = true;
  let written = "";
  stream.on("data", (chunk: Buffer) => {
    written += chunk.toString();
  });
  return { stream, text: () => written };
}

const CLEAR = "\r\x1b[2K";

describe("Output", () => {
  test("on a terminal the status is redrawn in place and log lines go above it", async () => {
    const out = fakeStream(true);
    const err = fakeStream(true);
    const output = new Output(out.stream, err.stream);
    assert.equal(output.tty, true);
    output.status("status: 1");
    output.status("status: 2");
    output.info("tunnel up: x");
    output.error("oops");
    output.clearStatus();
    await new Promise(setImmediate);
    assert.equal(
      out.text(),
      `${CLEAR}status: 1${CLEAR}status: 2${CLEAR}tunnel up: x\nstatus: 2${CLEAR}status: 2${CLEAR}`,
    );
    assert.equal(err.text(), "oops\n");
  });

  test("elsewhere the status is a plain log line and nothing is cleared", async () => {
    const out = fakeStream(false);
    const output = new Output(out.stream, fakeStream(false).stream);
    assert.equal(output.tty, false);
    output.status("status: 1");
    output.info("line");
    output.clearStatus();
    await new Promise(setImmediate);
    assert.equal(out.text(), "status: 1\nline\n");
  });
});

describe("peer text in log lines", () => {
  test("newlines, terminal escapes and line separators are escaped; own text is untouched", async () => {
    const out = fakeStream(false);
    const err = fakeStream(false);
    const output = new Output(out.stream, err.stream);
    output.info("client connected: pi\nclient connected: 10.0.0.66:4444 (root)\x1b[31m");
    output.error("server is going away: bye\r\u2028\u009b2J\x7f");
    output.status("status: \x1b]0;title\x07");
    output.text("usage:\n  two lines");
    await new Promise(setImmediate);
    assert.equal(
      out.text(),
      "client connected: pi\\u000aclient connected: 10.0.0.66:4444 (root)\\u001b[31m\n" +
        "status: \\u001b]0;title\\u0007\n" +
        "usage:\n  two lines\n",
    );
    assert.equal(err.text(), "server is going away: bye\\u000d\\u2028\\u009b2J\\u007f\n");
    assert.equal(
      oneLine("tunnel up: web 127.0.0.1:80 -> [::1]:9000"),
      "tunnel up: web 127.0.0.1:80 -> [::1]:9000",
    );
  });
});

describe("RateMeter", () => {
  test("rates come from deltas per key; a vanished or restarted counter is never negative", () => {
    const meter = new RateMeter();
    const a = {};
    const b = {};
    meter.sample(
      new Map([
        [a, { in: 1000, out: 10 }],
        [b, { in: 5000, out: 5000 }],
      ]),
    );
    // b left; a restarted from zero (a reconnect) and moved 100 bytes in.
    const rate = meter.sample(new Map([[a, { in: 100, out: 10 }]]));
    assert.ok(rate.in > 0, "the restarted counter counts from zero");
    assert.equal(rate.out, 0);
  });

  test("formatBytes is short and binary", () => {
    assert.equal(formatBytes(0), "0 B");
    assert.equal(formatBytes(1023), "1023 B");
    assert.equal(formatBytes(1536), "1.5 KiB");
    assert.equal(formatBytes(5 * 1024 * 1024), "5.0 MiB");
  });
});
