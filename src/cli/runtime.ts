import { type MetricsEndpoint, type MetricsSource, serveMetrics } from "../metrics.js";
import { CliError, ExitCode } from "./exit-codes.js";
import type { LimitFlag } from "./flags.js";
import type { Output } from "./output.js";
import type { Settings } from "./settings.js";
import { getBoolean, getInteger, getString, parseHostPort, where } from "./values.js";

/** Copies every numeric limit flag that is set, and --reset-on-abort, into the library options. */
export function applyLimits(
  settings: Settings,
  flags: readonly LimitFlag[],
  options: Record<string, unknown>,
): void {
  for (const flag of flags) {
    const value = getInteger(settings, flag.name, flag.min);
    if (value !== undefined) options[flag.option] = value;
  }
  if (getBoolean(settings, "reset-on-abort")) options.resetOnAbort = true;
}

export function statusIntervalSeconds(settings: Settings): number {
  return getInteger(settings, "status-interval", 0, 86_400) ?? 60;
}

/** A bind failure (port in use, not permitted) as a LISTEN exit; anything else is rethrown. */
export function listenError(err: unknown, what: string): CliError {
  const cause = (err as { cause?: NodeJS.ErrnoException }).cause;
  const code = cause?.code ?? (err as NodeJS.ErrnoException).code;
  const reason =
    code === "EADDRINUSE"
      ? "address already in use"
      : code === "EACCES"
        ? "permission denied (ports below 1024 need privileges)"
        : code === "EADDRNOTAVAIL"
          ? "address not available on this machine"
          : (err as Error).message;
  return new CliError(ExitCode.LISTEN, `cannot listen on ${what}: ${reason}`, { cause: err });
}

/** Starts the metrics endpoint when `--metrics` is set. */
export async function startMetrics(
  settings: Settings,
  source: MetricsSource,
  output: Output,
): Promise<MetricsEndpoint | null> {
  const spec = getString(settings, "metrics");
  if (spec === undefined) return null;
  const { host = "127.0.0.1", port } = parseHostPort(spec, where(settings, "metrics"));
  try {
    const endpoint = await serveMetrics(source, { host, port });
    output.info(`metrics on ${endpoint.url}`);
    return endpoint;
  } catch (err) {
    throw listenError(err, `metrics address ${spec}`);
  }
}

/**
 * Resolves with the signal name at the first SIGINT or SIGTERM; a second one while stopping
 * exits at once (code 1), for a stop that hangs.
 */
export function stopSignal(output: Output): { received: Promise<string>; dispose(): void } {
  let resolve: (signal: string) => void = () => {};
  const received = new Promise<string>((r) => {
    resolve = r;
  });
  let count = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    count++;
    if (count === 1) {
      output.clearStatus();
      output.info(`${signal}: stopping`);
      resolve(signal);
      return;
    }
    output.error(`${signal} again: exiting without waiting`);
    process.exit(ExitCode.RUNTIME);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  return {
    received,
    dispose: () => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    },
  };
}
