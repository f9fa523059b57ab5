/** The service host name cache: one lookup per name and second, failures never kept. */
import assert from "node:assert/strict";
import type { LookupAddress } from "node:dns";
import { test } from "node:test";
import { cachedLookup, type Resolve } from "../../src/client/cached-lookup.js";

const ADDRESSES: LookupAddress[] = [
  { address: "127.0.0.1", family: 4 },
  { address: "::1", family: 6 },
];

function fakeResolver(answers: Array<LookupAddress[] | Error>) {
  const calls: string[] = [];
  const resolve: Resolve = (hostname, _options, callback) => {
    calls.push(hostname);
    const answer = answers.shift() ?? ADDRESSES;
    if (answer instanceof Error) callback(answer, []);
    else callback(null, answer);
  };
  return { calls, resolve };
}

/** Runs one lookup and returns what its callback got. */
function ask(lookup: ReturnType<typeof cachedLookup>, hostname: string, all: boolean) {
  let result: unknown[] = [];
  lookup(hostname, { all } as never, (...args: unknown[]) => {
    result = args;
  });
  return result;
}

test("cachedLookup: a name is resolved once within the time to live, in both answer shapes", () => {
  let clock = 1_000;
  const { calls, resolve } = fakeResolver([]);
  const lookup = cachedLookup(1_000, resolve, () => clock);
  assert.deepEqual(ask(lookup, "localhost", false), [null, "127.0.0.1", 4]);
  assert.deepEqual(ask(lookup, "localhost", true), [null, ADDRESSES]);
  clock += 999;
  ask(lookup, "localhost", false);
  assert.deepEqual(calls, ["localhost"]);
  clock += 1;
  ask(lookup, "localhost", false);
  assert.deepEqual(calls, ["localhost", "localhost"], "looked up again after the time to live");
  ask(lookup, "service.lan", false);
  assert.deepEqual(calls, ["localhost", "localhost", "service.lan"], "each name on its own");
});

test("cachedLookup: a failed lookup is passed on and not kept", () => {
  const failure = Object.assign(new Error("getaddrinfo ENOTFOUND nowhere"), { code: "ENOTFOUND" });
  const { calls, resolve } = fakeResolver([failure, ADDRESSES]);
  const lookup = cachedLookup(60_000, resolve, () => 0);
  const [err] = ask(lookup, "nowhere", false);
  assert.equal((err as NodeJS.ErrnoException).code, "ENOTFOUND");
  assert.deepEqual(ask(lookup, "nowhere", true), [null, ADDRESSES]);
  assert.equal(calls.length, 2);
});

test("cachedLookup: an empty answer is an ENOTFOUND error, not a crash", () => {
  const { resolve } = fakeResolver([[]]);
  const lookup = cachedLookup(1_000, resolve, () => 0);
  const [err] = ask(lookup, "empty", false);
  assert.equal((err as NodeJS.ErrnoException).code, "ENOTFOUND");
});
