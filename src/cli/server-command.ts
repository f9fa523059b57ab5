import tls from "node:tls";
import type { TunnelServerOptions } from "../options.js";
import { TunnelServer } from "../server/tunnel-server.js";
import { CliError, ExitCode, type ExitCodeValue } from "./exit-codes.js";
import { commandHelp, SERVER_FLAGS, SERVER_LIMITS } from "./flags.js";
import { formatBytes, type Output, RateMeter, startStatus } from "./output.js";
import {
  applyLimits,
  listenError,
  startMetrics,
  statusIntervalSeconds,
  stopSignal,
} from "./runtime.js";
import { MAX_PEM_FILE_BYTES, readFileBytes, resolveSettings, type Settings } from "./settings.js";
import { checkTokens, parseTokens, readTokensFile, TokenAuthenticator } from "./tokens.js";
import { formatHostPort, getBoolean, getInteger, getString, where } from "./values.js";

export const SERVER_HELP = commandHelp(
  "w3p-tunnel server [flags]",
  [
    "Runs the public side (on a VPS): clients connect to the control port and each gets a public",
    "port per service. Clients authenticate with a token: give --tokens-file or W3P_TOKENS",
    '(comma-separated); a client sends {"token":"..."}. SIGHUP re-reads the tokens file.',
  ].join("\n"),
  SERVER_FLAGS,
  [
    "w3p-tunnel server --port 9000 --tokens-file /etc/w3p-tunnel/tokens",
    "W3P_TOKENS=s3cret w3p-tunnel server --port 9000 --allowed-ports 20000-20100",
    "w3p-tunnel server --tls-cert fullchain.pem --tls-key privkey.pem --tokens-file tokens --metrics 9464",
  ],
);

/** `w3p-tunnel server`: resolves with the exit code once stopped. */
export async function runServer(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  output: Output,
): Promise<ExitCodeValue> {
  const settings = resolveSettings("server", SERVER_FLAGS, argv, env);
  if (settings.help) {
    output.text(SERVER_HELP);
    return ExitCode.OK;
  }
  const port = getInteger(settings, "port", 0, 65535) ?? 9000;
  const host = getString(settings, "host");
  const auth = loadAuth(settings, env);
  const options: TunnelServerOptions = { ...tlsOptions(settings) };
  if (auth) options.connectionFilter = auth.authenticator.filter;
  const publicHost = getString(settings, "public-host");
  if (publicHost) options.publicHost = publicHost;
  const allowedPorts = getString(settings, "allowed-ports");
  if (allowedPorts) options.allowedPorts = allowedPorts;
  applyLimits(settings, SERVER_LIMITS, options as Record<string, unknown>);

  const signal = stopSignal(output);
  // Installed before anything is printed: a SIGHUP must never find Node's default (exit).
  const reload = () => {
    if (!auth) return;
    try {
      auth.reload();
      output.info(`tokens reloaded: ${auth.describe()}`);
    } catch (err) {
      output.error(`tokens not reloaded, keeping the old ones: ${(err as Error).message}`);
    }
  };
  process.on("SIGHUP", reload);
  const server = new TunnelServer(options);
  logServerEvents(server, output, getBoolean(settings, "verbose"));
  try {
    await server.start(port, host);
  } catch (err) {
    throw listenError(err, `control port ${formatHostPort(host ?? "*", port)}`);
  }
  const secure = options.tls ? "TLS" : "plain TCP";
  output.info(
    `server listening on ${formatHostPort(host ?? "*", server.port!)} (${secure}; ${auth ? auth.describe() : "no authentication: --allow-anyone"})`,
  );
  let metrics: Awaited<ReturnType<typeof startMetrics>> = null;
  try {
    metrics = await startMetrics(settings, server, output);
  } catch (err) {
    await server.stop();
    throw err;
  }
  const stopStatus = startStatus(output, statusIntervalSeconds(settings), serverStatus(server));

  await signal.received;
  stopStatus();
  await Promise.all([server.stop(), metrics?.close()]);
  output.info("server stopped");
  return ExitCode.OK;
}

interface Auth {
  authenticator: TokenAuthenticator;
  reload(): void;
  describe(): string;
}

