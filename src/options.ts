import { isIPv4, type TcpSocketConnectOpts } from "node:net";
import type { ConnectionOptions, TlsOptions } from "node:tls";
import { ErrorCodes, TunnelError } from "./errors.js";
import { DEFAULT_SESSION_CONFIG, type SessionConfig } from "./mux/session-config.js";

/** What the server knows about a connection when it asks `connectionFilter` / `clientIdentity`. */
export interface ConnectionContext {
  remoteAddress: string;
  remotePort: number;
  /** Only on a TLS control port: the client certificate (empty object when none was sent). */
  peerCertificate?: import("node:tls").PeerCertificate;
  /** Only on a TLS control port: whether the client certificate verified against `ca`. */
  authorized?: boolean;
}

export type ConnectionFilter = (
  credentials: Record<string, unknown>,
  context: ConnectionContext,
) => boolean | Promise<boolean>;

/**
 * `server.connectionFilter` as code reads it back: callable with the credentials alone, as W3P's
 * was (`const prev = server.connectionFilter; server.connectionFilter = async (c) => (await
 * prev(c)) && ...`). Assigned, it is a `ConnectionFilter`, so a filter taking `context` gets it
 * typed as always given.
 */
export type HeldConnectionFilter = (
  credentials: Record<string, unknown>,
  context?: ConnectionContext,
) => boolean | Promise<boolean>;

/** The default filter: everyone is accepted (as W3P's default). */
export const acceptEveryone: HeldConnectionFilter = () => true;

/** Inclusive port ranges, e.g. `[[20000, 20099], 8080]` or the string `"20000-20099,8080"`. */
export type PortRanges = Array<number | [number, number]> | string;

/** Timeouts and limits shared by server and client, all in one place (see README "Limits"). */
export interface LimitOptions {
  /** A connection must complete magic + handshake within this (default 10 000 ms). */
  handshakeTimeoutMs?: number;
  /** Largest handshake accepted (default 64 KiB). */
  maxHandshakeBytes?: number;
  /** Largest frame body accepted after the handshake (default 4 MiB). */
  maxFrameBytes?: number;
  /** Ping interval when both sides support heartbeats (default 10 000 ms; 0 = off). */
  heartbeatIntervalMs?: number;
  /** A peer silent this long is declared dead (default 30 000 ms; never less than two intervals). */
  heartbeatTimeoutMs?: number;
  /** Writes to the peer making no progress this long declare it dead (default 60 000 ms). */
  writeStallTimeoutMs?: number;
  /** Initial per-stream flow-control window (default 256 KiB). */
  streamWindowBytes?: number;
  /** Largest a fast stream's window may grow (default 4 MiB). */
  maxStreamWindowBytes?: number;
  /** Cap on all stream windows of one connection together (default 64 MiB). */
  sessionWindowBytes?: number;
  /** v1 peers only: bytes queued toward one slow reader before the connection pauses (default 1 MiB). */
  maxStreamBufferBytes?: number;
  /**
   * Bytes waiting for local sockets, all streams of a connection together, before the whole
   * control connection pauses (default 256 MiB).
   */
  maxSessionBufferBytes?: number;
  /** Bytes queued on the control connection before sources pause (default 256 KiB). */
  controlWriteBufferBytes?: number;
  /**
   * Concurrent streams per tunnel (default 10 000; on a client, unless set, also below its
   * open-file limit, as the server's `maxConnections`).
   */
  maxStreams?: number;
  /** Close a stream idle in both directions this long (default 0 = never). */
  streamIdleTimeoutMs?: number;
  /**
   * Time a closed stream gets to flush queued bytes, either way: into a local socket after the
   * peer's CLOSE, or to the peer (waiting for its credit) after the local socket closed
   * (default 10 000 ms).
   */
  closeGraceMs?: number;
  /** TCP keepalive initial delay on the control connection (default 15 000 ms; 0 = off). */
  keepAliveMs?: number;
  /** `stop()` waits this long for sockets to flush, then destroys them (default 5 000 ms). */
  stopGraceMs?: number;
  /**
   * When a tunnel goes down (its control connection lost, or `stop()`), reset (TCP RST) the
   * connections of its streams, visitors on the server and local service connections on the
   * client, instead of closing them with a FIN that looks like a complete transfer (default
   * false, as in W3P).
   */
  resetOnAbort?: boolean;
}

