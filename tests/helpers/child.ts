/**
 * Child processes for fault tests: runs a fixture from tests/fixtures/ under tsx and reads the
 * JSON lines it reports. Every child is killed (SIGKILL) after the test if it is still running.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import type { TestContext } from "node:test";
import { fileURLToPath } from "node:url";

const repoRoot = fileURLToPath(new URL("../../", import.meta.url));

export type Report = Record<string, unknown> & { event: string };

export interface Fixture {
  child: ChildProcess;
  /** Every line reported so far, in order. */
  reports: Report[];
  /** Resolves with the first report (past or future) that matches, or rejects after `ms`. */
  waitFor(predicate: (report: Report) => boolean, ms?: number, what?: string): Promise<Report>;
  /** Resolves once the process has exited. */
  exited: Promise<void>;
  /** SIGKILL: no cleanup of any kind runs in the child (sockets are closed by the kernel). */
  kill9(): Promise<void>;
}

/**
 * `openFiles` runs the fixture under `ulimit -n` (soft and hard: Node raises its soft limit to
 * the hard one at startup).
 */
export function runFixture(
  t: TestContext,
  name: string,
  args: string[],
  { openFiles }: { openFiles?: number } = {},
): Fixture {
  const nodeArgs = ["--import", "tsx", `tests/fixtures/${name}`, ...args];
  const [command, commandArgs] =
    openFiles === undefined
      ? [process.execPath, nodeArgs]
      : ["sh", ["-c", `ulimit -n ${openFiles} && exec "$0" "$@"`, process.execPath, ...nodeArgs]];
  const child = spawn(command, commandArgs, { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
  const reports: Report[] = [];
  const waiters = new Set<{ predicate: (r: Report) => boolean; resolve: (r: Report) => void }>();
  // "close", not "exit": stdout may still hold the last reports when the process exits.
  const exited = once(child, "close").then(() => {});
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  createInterface({ input: child.stdout! }).on("line", (line) => {
    let report: Report;
    try {
      report = JSON.parse(line) as Report;
    } catch {
      return;
    }
    reports.push(report);
    for (const waiter of [...waiters]) {
      if (waiter.predicate(report)) {
        waiters.delete(waiter);
        waiter.resolve(report);
      }
    }
  });
  const kill9 = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
  };
  t.after(kill9);
  return {
    child,
    reports,
    exited,
    kill9,
    waitFor(predicate, ms = 20_000, what = "report") {
      const found = reports.find(predicate);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const waiter = {
          predicate,
          resolve: (report: Report) => {
            clearTimeout(timer);
            resolve(report);
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`${name}: no ${what} within ${ms} ms; stderr: ${stderr.slice(-2000)}`));
        }, ms);
        waiters.add(waiter);
        void exited.then(() => {
          if (!waiters.has(waiter)) return;
          waiters.delete(waiter);
          clearTimeout(timer);
          reject(new Error(`${name} exited before ${what}; stderr: ${stderr.slice(-2000)}`));
        });
      });
    },
  };
}
