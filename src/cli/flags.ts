import type { LimitOptions, TunnelClientOptions, TunnelServerOptions } from "../options.js";
import { envName, type FlagSpec } from "./settings.js";

/** A numeric limit passed straight to a library option of the same meaning. */
export interface LimitFlag extends FlagSpec {
  option: keyof LimitOptions | keyof TunnelServerOptions | keyof TunnelClientOptions;
  min: number;
}

const limit = (
  name: string,
  option: LimitFlag["option"],
  help: string,
  min = 0,
  value = "N",
): LimitFlag => ({ name, type: "string", option, min, value, help });

const COMMON_FLAGS: FlagSpec[] = [
  {
    name: "config",
    type: "string",
    value: "FILE",
    help: 'JSON file of settings: keys are flag names ("max-clients" or "maxClients")',
  },
  {
    name: "metrics",
    type: "string",
    value: "[HOST:]PORT",
    help: "serve Prometheus metrics at http://HOST:PORT/metrics (host default 127.0.0.1)",
  },
  {
    name: "status-interval",
    type: "string",
    value: "SECONDS",
    help: "status line period when not on a terminal (default 60; 0 = no status line)",
  },
  {
    name: "reset-on-abort",
    type: "boolean",
    help: "when a tunnel goes down, reset its streams' connections (TCP RST) instead of closing them",
  },
  { name: "verbose", type: "boolean", help: "also log protocol errors and rejected connections" },
  { name: "help", type: "boolean", short: "h", env: null, help: "show this help" },
];

const COMMON_LIMITS: LimitFlag[] = [
  limit("handshake-timeout-ms", "handshakeTimeoutMs", "time allowed for the handshake", 1, "MS"),
  limit(
    "heartbeat-interval-ms",
    "heartbeatIntervalMs",
    "ping period on the control connection (0 = off)",
    0,
    "MS",
  ),
  limit(
    "heartbeat-timeout-ms",
    "heartbeatTimeoutMs",
    "peer declared dead after this silence",
    1,
    "MS",
  ),
  limit("max-streams", "maxStreams", "concurrent streams per tunnel", 1),
  limit(
    "stream-idle-timeout-ms",
    "streamIdleTimeoutMs",
    "close a stream idle this long (0 = never)",
    0,
    "MS",
  ),
  limit("stop-grace-ms", "stopGraceMs", "on stop, time for sockets to flush", 0, "MS"),
];

export const SERVER_LIMITS: LimitFlag[] = [
  limit(
    "port-lease-ms",
    "portLeaseMs",
    "hold a gone client's public port this long for it (default 60000; 0 = off)",
    0,
    "MS",
  ),
  limit("max-clients", "maxClients", "connected clients (default 10000)", 1),
  limit(
    "max-held-ports",
    "maxHeldPorts",
    "ports held on lease, all clients together (default 4096)",
    0,
  ),
  limit(
    "max-services-per-client",
    "maxServicesPerClient",
    "services (public ports) one client may ask for (default 64)",
    1,
  ),
  limit(
    "max-public-ports",
    "maxPublicPorts",
    "public ports bound at once, all clients together, held ones included (default 4096)",
    1,
  ),
  limit(
    "max-public-ports-per-address",
    "maxPublicPortsPerAddress",
    "public ports of connected clients from one address (default 2048)",
    1,
  ),
  limit(
    "max-connections",
    "maxConnections",
    "connections held at once, control and visitors (default: 90% of the open-file limit - 32)",
    1,
  ),
  limit(
    "max-pending-connections",
    "maxPendingConnections",
    "unauthenticated connections at once (default 2000, at most max-connections/2)",
    1,
  ),
  limit(
    "max-pending-per-address",
    "maxPendingPerAddress",
    "unauthenticated connections at once from one address (default 1000, at most max-connections/4)",
    1,
  ),
  limit(
    "auth-failures-per-second",
    "authFailuresPerSecond",
    "failed logins allowed per address per second (default 5)",
    0,
  ),
  limit(
    "visitors-per-second",
    "visitorsPerSecond",
    "new visitors per address per second (default 2000; 0 = no limit)",
    0,
  ),
  ...COMMON_LIMITS,
];

export const CLIENT_LIMITS: LimitFlag[] = [
  limit(
    "reconnect-max-delay-ms",
    "reconnectMaxDelayMs",
    "longest wait between reconnects (default 30000)",
    1,
    "MS",
  ),
  limit(
    "local-connect-timeout-ms",
    "localConnectTimeoutMs",
    "time to connect to a local service (default 10000)",
    1,
    "MS",
  ),
  ...COMMON_LIMITS,
];

