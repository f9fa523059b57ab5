#!/usr/bin/env node
/**
 * `w3p-tunnel`: the command-line front of the SDK. `server` runs on the public machine, `client`
 * on the device. Only this layer prints; the library reports through events.
 */
import { readFileSync } from "node:fs";
import { ErrorCodes, TunnelError } from "../errors.js";
import { runClient } from "./client-command.js";
import { CliError, ExitCode, type ExitCodeValue } from "./exit-codes.js";
import { Output } from "./output.js";
import { runServer } from "./server-command.js";

const TOP_HELP = `Usage: w3p-tunnel <command> [flags]

Exposes TCP services of a device behind NAT on the public ports of a server (W3P tunnel protocol).

Commands:
  server   the public side, on a VPS: a control port, and public ports for each client
  client   the device side: connects to a server and exposes local services

  -h, --help      show this help ("w3p-tunnel <command> --help" for a command's flags)
  -V, --version   print the version

Quick start:
  on the VPS:    W3P_TOKENS=s3cret w3p-tunnel server --port 9000
  on the device: W3P_TOKEN=s3cret w3p-tunnel client --server VPS_HOST:9000 --local 3000

Exit codes: 0 stopped by SIGINT/SIGTERM or done, 1 unexpected error, 2 bad flag or value,
3 unreadable file, 4 port in use or not permitted, 5 server without authentication,
6 refused by the server (bad token, forbidden port).
`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));
  return String(pkg.version);
}

async function main(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  output: Output,
): Promise<ExitCodeValue> {
  const [command, ...rest] = argv;
  switch (command) {
    case "server":
      return runServer(rest, env, output);
    case "client":
      return runClient(rest, env, output);
    case undefined:
      output.text(TOP_HELP, true);
      return ExitCode.USAGE;
    case "-h":
    case "--help":
    case "help":
      if (rest[0] === "server" || rest[0] === "client") {
        return command === "help" ? main([rest[0], "--help"], env, output) : printTop(output);
      }
      return printTop(output);
    case "-V":
    case "--version":
      output.info(version());
      return ExitCode.OK;
    default:
      throw new CliError(
        ExitCode.USAGE,
        `unknown command "${command}": expected "server" or "client" (see w3p-tunnel --help)`,
      );
  }
}

function printTop(output: Output): ExitCodeValue {
  output.text(TOP_HELP);
  return ExitCode.OK;
}

/** Maps a failure to one line on stderr and its exit code. */
function reportFailure(err: unknown, output: Output): ExitCodeValue {
  if (err instanceof CliError) {
    output.error(`w3p-tunnel: ${err.message}`);
    return err.exitCode;
  }
  if (err instanceof TunnelError && err.code === ErrorCodes.INVALID_OPTION) {
    output.error(`w3p-tunnel: ${err.message}`);
    return ExitCode.USAGE;
  }
  output.text(
    `w3p-tunnel: unexpected error: ${err instanceof Error ? err.stack : String(err)}`,
    true,
  );
  return ExitCode.RUNTIME;
}

const output = new Output();
main(process.argv.slice(2), process.env, output)
  .catch((err: unknown) => reportFailure(err, output))
  .then((code) => {
    output.clearStatus();
    process.exit(code);
  });
