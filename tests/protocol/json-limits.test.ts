/** The nesting count that runs before any JSON from a peer is parsed. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { jsonNestsDeeperThan } from "../../src/protocol/json-limits.js";

const deeper = (text: string, max: number) => jsonNestsDeeperThan(Buffer.from(text), max);

test("counts objects and arrays together, up to and past the limit", () => {
  assert.equal(deeper("{}", 1), false);
  assert.equal(deeper('{"a":[]}', 1), true);
  assert.equal(deeper('{"a":[]}', 2), false);
  assert.equal(deeper('[{"a":{"b":[1]}}]', 3), true);
  assert.equal(deeper('[{"a":{"b":[1]}}]', 4), false);
  assert.equal(deeper("[[],[],[],[]]", 2), false, "siblings do not add up");
  assert.equal(deeper("42", 0), false);
});

test("brackets inside strings do not count, escaped quotes do not end a string", () => {
  assert.equal(deeper('{"a":"[[[[{{{{"}', 1), false);
  assert.equal(deeper('{"a":"\\"[[[["}', 1), false);
  assert.equal(
    deeper('{"a":"\\\\","b":[[]]}', 2),
    true,
    "an escaped backslash ends before the quote",
  );
  assert.equal(deeper('{"a\\"[":[]}', 1), true, "in a key too");
});

test("malformed text is left to JSON.parse: unbalanced closers never go past the limit", () => {
  assert.equal(deeper("]]]]{", 1), false);
  assert.equal(deeper('"unterminated [[[[', 1), false);
});
