/** The memory of stream ids a v1 client closed: bounded by age and by count. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { RecentlyClosedStreams } from "../../src/mux/recently-closed.js";

test("RecentlyClosedStreams: remembers an id for maxAgeMs, then forgets it", () => {
  const closed = new RecentlyClosedStreams(1_000);
  closed.add(7, 10_000);
  assert.equal(closed.has(7, 10_999), true);
  assert.equal(closed.has(8, 10_999), false);
  assert.equal(closed.has(7, 11_000), false);
  assert.equal(closed.size, 0);
});

test("RecentlyClosedStreams: keeps at most `capacity` ids, dropping the oldest", () => {
  const closed = new RecentlyClosedStreams(60_000, 3);
  for (const id of [1, 2, 3, 4]) closed.add(id, 1_000 + id);
  assert.equal(closed.size, 3);
  assert.equal(closed.has(1, 1_010), false);
  assert.deepEqual(
    [2, 3, 4].map((id) => closed.has(id, 1_010)),
    [true, true, true],
  );
});

test("RecentlyClosedStreams: closing an id again renews it; delete forgets it at once", () => {
  const closed = new RecentlyClosedStreams(1_000, 2);
  closed.add(1, 0);
  closed.add(2, 100);
  closed.add(1, 500); // renewed: now the newest, so 2 is the one to go
  closed.add(3, 600);
  assert.equal(closed.has(2, 700), false);
  assert.equal(closed.has(1, 1_400), true);
  closed.delete(1);
  assert.equal(closed.has(1, 1_400), false);
});
