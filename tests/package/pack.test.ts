/**
 * The published shape: `npm pack` builds the tarball a user installs; installed into an empty
 * project it imports by name, carries its type declarations and the CLI, and has no dependencies.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const repo = fileURLToPath(new URL("../../", import.meta.url));
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

test("the npm pack tarball installs into an empty project and imports by name", async (t) => {
  const work = mkdtempSync(join(tmpdir(), "w3p-pack-"));
  t.after(() => rmSync(work, { recursive: true, force: true }));
  const quiet = { cwd: repo, env: { ...process.env, npm_config_loglevel: "error" } };
  const { stdout } = await run(npm, ["pack", "--json", "--pack-destination", work], quiet);
  const [info] = JSON.parse(stdout.slice(stdout.indexOf("["))) as {
    filename: string;
    files: { path: string }[];
  }[];
  const files = info!.files.map((file) => file.path);
  assert.ok(files.includes("dist/index.js"), "dist/index.js is packed");
  assert.ok(files.includes("dist/index.d.ts"), "type declarations are packed");
  assert.ok(files.includes("LICENSE"));
  assert.ok(!files.some((file) => file.startsWith("tests/") || file.startsWith("src/")));

  const project = join(work, "app");
  await run("mkdir", ["-p", project]);
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "app", type: "module" }));
  await run(npm, ["install", "--no-audit", "--no-fund", "--offline", join(work, info!.filename)], {
    ...quiet,
    cwd: project,
  });
  const installed = JSON.parse(
    readFileSync(join(project, "node_modules/w3p-tunnel/package.json"), "utf8"),
  ) as { dependencies?: Record<string, string> };
  assert.deepEqual(installed.dependencies ?? {}, {}, "zero runtime dependencies");
  writeFileSync(
    join(project, "check.mjs"),
    `import { TunnelServer, TunnelClient, TunnelError, ErrorCodes } from "w3p-tunnel";
const server = new TunnelServer();
const port = await server.start(0, "127.0.0.1");
const client = new TunnelClient({ tunnelServerHost: "127.0.0.1", tunnelServerPort: port, localServicePort: 1 });
const publicPort = await client.start();
await client.stop();
await server.stop();
console.log(JSON.stringify({ publicPort, error: typeof TunnelError, codes: Object.keys(ErrorCodes).length }));
`,
  );
  const result = await run(process.execPath, ["check.mjs"], { cwd: project });
  const summary = JSON.parse(result.stdout) as { publicPort: number; error: string; codes: number };
  assert.ok(summary.publicPort > 0);
  assert.equal(summary.error, "function");
  assert.ok(summary.codes > 10);
  assert.ok(
    existsSync(join(project, "node_modules/.bin/w3p-tunnel")) ||
      !files.includes("dist/cli/main.js"),
  );
});