/** Tokens from --tokens-file and W3P_TOKENS together; none without --allow-anyone is refused. */
function loadAuth(settings: Settings, env: NodeJS.ProcessEnv): Auth | null {
  const file = getString(settings, "tokens-file");
  const envTokens = checkTokens(
    parseTokens((env.W3P_TOKENS ?? "").replace(/,/g, "\n")),
    "W3P_TOKENS",
    ExitCode.USAGE,
  );
  const allowAnyone = getBoolean(settings, "allow-anyone");
  if (allowAnyone && (file || envTokens.length)) {
    throw new CliError(
      ExitCode.USAGE,
      `${where(settings, "allow-anyone")} contradicts ${file ? where(settings, "tokens-file") : "W3P_TOKENS"}: choose tokens or anyone`,
    );
  }
  if (allowAnyone) return null;
  if (!file && envTokens.length === 0) {
    throw new CliError(
      ExitCode.NO_AUTH,
      "no way to authenticate clients: give --tokens-file FILE or W3P_TOKENS=token1,token2 " +
        "(or --allow-anyone to run an open relay on a trusted network)",
    );
  }
  const read = () => [...(file ? readTokensFile(file) : []), ...envTokens];
  const tokens = read();
  if (tokens.length === 0) {
    throw new CliError(ExitCode.NO_AUTH, `tokens file ${file} holds no token`);
  }
  const authenticator = new TokenAuthenticator(tokens);
  const sources = [file ? `tokens file ${file}` : "", envTokens.length ? "W3P_TOKENS" : ""];
  return {
    authenticator,
    reload: () => {
      const fresh = read();
      if (fresh.length === 0) throw new Error(`tokens file ${file} holds no token`);
      authenticator.replace(fresh);
    },
    describe: () =>
      `${authenticator.size} token${authenticator.size === 1 ? "" : "s"} from ${sources.filter(Boolean).join(" and ")}`,
  };
}

function tlsOptions(settings: Settings): Pick<TunnelServerOptions, "tls"> {
  const certPath = getString(settings, "tls-cert");
  const keyPath = getString(settings, "tls-key");
  const publicTls = getBoolean(settings, "public-tls");
  if (!certPath && !keyPath) {
    if (publicTls)
      throw new CliError(ExitCode.USAGE, "--public-tls needs --tls-cert and --tls-key");
    return {};
  }
  if (!certPath || !keyPath) {
    throw new CliError(ExitCode.USAGE, "--tls-cert and --tls-key go together");
  }
  const cert = readFileBytes(certPath, "TLS certificate", MAX_PEM_FILE_BYTES);
  const key = readFileBytes(keyPath, "TLS key", MAX_PEM_FILE_BYTES);
  try {
    tls.createSecureContext({ cert, key });
  } catch (err) {
    throw new CliError(
      ExitCode.FILE,
      `cannot use TLS certificate ${certPath} with key ${keyPath}: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return { tls: { mainServer: { cert, key }, tunnelServer: publicTls ? { cert, key } : false } };
}

function logServerEvents(server: TunnelServer, output: Output, verbose: boolean): void {
  const events = server.events;
  events.on("tunnel-created", ({ clientTunnel }) => {
    const who = formatHostPort(clientTunnel.remoteAddress, clientTunnel.remotePort);
    const id = clientTunnel.clientId ? ` (${clientTunnel.clientId})` : "";
    const ports = clientTunnel.services
      .map(({ name, address }) => `${name} on port ${address.port}`)
      .join(", ");
    output.info(`client connected: ${who}${id}: ${ports}`);
  });
  events.on("tunnel-destroyed", ({ clientTunnel }) => {
    const who = formatHostPort(clientTunnel.remoteAddress, clientTunnel.remotePort);
    output.info(
      `client disconnected: ${who}${clientTunnel.clientId ? ` (${clientTunnel.clientId})` : ""}`,
    );
  });
  events.on("client-authentication-failed", ({ clientTunnel, err }) => {
    const who = formatHostPort(clientTunnel.remoteAddress, clientTunnel.remotePort);
    output.info(`authentication failed: ${who} (${err.code})`);
  });
  events.on("main-server-error", ({ err }) => {
    if (server.port !== null) output.error(`control listener error: ${err.message}`);
  });
  if (!verbose) return;
  events.on("client-error", ({ clientTunnel, err }) => {
    const who = formatHostPort(clientTunnel.remoteAddress, clientTunnel.remotePort);
    output.info(`client error: ${who}: ${err.code} ${err.message}`);
  });
  events.on("connection-rejected", ({ remoteAddress, remotePort, err }) => {
    output.info(`connection rejected: ${formatHostPort(remoteAddress, remotePort)}: ${err.code}`);
  });
  events.on("client-tls-error", ({ remoteAddress, remotePort, err }) => {
    output.info(`TLS error: ${formatHostPort(remoteAddress, remotePort)}: ${err.code}`);
  });
  events.on("visitor-rejected", ({ visitorSocket, err }) => {
    const who = formatHostPort(visitorSocket.remoteAddress ?? "", visitorSocket.remotePort ?? 0);
    output.info(`visitor rejected: ${who}: ${err.code}`);
  });
}

function serverStatus(server: TunnelServer): () => string {
  const meter = new RateMeter();
  return () => {
    const counters = new Map<unknown, { in: number; out: number }>();
    let streams = 0;
    for (const tunnel of server.tunnels) {
      const stats = tunnel.stats();
      streams += stats.streamsActive;
      counters.set(tunnel, { in: stats.bytesIn, out: stats.bytesOut });
    }
    const rate = meter.sample(counters);
    // server.tunnels also holds clients still authenticating: count the tunnels that are up.
    const tunnels = server.stats().tunnels.length;
    return `status: ${tunnels} tunnel${tunnels === 1 ? "" : "s"}, ${streams} stream${streams === 1 ? "" : "s"}, in ${formatBytes(rate.in)}/s, out ${formatBytes(rate.out)}/s`;
  };
}