export interface TunnelServerOptions extends LimitOptions {
  /** Accept or refuse a client's credentials (default: accept everyone). */
  connectionFilter?: ConnectionFilter;
  /** TLS for the control port (`mainServer`) and for the public ports (`tunnelServer`). */
  tls?: false | { mainServer?: TlsOptions | false; tunnelServer?: TlsOptions | false };
  /** Address the control port binds to (default: all interfaces). */
  host?: string;
  /** Address the public ports bind to (default: all interfaces). */
  publicHost?: string;
  /** Public ports clients may get or ask for (default: any free port chosen by the OS). */
  allowedPorts?: PortRanges;
  /** Hold a disconnected client's public port this long for it to come back (default 60 000 ms; 0 = off). */
  portLeaseMs?: number;
  /** Identity for port leases and takeover when the client sends no `clientId` (default none). */
  clientIdentity?: (
    credentials: Record<string, unknown>,
    context: ConnectionContext,
  ) => string | null | undefined;
  /** Unauthenticated connections open at once (default 2 000, or half of `maxConnections` when less). */
  maxPendingConnections?: number;
  /**
   * Unauthenticated connections open at once from one remote address (default 1 000, or a quarter
   * of `maxConnections` when that is less).
   */
  maxPendingPerAddress?: number;
  /** Connected clients (default 10 000); also the most identities whose ports are held on lease. */
  maxClients?: number;
  /** Ports held on lease, all identities together (default 4 096; the oldest leases go first). */
  maxHeldPorts?: number;
  /**
   * Public listeners bound at once, all clients together, ports held on lease included (default
   * 4 096). A client whose ports do not fit is refused with `W3P_ERR_TOO_MANY_PORTS`; held ports
   * give way first (the oldest leases end early).
   */
  maxPublicPorts?: number;
  /**
   * Public ports of connected clients from one remote address (default 2 048, at most
   * `maxPublicPorts`): one address cannot take every port. Held ports do not count here.
   */
  maxPublicPortsPerAddress?: number;
  /**
   * Accepted connections held at once, control connections and visitors together (one file
   * descriptor each). Past it a visitor gets `visitor-rejected`, a control connection
   * `connection-rejected`, both `W3P_ERR_TOO_MANY_CONNECTIONS`, instead of the process running
   * out of descriptors. Visitors are refused first: the last eighth (at most 256) is kept for
   * control connections. Default: 90 % of the process's open-file limit less 32 where it can be
   * read (Linux), otherwise no limit.
   */
  maxConnections?: number;
  /** Services (public ports) one client may ask for (default 64). */
  maxServicesPerClient?: number;
  /** Failed authentications allowed per remote address per second, with a burst of 4x (default 5). */
  authFailuresPerSecond?: number;
  /** New visitors accepted per remote address per second on a public port (default 2 000; 0 = no limit). */
  visitorsPerSecond?: number;
  /** Announce protocol extensions to clients that offer them (default true). */
  extensions?: boolean;
}

/** One local service a client exposes. */
export interface ServiceOptions {
  name: string;
  localHost?: string;
  localPort: number;
  /** Public port to ask the server for (default: the server chooses). */
  remotePort?: number;
}

export interface TunnelClientOptions extends LimitOptions {
  tunnelServerHost?: string;
  tunnelServerPort?: number;
  localServicePort?: number;
  /** Host of the local service (default `"localhost"`; IPv4 and IPv6 both work). */
  localServiceHost?: string;
  /** Several services, one public port each (extension servers only; a v1 server gets the first). */
  services?: ServiceOptions[];
  authenticationCredentials?: Record<string, unknown>;
  /** TLS to the server; options pass through to `tls.connect` untouched. */
  tls?: false | ConnectionOptions;
  /** Set false to send a pure v1 handshake (for strict v1 servers). Default true. */
  extensions?: boolean;
  /** Stable identity for port leases and takeover (sent in the extension handshake). */
  clientId?: string;
  /** Write a HAProxy PROXY header (version 1 or 2) to the local service before stream bytes. */
  proxyProtocol?: 1 | 2 | false;
  /** First reconnect delay (default 1 000 ms), doubling up to `reconnectMaxDelayMs`. */
  reconnectInitialDelayMs?: number;
  /**
   * Longest reconnect delay (default 30 000 ms). The delays start over after a session that
   * stayed up at least this long.
   */
  reconnectMaxDelayMs?: number;
  /**
   * Up to this fraction (0-1) of each reconnect delay is taken off at random, so devices cut off
   * together do not all come back at once (default 0: exactly 1 s, 2 s, 4 s ...; the CLI client
   * uses 0.2).
   */
  reconnectJitter?: number;
  /** Time allowed to connect to the local service (default 10 000 ms). */
  localConnectTimeoutMs?: number;
  /** Extra options for the control connection's `net.connect` (e.g. `family`, `localAddress`). */
  connectOptions?: Partial<TcpSocketConnectOpts>;
}

export interface CommonConfig {
  session: SessionConfig;
  handshakeTimeoutMs: number;
  keepAliveMs: number;
  stopGraceMs: number;
}

