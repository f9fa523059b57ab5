import type { ConnectionOptions } from "node:tls";
import { TunnelClient } from "../client/tunnel-client.js";
import { ErrorCodes } from "../errors.js";
import type { ServiceOptions, TunnelClientOptions } from "../options.js";
import { CliError, ExitCode, type ExitCodeValue } from "./exit-codes.js";
import { CLIENT_FLAGS, CLIENT_LIMITS, commandHelp } from "./flags.js";
import { formatBytes, type Output, RateMeter, startStatus } from "./output.js";
import { applyLimits, startMetrics, statusIntervalSeconds, stopSignal } from "./runtime.js";
import {
  MAX_PEM_FILE_BYTES,
  readFileBytes,
  readTextFile,
  resolveSettings,
  type Settings,
} from "./settings.js";
import {
  formatHostPort,
  getBoolean,
  getInteger,
  getList,
  getString,
  parseHostPort,
  parseService,
  where,
} from "./values.js";

export const CLIENT_HELP = commandHelp(
  "w3p-tunnel client --server HOST[:PORT] (--local [HOST:]PORT | --service NAME=HOST:PORT[:REMOTE]...) [flags]",
  [
    "Runs the device side: connects to a tunnel server, exposes local services on its public",
    "ports and reconnects until stopped. When a service is up it prints",
    '"tunnel up: NAME LOCAL -> SERVER_HOST:PUBLIC_PORT". The token is sent as {"token":"..."}.',
  ].join("\n"),
  CLIENT_FLAGS,
  [
    "w3p-tunnel client --server example.com:9000 --local 3000 --token s3cret",
    "W3P_TOKEN=s3cret w3p-tunnel client --server example.com --service web=127.0.0.1:80 --service ssh=127.0.0.1:22:20022",
    "w3p-tunnel client --server example.com --ca server.crt --local 8080 --client-id pi-kitchen",
  ],
);

/** Refusals that retrying cannot fix: with these before the first tunnel, the client gives up. */
const FATAL_REFUSALS = new Set<string>([ErrorCodes.AUTH_REJECTED, ErrorCodes.PORT_NOT_ALLOWED]);

/** `w3p-tunnel client`: resolves with the exit code once stopped. */
export async function runClient(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  output: Output,
): Promise<ExitCodeValue> {
  const settings = resolveSettings("client", CLIENT_FLAGS, argv, env);
  if (settings.help) {
    output.text(CLIENT_HELP);
    return ExitCode.OK;
  }
  const serverSpec = getString(settings, "server");
  if (!serverSpec) {
    throw new CliError(
      ExitCode.USAGE,
      'missing --server HOST[:PORT]; see "w3p-tunnel client --help"',
    );
  }
  const server = parseHostPort(serverSpec, where(settings, "server"), 9000);
  const serverHost = server.host!;
  if (server.port === 0) throw new CliError(ExitCode.USAGE, `${where(settings, "server")}: port 0`);
  const options: TunnelClientOptions = {
    tunnelServerHost: serverHost,
    tunnelServerPort: server.port,
    services: services(settings),
    authenticationCredentials: credentials(settings),
  };
  const tlsConfig = tlsOptions(settings);
  if (tlsConfig) options.tls = tlsConfig;
  const clientId = getString(settings, "client-id");
  if (clientId) options.clientId = clientId;
  const proxy = getString(settings, "proxy-protocol");
  if (proxy !== undefined) {
    if (proxy !== "1" && proxy !== "2") {
      throw new CliError(
        ExitCode.USAGE,
        `${where(settings, "proxy-protocol")} must be 1 or 2, got "${proxy}"`,
      );
    }
    options.proxyProtocol = proxy === "1" ? 1 : 2;
  }
  if (getBoolean(settings, "v1")) {
    if (options.services!.length > 1 || clientId || options.services![0]!.remotePort) {
      throw new CliError(
        ExitCode.USAGE,
        "--v1 carries one service, without --client-id or a remote port (they need the extension handshake)",
      );
    }
    options.extensions = false;
  }
  applyLimits(settings, CLIENT_LIMITS, options as Record<string, unknown>);
  // Devices cut off together (a server restart) should not all come back in the same instant.
  options.reconnectJitter = 0.2;

  const signal = stopSignal(output);
  const client = new TunnelClient(options);
  const watch = watchClient(client, output, serverHost, getBoolean(settings, "verbose"));
  const metrics = await startMetrics(settings, client, output);
  output.info(
    `connecting to ${formatHostPort(serverHost, server.port)}${tlsConfig ? " (TLS)" : ""}`,
  );
  void client.start();
  const stopStatus = startStatus(output, statusIntervalSeconds(settings), clientStatus(client));

  const outcome = await Promise.race([signal.received, watch.refused]);
  watch.stopping = true;
  stopStatus();
  await Promise.all([client.stop(), metrics?.close()]);
  if (typeof outcome !== "string") {
    output.error(`giving up: ${outcome.message} (${outcome.code})`);
    return ExitCode.REFUSED;
  }
  output.info("client stopped");
  return ExitCode.OK;
}

