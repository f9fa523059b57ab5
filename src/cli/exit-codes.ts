/**
 * Exit codes of the `w3p-tunnel` command. Scripts and systemd units rely on them, so each failure
 * class keeps its own number; the README lists them.
 */
export const ExitCode = {
  /** Stopped on request (SIGINT/SIGTERM), or `--help` / `--version`. */
  OK: 0,
  /** An unexpected failure (a bug, or an error with no class of its own). */
  RUNTIME: 1,
  /** Bad command line, environment variable or config value: unknown flag, bad number, etc. */
  USAGE: 2,
  /** A file could not be read or used: config, tokens, certificate, key, CA. */
  FILE: 3,
  /** A port could not be bound: in use, or not permitted (ports below 1024). */
  LISTEN: 4,
  /** The server was given no way to authenticate clients and `--allow-anyone` was not passed. */
  NO_AUTH: 5,
  /** The server refused this client (bad token, forbidden port) before its tunnel was ever up. */
  REFUSED: 6,
} as const;

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** A failure the CLI reports as one clear line and a specific exit code (no stack trace). */
export class CliError extends Error {
  readonly exitCode: ExitCodeValue;

  constructor(exitCode: ExitCodeValue, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CliError";
    this.exitCode = exitCode;
  }
}