export function positiveInt(
  name: string,
  value: unknown,
  fallback: number,
  allowZero = true,
): number {
  if (value === undefined) return fallback;
  if (
    typeof value !== "number" ||
    !Number.isFinite(value) ||
    value < (allowZero ? 0 : 1) ||
    Math.floor(value) !== value
  ) {
    throw new TunnelError(
      ErrorCodes.INVALID_OPTION,
      `option ${name} must be a${allowZero ? " non-negative" : " positive"} integer, got ${String(value)}`,
    );
  }
  // Node turns a longer timer into one of 1 ms (with a warning): a handshake timeout of 3e9 ms
  // would refuse every client at once, a lease that long would end at once.
  if (name.endsWith("Ms") && value > MAX_TIMER_MS) {
    throw new TunnelError(
      ErrorCodes.INVALID_OPTION,
      `option ${name} must be at most ${MAX_TIMER_MS} ms (about 24.8 days, the longest timer Node sets), got ${value}`,
    );
  }
  return value;
}

/** The longest delay setTimeout honours (2^31 - 1 ms). */
const MAX_TIMER_MS = 2 ** 31 - 1;

export function booleanOption(name: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== "boolean") {
    throw new TunnelError(
      ErrorCodes.INVALID_OPTION,
      `option ${name} must be true or false, got ${String(value)}`,
    );
  }
  return value;
}

/** A number from 0 to 1. */
export function fractionOption(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !(value >= 0 && value <= 1)) {
    throw new TunnelError(
      ErrorCodes.INVALID_OPTION,
      `option ${name} must be a number from 0 to 1, got ${String(value)}`,
    );
  }
  return value;
}

/** Characters no host name or address has: a lookup of a host holding one never succeeds. */
export const UNRESOLVABLE_HOST_CHARS = /[[\]\s/]/;

/**
 * A host name or address option: a non-empty string that a lookup could resolve. A bracket, a
 * space or a slash ("[::1]", "host/24"), or four numbers that are no IPv4 address ("999.1.1.1"),
 * never bind or connect: said at construction, not found out on every attempt for ever.
 */
export function hostOption(name: string, value: unknown, fallback: string): string {
  if (value === undefined) return fallback;
  if (
    typeof value !== "string" ||
    value.length === 0 ||
    UNRESOLVABLE_HOST_CHARS.test(value) ||
    (/^[\d.]+$/.test(value) && value.split(".").length === 4 && !isIPv4(value))
  ) {
    throw new TunnelError(
      ErrorCodes.INVALID_OPTION,
      `option ${name} must be a host name or address, got ${JSON.stringify(value) ?? String(value)}`,
    );
  }
  return value;
}

/**
 * A TCP port option: an integer 1-65535 (0 where `allowZero`), or the same as a decimal string,
 * which `net` accepts too and W3P code (ports from environment variables) passes.
 */
export function portOption(
  name: string,
  value: unknown,
  fallback: number,
  allowZero = false,
): number {
  const number = typeof value === "string" && /^\d{1,5}$/.test(value) ? Number(value) : value;
  const port = positiveInt(name, number, fallback, allowZero);
  if (port > 65535) {
    throw new TunnelError(
      ErrorCodes.INVALID_OPTION,
      `option ${name} must be a port (at most 65535), got ${port}`,
    );
  }
  return port;
}

/**
 * An option sent as a JSON object (the client's credentials): a plain object JSON can carry, or
 * `{}` when absent (or null). Checked when the client is made, so a BigInt or a cycle is a clear error here
 * rather than a failed connection later.
 */