function services(settings: Settings): ServiceOptions[] {
  const local = getString(settings, "local");
  const named = getList(settings, "service");
  const remotePort = getInteger(settings, "remote-port", 1, 65535);
  if (local && named.length) {
    throw new CliError(ExitCode.USAGE, "give either --local or --service, not both");
  }
  if (local) {
    const { host = "localhost", port } = parseHostPort(local, where(settings, "local"));
    if (port === 0) throw new CliError(ExitCode.USAGE, `${where(settings, "local")}: port 0`);
    const service: ServiceOptions = { name: "default", localHost: host, localPort: port };
    if (remotePort !== undefined) service.remotePort = remotePort;
    return [service];
  }
  if (remotePort !== undefined) {
    throw new CliError(
      ExitCode.USAGE,
      "--remote-port goes with --local; with --service write NAME=HOST:PORT:REMOTE",
    );
  }
  if (named.length === 0) {
    throw new CliError(
      ExitCode.USAGE,
      'nothing to expose: give --local [HOST:]PORT or --service NAME=HOST:PORT; see "w3p-tunnel client --help"',
    );
  }
  const list = named.map((spec) => parseService(spec, where(settings, "service")));
  const names = new Set<string>();
  for (const service of list) {
    if (names.has(service.name)) {
      throw new CliError(ExitCode.USAGE, `service name "${service.name}" is given twice`);
    }
    names.add(service.name);
    service.localHost ??= "localhost";
  }
  return list;
}

function credentials(settings: Settings): Record<string, unknown> {
  const token = getString(settings, "token");
  const file = getString(settings, "token-file");
  if (token && file) throw new CliError(ExitCode.USAGE, "give either --token or --token-file");
  if (token) return { token };
  if (file) {
    const fromFile = readTextFile(file, "token file").trim();
    if (!fromFile || /\s/.test(fromFile)) {
      throw new CliError(ExitCode.FILE, `token file ${file} must hold exactly one token`);
    }
    return { token: fromFile };
  }
  return {};
}

function tlsOptions(settings: Settings): ConnectionOptions | null {
  const caPath = getString(settings, "ca");
  const servername = getString(settings, "servername");
  if (!getBoolean(settings, "tls") && !caPath && !servername) return null;
  const options: ConnectionOptions = {};
  if (caPath) options.ca = readFileBytes(caPath, "CA file", MAX_PEM_FILE_BYTES);
  if (servername) options.servername = servername;
  return options;
}

/**
 * Logs the tunnel's life and resolves with the refusal when the server refuses the very first
 * attempt for a reason a retry cannot fix (bad token, forbidden port).
 */
function watchClient(
  client: TunnelClient,
  output: Output,
  serverHost: string,
  verbose: boolean,
): { refused: Promise<{ code: string; message: string }>; stopping: boolean } {
  const events = client.events;
  let everUp = false;
  let up = false;
  let lastError = "";
  let givingUp = false;
  events.on("authentication-acknowledged", ({ services }) => {
    everUp = true;
    up = true;
    lastError = "";
    const local = new Map(client.stats().services.map((s) => [s.name, s]));
    for (const { name, port } of services) {
      const service = local.get(name);
      const from = service ? formatHostPort(service.localHost, service.localPort) : "?";
      output.info(`tunnel up: ${name} ${from} -> ${formatHostPort(serverHost, port)}`);
    }
  });
  events.on("tunnel-error", ({ err }) => {
    lastError = `${err.message} (${err.code})`;
  });
  events.on("server-going-away", ({ err }) => {
    output.info(`server is going away: ${err.message}`);
  });
  events.on("tunnel-disconnected", () => {
    if (up && !watch.stopping) output.info(`tunnel down${lastError ? `: ${lastError}` : ""}`);
    up = false;
  });
  events.on("tunnel-reconnect-queued", ({ timeout }) => {
    if (givingUp) return;
    const why = lastError && !everUp ? ` (${lastError})` : "";
    output.info(`reconnecting in ${(timeout / 1000).toFixed(1)} s${why}`);
    lastError = "";
  });
  if (verbose) {
    events.on("service-error", ({ service, err }) => {
      output.info(`service ${service}: ${err.code} ${err.message}`);
    });
  }
  const watch = {
    stopping: false,
    refused: new Promise<{ code: string; message: string }>((resolve) => {
      events.on("authentication-rejected", ({ err }) => {
        if (!everUp && FATAL_REFUSALS.has(err.code)) {
          givingUp = true;
          resolve({ code: err.code, message: err.message });
          return;
        }
        output.error(`${err.message} (${err.code})`);
      });
    }),
  };
  return watch;
}

function clientStatus(client: TunnelClient): () => string {
  const meter = new RateMeter();
  return () => {
    const stats = client.stats();
    const counters = new Map<unknown, { in: number; out: number }>();
    if (stats.connectedSince) {
      counters.set(stats.connectedSince, { in: stats.bytesIn, out: stats.bytesOut });
    }
    const rate = meter.sample(counters);
    const total = stats.services.length;
    const upCount = stats.connected
      ? stats.services.filter((s) => s.publicPort !== null).length
      : 0;
    const streams = stats.services.reduce((sum, s) => sum + s.streamsActive, 0);
    const rtt = stats.rttMs === null ? "" : `, rtt ${stats.rttMs.toFixed(1)} ms`;
    return `status: ${upCount}/${total} tunnel${total === 1 ? "" : "s"} up, ${streams} stream${streams === 1 ? "" : "s"}, in ${formatBytes(rate.in)}/s, out ${formatBytes(rate.out)}/s${rtt}`;
  };
}
