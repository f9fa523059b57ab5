/**
 * Runs the `w3p-tunnel` CLI as a real child process (node + tsx on src/cli/main.ts) and waits on
 * its output lines. Every process is killed after the test, whatever its outcome.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { fileURLToPath } from "node:url";
import { WAIT_MS } from "./net.js";

export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const CERT_PATH = join(REPO_ROOT, "certs", "localhost.crt");
export const KEY_PATH = join(REPO_ROOT, "certs", "localhost.key");

export interface CliRun {
  child: ChildProcess;
  /** Every complete line so far, stdout and stderr apart. */
  stdout: string[];
  stderr: string[];
  /** Resolves with the first line (past or future) matching `pattern`, on the chosen stream. */
  waitForLine(
    pattern: RegExp,
    stream?: "stdout" | "stderr",
    ms?: number,
  ): Promise<RegExpMatchArray>;
  /** Resolves with the exit code once the process has exited. */
  exitCode(ms?: number): Promise<number | null>;
}

/** The environment of the test run minus every W3P_* variable, plus `env`. */
function cleanEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith("W3P_") && key !== "NODE_DEBUG") base[key] = value;
  }
  return { ...base, ...env };
}

export function runCli(t: TestContext, args: string[], env: Record<string, string> = {}): CliRun {
  return runScript(t, ["src/cli/main.ts", ...args], env);
}

/** Runs a TypeScript file of the repo (through tsx) as a child process, killed after the test. */
export function runScript(
  t: TestContext,
  args: string[],
  env: Record<string, string> = {},
): CliRun {
  const child = spawn(process.execPath, ["--import", "tsx", ...args], {
    cwd: REPO_ROOT,
    env: cleanEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = once(child, "exit").then(([code]) => code as number | null);
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited;
    }
  });
  const lines = { stdout: [] as string[], stderr: [] as string[] };
  const waiters = new Set<{
    stream: "stdout" | "stderr";
    pattern: RegExp;
    found(m: RegExpMatchArray): void;
  }>();
  for (const stream of ["stdout", "stderr"] as const) {
    let partial = "";
    child[stream]!.setEncoding("utf8");
    child[stream]!.on("data", (chunk: string) => {
      const parts = (partial + chunk).split("\n");
      partial = parts.pop() ?? "";
      for (const line of parts) {
        lines[stream].push(line);
        for (const waiter of waiters) {
          const match = waiter.stream === stream ? waiter.pattern.exec(line) : null;
          if (match) {
            waiters.delete(waiter);
            waiter.found(match);
          }
        }
      }
    });
  }
  const describe = () =>
    `\n--- stdout:\n${lines.stdout.join("\n")}\n--- stderr:\n${lines.stderr.join("\n")}`;
  return {
    child,
    stdout: lines.stdout,
    stderr: lines.stderr,
    waitForLine(pattern, stream = "stdout", ms = WAIT_MS) {
      for (const line of lines[stream]) {
        const match = pattern.exec(line);
        if (match) return Promise.resolve(match);
      }
      return new Promise((resolve, reject) => {
        const waiter = {
          stream,
          pattern,
          found: (match: RegExpMatchArray) => {
            clearTimeout(timer);
            resolve(match);
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`no ${stream} line matching ${pattern} within ${ms} ms${describe()}`));
        }, ms);
        waiters.add(waiter);
        void exited.then((code) => {
          // Let the last output chunks arrive before declaring the line missing.
          setImmediate(() => {
            if (!waiters.has(waiter)) return;
            waiters.delete(waiter);
            clearTimeout(timer);
            reject(
              new Error(
                `exited (${code}) before a ${stream} line matching ${pattern}${describe()}`,
              ),
            );
          });
        });
      });
    },
    async exitCode(ms = WAIT_MS) {
      const timer = setTimeout(() => child.kill("SIGKILL"), ms);
      try {
        const code = await exited;
        if (child.signalCode === "SIGKILL")
          throw new Error(`did not exit within ${ms} ms${describe()}`);
        return code;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** Runs the CLI to completion and returns its exit code and output. */
export async function runToExit(
  t: TestContext,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const run = runCli(t, args, env);
  const code = await run.exitCode();
  // 'exit' can come before the pipes are drained: wait for them to close.
  await Promise.all(
    [run.child.stdout!, run.child.stderr!].map((s) => (s.closed ? null : once(s, "close"))),
  );
  return { code, stdout: run.stdout.join("\n"), stderr: run.stderr.join("\n") };
}

/** A temporary directory removed after the test; returns a function writing files into it. */
export function tempFiles(t: TestContext): (name: string, content: string) => string {
  const dir = mkdtempSync(join(tmpdir(), "w3p-cli-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return (name, content) => {
    const path = join(dir, name);
    writeFileSync(path, content);
    return path;
  };
}

/** Starts `w3p-tunnel server` on an ephemeral loopback port; resolves with its control port. */
export async function startCliServer(
  t: TestContext,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ run: CliRun; port: number }> {
  const run = runCli(t, ["server", "--port", "0", "--host", "127.0.0.1", ...args], env);
  const [, port] = await run.waitForLine(/^server listening on 127\.0\.0\.1:(\d+) /);
  return { run, port: Number(port) };
}
