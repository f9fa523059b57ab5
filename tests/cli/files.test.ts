/**
 * The files named by --tokens-file, --token-file and --config are read with a size cap
 * (MAX_SETTINGS_FILE_BYTES, 1 MiB) and never block: a bigger file, an endless device and a FIFO
 * with no writer each exit 3 at once with one line naming the file. A pipe that does end (a
 * process substitution) is still read.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, type TestContext, test } from "node:test";
import { ExitCode } from "../../src/cli/exit-codes.js";
import { REPO_ROOT, runCli } from "../helpers/cli.js";

/** The documented cap (MAX_SETTINGS_FILE_BYTES in src/cli/settings.ts). */
const MAX_SETTINGS_FILE_BYTES = 1024 * 1024;

/** How long a refusal may take: start-up through tsx included, far less than a hang. */
const PROMPT_MS = 8000;

/** The three ways to hand the CLI a settings file, each with nothing else that could fail first. */
const FLAGS: Array<[string, (path: string) => string[]]> = [
  ["--tokens-file", (path) => ["server", "--port", "0", "--tokens-file", path]],
  ["--token-file", (path) => ["client", "-s", "127.0.0.1:1", "-l", "1", "--token-file", path]],
  ["--config", (path) => ["server", "--port", "0", "--config", path]],
];

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "w3p-cli-files-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs the CLI and checks it exits 3 promptly with one line on stderr naming `path`. */
async function assertRefused(
  t: TestContext,
  args: string[],
  path: string,
  reason: RegExp,
): Promise<void> {
  const run = runCli(t, args);
  const started = performance.now();
  const code = await run.exitCode(PROMPT_MS);
  await Promise.all(
    [run.child.stdout!, run.child.stderr!].map((s) => (s.closed ? null : once(s, "close"))),
  );
  const stderr = run.stderr.filter((line) => line !== "");
  const what = `${args.join(" ")}: ${stderr.join(" | ")}`;
  assert.equal(code, ExitCode.FILE, what);
  assert.equal(stderr.length, 1, `one line, no stack trace: ${what}`);
  assert.ok(stderr[0]!.includes(path), `names ${path}: ${what}`);
  assert.match(stderr[0]!, reason, what);
  assert.ok(performance.now() - started < PROMPT_MS, what);
}

describe("settings files are read with a size cap and never block", { concurrency: 3 }, () => {
  test("a 600 MiB (sparse) file is refused before it is read: exit 3 naming the limit", async (t) => {
    const path = join(tempDir(t), "huge");
    const fd = openSync(path, "w");
    try {
      ftruncateSync(fd, 600 * 1024 * 1024);
    } finally {
      closeSync(fd);
    }
    for (const [, args] of FLAGS) await assertRefused(t, args(path), path, /larger than 1 MiB/);
  });

  test("one byte over the cap is refused; exactly the cap is read", async (t) => {
    const dir = tempDir(t);
    const over = join(dir, "over");
    writeFileSync(over, "#".repeat(MAX_SETTINGS_FILE_BYTES + 1));
    for (const [, args] of FLAGS) await assertRefused(t, args(over), over, /larger than 1 MiB/);

    const atCap = join(dir, "tokens");
    const token = "s3cret\n";
    writeFileSync(atCap, `${token}#${"x".repeat(MAX_SETTINGS_FILE_BYTES - token.length - 2)}\n`);
    const run = runCli(t, ["server", "--port", "0", "--host", "127.0.0.1", "--tokens-file", atCap]);
    await run.waitForLine(/^server listening on .*1 token from tokens file/);
  });

  test("/dev/zero: exit 3 at once, not an endless read", async (t) => {
    for (const [, args] of FLAGS) {
      await assertRefused(t, args("/dev/zero"), "/dev/zero", /larger than 1 MiB/);
    }
  });

  test("a FIFO with no writer: exit 3 at once, not a hang", async (t) => {
    const path = join(tempDir(t), "fifo");
    try {
      execFileSync("mkfifo", [path], { stdio: "ignore" });
    } catch (err) {
      const why = `mkfifo is not available: ${(err as Error).message}`;
      console.log(`skipping the FIFO case: ${why}`);
      t.skip(why);
      return;
    }
    for (const [, args] of FLAGS) await assertRefused(t, args(path), path, /no writer/);
  });

  test("a pipe that ends is still read: --tokens-file <(process substitution)", async (t) => {
    try {
      execFileSync("bash", ["-c", "true"], { stdio: "ignore" });
    } catch (err) {
      const why = `bash is not available: ${(err as Error).message}`;
      console.log(`skipping the process substitution case: ${why}`);
      t.skip(why);
      return;
    }
    // The tokens come a little later: the CLI must wait for the pipe's end, not take it as empty.
    const script =
      'exec "$0" --import tsx src/cli/main.ts server --port 0 --host 127.0.0.1 ' +
      "--tokens-file <(sleep 0.3; printf 'first\\nsecond\\n')";
    const child = spawn("bash", ["-c", script, process.execPath], {
      cwd: REPO_ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const exited = once(child, "exit");
    t.after(async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGKILL");
        await exited;
      }
    });
    let output = "";
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk: string) => {
      output += chunk;
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no start-up line: ${output}`)), PROMPT_MS);
      child.stdout.on("data", (chunk: string) => {
        output += chunk;
        if (/server listening on .*2 tokens from tokens file \/dev\/fd\/\d+/.test(output)) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`exited ${code}: ${output}`));
      });
    });
  });
});
