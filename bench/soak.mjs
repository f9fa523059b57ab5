/**
 * Soak: randomized traffic through the tunnel, service, server, client and visitors each in a
 * process of their own (the benchmark's layout), for catching what only timing across processes
 * shows. Many streams at once echo, download or upload random amounts in random pieces, both
 * ends stall at random, some visitors vanish mid-stream and some services fail mid-stream; every
 * byte is checked by position, every other stream must end complete, and afterwards no stream
 * may be left open on either side.
 *
 *   npm run soak -- [--lanes 60] [--rounds 30] [--max-mib 64] [--seed N] [--v1] [--tls] [--chaos]
 *                   [--services N]
 *
 * --services N gives the client N named services (the same local service), each with its own
 * public port; the lanes take turns.
 *
 * --chaos drops the client's control connection every 3 s (the client redials): streams cut by
 * that may end early, but no byte may be wrong, the tunnel must come back, and nothing may be
 * left open.
 *
 * Server and client take other options as JSON in W3P_BENCH_OPTIONS, e.g.
 * W3P_BENCH_OPTIONS='{"streamWindowBytes":65536}' npm run soak
 *
 * Exit code 0 when every stream was whole, none was left open and the live memory (after a full
 * GC) of server and client grew by less than 8 MiB over the run; 1 otherwise (the first failures
 * are printed).
 * A run is a few GiB and takes about a minute at the defaults.
 */
import { startEnvironment } from "./environment.mjs";

/** Live memory (after a full GC) server or client may gain over a run before it counts as a leak. */
const LEAK_MIB = 8;

function parseArgs(argv) {
  const args = {
    lanes: 60,
    rounds: 30,
    maxMib: 64,
    seed: 0,
    v1: false,
    tls: false,
    chaos: false,
    services: 0,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n <= 0) throw new Error(`${arg} wants a positive whole number`);
      return n;
    };
    if (arg === "--lanes") args.lanes = value();
    else if (arg === "--rounds") args.rounds = value();
    else if (arg === "--max-mib") args.maxMib = value();
    else if (arg === "--seed") args.seed = value();
    else if (arg === "--v1") args.v1 = true;
    else if (arg === "--tls") args.tls = true;
    else if (arg === "--chaos") args.chaos = true;
    else if (arg === "--services") args.services = value();
    else throw new Error(`unknown argument ${arg} (see the comment at the top of bench/soak.mjs)`);
  }
  args.seed ||= 1 + Math.floor(Math.random() * 2 ** 30);
  return args;
}

let args;
try {
  args = parseArgs(process.argv.slice(2));
} catch (err) {
  console.error(err.message);
  process.exit(2);
}

// v1: both ends without extensions, so no half-close (the visitor ends after its echo instead).
// Other options for server and client may come in W3P_BENCH_OPTIONS (JSON), as for the benchmark.
// Chaos: the client is known by its credentials (v1 too), so it gets its port back when it
// redials (a lease), and it redials quickly.
const options = JSON.parse(process.env.W3P_BENCH_OPTIONS || "{}");
if (args.v1) options.extensions = false;
if (args.chaos) {
  options.reconnectInitialDelayMs = 200;
  process.env.W3P_BENCH_IDENTITY = "1";
}
process.env.W3P_BENCH_OPTIONS = JSON.stringify(options);
if (args.services > 0) process.env.W3P_BENCH_SERVICES = String(args.services);
const env = await startEnvironment({ tls: args.tls });
let ok = false;
try {
  console.log(
    `soak: ${args.lanes} streams at once x ${args.rounds} rounds, up to ${args.maxMib} MiB each, ` +
      `seed ${args.seed}${args.v1 ? ", v1" : ""}${args.tls ? ", TLS" : ""}` +
      `${args.chaos ? ", chaos" : ""}${args.services ? `, ${args.services} services` : ""}`,
  );
  // Every service's public port (one unless --services); v1 serves only the first.
  const ports = (await env.client.call("publicPorts")).filter((port) => port !== null);
  // Live memory (after a full GC) of server and client before and after: what a leak would leave.
  const live = () => Promise.all([env.server.call("live"), env.client.call("live")]);
  const soak = (run) =>
    env.endpoint.call("soak", {
      ports,
      lanes: args.lanes,
      rounds: args.rounds,
      maxBytes: args.maxMib * 1024 * 1024,
      halfClose: !args.v1,
      seed: args.seed,
      ...run,
    });
  // One small round first, so the baseline includes everything that is set up once.
  await soak({ lanes: 4, rounds: 2, maxBytes: 1 << 20 });
  const liveBefore = await live();
  let drops = 0;
  const chaos = args.chaos
    ? setInterval(() => {
        env.client.call("dropControl").then((dropped) => {
          if (dropped) drops++;
        });
      }, 3_000)
    : null;
  const result = await soak({ chaos: args.chaos });
  clearInterval(chaos);
  // After chaos the tunnel must come back: a short calm round must pass in full.
  let recovered = null;
  if (args.chaos) {
    for (let i = 0; i < 100 && !(await env.client.call("stats")).connected; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    recovered = await soak({ lanes: 10, rounds: 2, seed: args.seed + 1 });
    result.failed += recovered.failed;
    result.failures.push(...recovered.failures.map((f) => `after chaos: ${f}`));
  }
  // The last streams close a moment after their visitors saw the end: give them 10 s.
  const openStreams = () => Promise.all([env.server.call("stats"), env.client.call("stats")]);
  let [server, client] = await openStreams();
  for (let i = 0; i < 100 && server.streamsActive + client.streamsActive > 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    [server, client] = await openStreams();
  }
  const problems = await env.problems();
  const liveAfter = await live();
  const grownMiB = liveAfter.map((after, i) => (after - liveBefore[i]) / 2 ** 20);
  if (args.chaos) {
    console.log(
      `control connection dropped ${drops} times; ${result.disrupted} streams cut by it; ` +
        `afterwards ${recovered.streams - recovered.failed} of ${recovered.streams} streams whole`,
    );
  }
  console.log(
    `${result.streams} streams (${result.cutOff} cut off by their visitor), ` +
      `${(result.bytes / 2 ** 20).toFixed(0)} MiB checked in ${result.seconds.toFixed(1)} s; ` +
      `${result.failed} failed; streams left open (waited up to 10 s): server ${server.streamsActive}, client ${client.streamsActive}`,
  );
  console.log(
    `live memory after GC, before → after: server ${(liveBefore[0] / 2 ** 20).toFixed(1)} → ` +
      `${(liveAfter[0] / 2 ** 20).toFixed(1)} MiB, client ${(liveBefore[1] / 2 ** 20).toFixed(1)} → ` +
      `${(liveAfter[1] / 2 ** 20).toFixed(1)} MiB`,
  );
  for (const failure of result.failures) console.log(`  FAILED ${failure}`);
  for (const problem of problems) console.log(`  ${problem}`);
  // Warming up (compiled code, grown tables, the control reader's spare buffers) adds about
  // 1 MiB whatever the length of the run; a leak of what streams hold grows with it.
  const leaked = grownMiB.some((mib) => mib > LEAK_MIB);
  if (leaked) console.log(`  FAILED live memory grew by more than ${LEAK_MIB} MiB`);
  ok = result.failed === 0 && server.streamsActive === 0 && client.streamsActive === 0 && !leaked;
} finally {
  await env.stop();
}
console.log(ok ? "soak: passed" : `soak: FAILED (replay with --seed ${args.seed})`);
process.exit(ok ? 0 : 1);
