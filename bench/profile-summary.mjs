#!/usr/bin/env node
/**
 * Prints the hottest functions of `.cpuprofile` files (from `node bench/run.mjs --profile`):
 * self time per function, and the share of time spent inside each of our modules.
 *
 *   node bench/profile-summary.mjs bench/results/profiles-<stamp>/*.cpuprofile [--top 25]
 */
import { readFileSync } from "node:fs";
import { basename } from "node:path";

const args = process.argv.slice(2);
const topIndex = args.indexOf("--top");
const top = topIndex >= 0 ? Number(args.splice(topIndex, 2)[1]) : 25;

for (const file of args) {
  const profile = JSON.parse(readFileSync(file, "utf8"));
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const selfUs = new Map();
  const deltas = profile.timeDeltas;
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i];
    selfUs.set(id, (selfUs.get(id) ?? 0) + (deltas[i] ?? 0));
  }
  const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
  const byFunction = new Map();
  const byModule = new Map();
  for (const [id, us] of selfUs) {
    const { callFrame } = byId.get(id);
    const where = callFrame.url ? `${shortUrl(callFrame.url)}:${callFrame.lineNumber + 1}` : "";
    const key = `${callFrame.functionName || "(anonymous)"} ${where}`.trim();
    byFunction.set(key, (byFunction.get(key) ?? 0) + us);
    const module = callFrame.url ? shortUrl(callFrame.url) : callFrame.functionName || "(native)";
    byModule.set(module, (byModule.get(module) ?? 0) + us);
  }
  const idle = byFunction.get("(idle)") ?? 0;
  console.log(
    `\n## ${basename(file)}: ${(total / 1e6).toFixed(2)} s sampled, ${(((total - idle) / total) * 100).toFixed(0)}% busy`,
  );
  const show = (title, map) => {
    console.log(`\n${title}`);
    for (const [name, us] of [...map].sort((a, b) => b[1] - a[1]).slice(0, top)) {
      const busyShare = name.startsWith("(idle)")
        ? ""
        : ` (${((us / (total - idle)) * 100).toFixed(1)}% of busy)`;
      console.log(`${(us / 1000).toFixed(0).padStart(8)} ms  ${name}${busyShare}`);
    }
  };
  show("self time by function", byFunction);
  show("self time by module", byModule);
}

function shortUrl(url) {
  const dist = url.indexOf("/dist/");
  if (dist >= 0) return url.slice(dist + 1);
  return url.replace(/^node:/, "node:").replace(/^file:\/\/.*\/bench\//, "bench/");
}