export function jsonObjectOption(name: string, value: unknown): Record<string, unknown> {
  if (value === undefined || value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new TunnelError(
      ErrorCodes.INVALID_OPTION,
      `option ${name} must be an object, got ${Array.isArray(value) ? "an array" : String(value)}`,
    );
  }
  try {
    JSON.stringify(value);
  } catch (err) {
    throw new TunnelError(
      ErrorCodes.INVALID_OPTION,
      `option ${name} cannot be sent as JSON: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    );
  }
  return value as Record<string, unknown>;
}

export function resolveCommon(options: LimitOptions): CommonConfig {
  const d = DEFAULT_SESSION_CONFIG;
  const session: SessionConfig = {
    maxHandshakeBytes: positiveInt(
      "maxHandshakeBytes",
      options.maxHandshakeBytes,
      d.maxHandshakeBytes,
      false,
    ),
    maxFrameBytes: positiveInt("maxFrameBytes", options.maxFrameBytes, d.maxFrameBytes, false),
    heartbeatIntervalMs: positiveInt(
      "heartbeatIntervalMs",
      options.heartbeatIntervalMs,
      d.heartbeatIntervalMs,
    ),
    heartbeatTimeoutMs: positiveInt(
      "heartbeatTimeoutMs",
      options.heartbeatTimeoutMs,
      d.heartbeatTimeoutMs,
      false,
    ),
    writeStallTimeoutMs: positiveInt(
      "writeStallTimeoutMs",
      options.writeStallTimeoutMs,
      d.writeStallTimeoutMs,
    ),
    controlWriteBufferBytes: positiveInt(
      "controlWriteBufferBytes",
      options.controlWriteBufferBytes,
      d.controlWriteBufferBytes,
      false,
    ),
    streamWindowBytes: positiveInt(
      "streamWindowBytes",
      options.streamWindowBytes,
      d.streamWindowBytes,
      false,
    ),
    maxStreamWindowBytes: positiveInt(
      "maxStreamWindowBytes",
      options.maxStreamWindowBytes,
      d.maxStreamWindowBytes,
      false,
    ),
    sessionWindowBytes: positiveInt(
      "sessionWindowBytes",
      options.sessionWindowBytes,
      d.sessionWindowBytes,
      false,
    ),
    maxStreamBufferBytes: positiveInt(
      "maxStreamBufferBytes",
      options.maxStreamBufferBytes,
      d.maxStreamBufferBytes,
      false,
    ),
    maxSessionBufferBytes: positiveInt(
      "maxSessionBufferBytes",
      options.maxSessionBufferBytes,
      d.maxSessionBufferBytes,
      false,
    ),
    maxStreams: positiveInt("maxStreams", options.maxStreams, d.maxStreams, false),
    closeGraceMs: positiveInt("closeGraceMs", options.closeGraceMs, d.closeGraceMs),
    streamIdleTimeoutMs: positiveInt(
      "streamIdleTimeoutMs",
      options.streamIdleTimeoutMs,
      d.streamIdleTimeoutMs,
    ),
    resetOnAbort: booleanOption("resetOnAbort", options.resetOnAbort, d.resetOnAbort),
  };
  // Windows below 64 KiB would stall: credit returns at half a window, and sockets only report
  // 'drain' past their 16 KiB high-water mark.
  session.streamWindowBytes = Math.max(64 * 1024, session.streamWindowBytes);
  session.maxStreamWindowBytes = Math.max(session.streamWindowBytes, session.maxStreamWindowBytes);
  return {
    session,
    handshakeTimeoutMs: positiveInt(
      "handshakeTimeoutMs",
      options.handshakeTimeoutMs,
      10_000,
      false,
    ),
    keepAliveMs: positiveInt("keepAliveMs", options.keepAliveMs, 15_000),
    stopGraceMs: positiveInt("stopGraceMs", options.stopGraceMs, 5_000),
  };
}

/** Parses `allowedPorts` into sorted inclusive ranges; null = any port. */
export function parsePortRanges(spec: PortRanges | undefined): Array<[number, number]> | null {
  if (spec === undefined) return null;
  if (typeof spec !== "string" && !Array.isArray(spec)) {
    throw new TunnelError(
      ErrorCodes.INVALID_OPTION,
      `allowedPorts must be a string such as "20000-20999,8080" or an array of ports and [low, high] pairs, got ${String(spec)}`,
    );
  }
  const items: unknown[] =
    typeof spec === "string"
      ? spec
          .split(",")
          .map((part) => part.trim())
          .filter(Boolean)
          .map((part) => {
            // Decimal digits only: Number() would also take "0x50" (80) and "1e3" (1000).
            const [low, high, ...rest] = part
              .split("-")
              .map((n) => (/^\d+$/.test(n.trim()) ? Number(n.trim()) : Number.NaN));
            if (rest.length > 0) return part;
            return high === undefined ? low : [low, high];
          })
      : spec;
  const ranges: Array<[number, number]> = [];
  for (const item of items) {
    const pair =
      typeof item === "number"
        ? [item, item]
        : Array.isArray(item) && item.length === 2
          ? item
          : [Number.NaN, Number.NaN];
    const [low, high] = pair as [unknown, unknown];
    if (!validPort(low) || !validPort(high) || low > high) {
      throw new TunnelError(
        ErrorCodes.INVALID_OPTION,
        `allowedPorts has an invalid range: ${JSON.stringify(item)}`,
      );
    }
    ranges.push([low, high]);
  }
  if (ranges.length === 0)
    throw new TunnelError(ErrorCodes.INVALID_OPTION, "allowedPorts is empty");
  return ranges.sort((a, b) => a[0] - b[0]);
}

function validPort(n: unknown): n is number {
  return typeof n === "number" && Number.isInteger(n) && n >= 1 && n <= 65535;
}
