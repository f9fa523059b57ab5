/** Errors a peer can cause at a high rate are built without a stack, and nothing else changes. */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ErrorCodes,
  stacklessError,
  TunnelError,
  toStacklessError,
  toTunnelError,
} from "../../src/errors.js";

test("stacklessError: a TunnelError with code, message and cause, and no stack frames", () => {
  const cause = new Error("boom");
  const err = stacklessError(ErrorCodes.TOO_MANY_STREAMS, "too many", { cause });
  assert.ok(err instanceof TunnelError);
  assert.equal(err.code, ErrorCodes.TOO_MANY_STREAMS);
  assert.equal(err.message, "too many");
  assert.equal(err.cause, cause);
  assert.doesNotMatch(String(err.stack), /\n\s+at /);
  // Errors built the usual way keep their stacks: the limit is restored.
  assert.match(String(new TunnelError(ErrorCodes.SOCKET, "x").stack), /\n\s+at /);
});

test("stacklessError restores a stackTraceLimit the host set", () => {
  const before = Error.stackTraceLimit;
  Error.stackTraceLimit = 3;
  try {
    stacklessError(ErrorCodes.SOCKET, "x");
    assert.equal(Error.stackTraceLimit, 3);
  } finally {
    Error.stackTraceLimit = before;
  }
});

test("toStacklessError wraps like toTunnelError and passes a TunnelError through", () => {
  const socketError = Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" });
  const wrapped = toStacklessError(socketError, ErrorCodes.SOCKET, "visitor connection failed");
  const usual = toTunnelError(socketError, ErrorCodes.SOCKET, "visitor connection failed");
  assert.equal(wrapped.message, usual.message);
  assert.equal(wrapped.code, usual.code);
  assert.equal(wrapped.cause, socketError);
  const coded = new TunnelError(ErrorCodes.STREAM_IDLE, "idle");
  assert.equal(toStacklessError(coded, ErrorCodes.SOCKET, "x"), coded);
});