export const SERVER_FLAGS: FlagSpec[] = [
  {
    name: "port",
    short: "p",
    type: "string",
    value: "PORT",
    help: "control port clients connect to (default 9000; 0 = any free port)",
  },
  { name: "host", type: "string", value: "ADDRESS", help: "bind the control port to this address" },
  {
    name: "public-host",
    type: "string",
    value: "ADDRESS",
    help: "bind the public ports to this address (default: all interfaces)",
  },
  {
    name: "allowed-ports",
    type: "string",
    value: "RANGES",
    help: "public ports clients may get, e.g. 20000-20100,8080 (default: any)",
  },
  {
    name: "tokens-file",
    type: "string",
    value: "FILE",
    help: "accept clients presenting one of these tokens (one per line, # comments)",
  },
  {
    name: "allow-anyone",
    type: "boolean",
    help: "accept every client without a token (an open relay: only on trusted networks)",
  },
  {
    name: "tls-cert",
    type: "string",
    value: "FILE",
    help: "TLS certificate (PEM) for the control port",
  },
  { name: "tls-key", type: "string", value: "FILE", help: "TLS private key (PEM)" },
  {
    name: "public-tls",
    type: "boolean",
    help: "also terminate TLS on the public ports, with the same certificate",
  },
  ...SERVER_LIMITS,
  ...COMMON_FLAGS,
];

export const CLIENT_FLAGS: FlagSpec[] = [
  {
    name: "server",
    short: "s",
    type: "string",
    value: "HOST[:PORT]",
    help: "tunnel server to connect to (port default 9000)",
  },
  {
    name: "local",
    short: "l",
    type: "string",
    value: "[HOST:]PORT",
    help: "the one local service to expose (host default localhost)",
  },
  {
    name: "remote-port",
    type: "string",
    value: "PORT",
    help: "with --local: public port to ask for (default: the server picks)",
  },
  {
    name: "service",
    type: "string",
    multiple: true,
    env: "W3P_SERVICES",
    value: "NAME=HOST:PORT[:REMOTE]",
    help: "a named local service, repeatable (env: comma-separated list)",
  },
  { name: "token", type: "string", value: "TOKEN", help: "token the server expects" },
  { name: "token-file", type: "string", value: "FILE", help: "read the token from a file" },
  { name: "tls", type: "boolean", help: "connect with TLS (system CAs unless --ca)" },
  {
    name: "ca",
    type: "string",
    value: "FILE",
    help: "trust this CA / self-signed cert (implies --tls)",
  },
  {
    name: "servername",
    type: "string",
    value: "NAME",
    help: "TLS server name to send and verify (implies --tls)",
  },
  {
    name: "client-id",
    type: "string",
    value: "ID",
    help: "stable identity: the same public ports after a reconnect, stale sessions replaced",
  },
  {
    name: "v1",
    type: "boolean",
    help: "pure v1 handshake, for original W3P servers (one service, no --client-id or remote port)",
  },
  {
    name: "proxy-protocol",
    type: "string",
    value: "1|2",
    help: "send a HAProxy PROXY header (v1 text or v2 binary) to the local service",
  },
  ...CLIENT_LIMITS,
  ...COMMON_FLAGS,
];

const HELP_WIDTH = 100;

/** `--help` text of a command, generated from its flags (so it never goes stale). */
export function commandHelp(
  usage: string,
  summary: string,
  specs: readonly FlagSpec[],
  examples: string[],
): string {
  const rows = specs.map((spec) => {
    const names = `${spec.short ? `-${spec.short}, ` : "    "}--${spec.name}${spec.value ? ` ${spec.value}` : ""}`;
    const env = envName(spec);
    return { names, help: `${spec.help}${env ? ` [${env}]` : ""}` };
  });
  const width = Math.max(...rows.map((row) => row.names.length)) + 2;
  const wrap = (text: string): string => {
    const lines: string[] = [];
    let line = "";
    for (const word of text.split(" ")) {
      if (line && 2 + width + line.length + 1 + word.length > HELP_WIDTH) {
        lines.push(line);
        line = word;
      } else line = line ? `${line} ${word}` : word;
    }
    lines.push(line);
    return lines.join(`\n${" ".repeat(2 + width)}`);
  };
  return [
    `Usage: ${usage}`,
    "",
    summary,
    "",
    "Flags (environment variable in brackets; flags win over it, it wins over --config):",
    ...rows.map((row) => `  ${row.names.padEnd(width)}${wrap(row.help)}`),
    "",
    "Examples:",
    ...examples.map((line) => `  ${line}`),
    "",
  ].join("\n");
}
