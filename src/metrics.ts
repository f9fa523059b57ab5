import type { IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import type { ClientStats } from "./client/tunnel-client.js";
import { httpModule } from "./lazy-builtins.js";
import { listen } from "./server/public-ports.js";
import type { ServerStats } from "./server/tunnel-server.js";

/** Anything with a `stats()` of a TunnelServer or a TunnelClient. */
export interface MetricsSource {
  stats(): ServerStats | ClientStats;
}

export interface MetricsOptions {
  /** Port to listen on (0 = any free port). */
  port: number;
  /** Address to bind (default `127.0.0.1`: metrics stay private unless asked otherwise). */
  host?: string;
  /** Path that serves the metrics (default `/metrics`). */
  path?: string;
}

export interface MetricsEndpoint {
  readonly host: string;
  readonly port: number;
  /** e.g. `http://127.0.0.1:9464/metrics` */
  readonly url: string;
  /** Stops listening and drops open scrape connections. */
  close(): Promise<void>;
}

/** Open connections the metrics endpoint keeps at once. */
const MAX_SCRAPE_CONNECTIONS = 64;
/** Pipelined requests one connection may have waiting behind its current answer; more closes it. */
const MAX_PIPELINED_REQUESTS = 16;
/** A connection that neither sends nor takes anything for this long is closed. */
const SCRAPE_IDLE_TIMEOUT_MS = 10_000;

/** Per connection: whether an answer is on its way out, and the requests waiting behind it. */
interface ScrapeConnection {
  busy: boolean;
  waiting: Array<() => void>;
}

/**
 * Serves `source.stats()` in the Prometheus text exposition format (version 0.0.4) over HTTP.
 * Resolves once listening; a bind failure rejects with a `TunnelError` (`W3P_ERR_PORT_UNAVAILABLE`
 * when the port is taken or not permitted).
 */
export async function serveMetrics(
  source: MetricsSource,
  options: MetricsOptions,
): Promise<MetricsEndpoint> {
  const path = options.path ?? "/metrics";
  const host = options.host ?? "127.0.0.1";
  const connections = new WeakMap<Socket, ScrapeConnection>();
  const answer = (req: IncomingMessage, res: ServerResponse): void => {
    let pathname: string;
    try {
      // Throws on a target no URL can be made of (`GET http://[ HTTP/1.1`): a request, not a crash.
      pathname = new URL(req.url ?? "/", "http://localhost").pathname;
    } catch {
      res.writeHead(400, { "content-type": "text/plain; charset=utf-8" }).end("bad request\n");
      return;
    }
    if (pathname !== path) {
      res.writeHead(404, { "content-type": "text/plain; charset=utf-8" }).end("not found\n");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    let body: string;
    try {
      body = renderMetrics(source.stats());
    } catch {
      res.writeHead(500).end();
      return;
    }
    res.writeHead(200, {
      "content-type": "text/plain; version=0.0.4; charset=utf-8",
      "content-length": Buffer.byteLength(body),
      "cache-control": "no-store",
    });
    res.end(req.method === "HEAD" ? undefined : body);
  };
  // It shares the process with the tunnels: slow or idle scrapers must not use up its file
  // descriptors (connections past the limit are dropped at once; half-sent requests time out).
  const server = httpModule().createServer(
    { headersTimeout: 10_000, requestTimeout: 10_000, connectionsCheckingInterval: 1_000 },
    (req, res) => {
      // Node parses every request a chunk holds before it stops reading, and an answer that
      // cannot be sent yet waits in memory: a client that pipelines thousands of requests and
      // never reads would have each one rendered and kept. So a connection gets its next answer
      // rendered only once the previous one has been handed to the OS (its 'finish'), and at most
      // MAX_PIPELINED_REQUESTS requests may wait for that; one more closes the connection.
      const socket = req.socket;
      if (socket.destroyed) return;
      const conn = scrapeConnection(connections, socket);
      const run = () => {
        conn.busy = true;
        res.once("finish", () => {
          conn.busy = false;
          if (!socket.destroyed) conn.waiting.shift()?.();
        });
        answer(req, res);
      };
      if (!conn.busy) run();
      else if (conn.waiting.length < MAX_PIPELINED_REQUESTS) conn.waiting.push(run);
      else {
        conn.waiting.length = 0;
        socket.destroy();
      }
    },
  );
  server.maxConnections = MAX_SCRAPE_CONNECTIONS;
  // No 'timeout' listener: Node destroys a socket idle this long (a client that stopped reading
  // stalls the answer being written, so it counts as idle too; Node lets a write stuck part-way
  // through have one more period, so such a connection goes within twice this).
  server.setTimeout(SCRAPE_IDLE_TIMEOUT_MS);
  server.on("clientError", (_err, socket) => socket.destroy());
  const address: AddressInfo = await listen(server, options.port, host);
  server.on("error", () => {});
  const shownHost = address.address.includes(":") ? `[${address.address}]` : address.address;
  return {
    host: address.address,
    port: address.port,
    url: `http://${shownHost}:${address.port}${path}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function scrapeConnection(
  connections: WeakMap<Socket, ScrapeConnection>,
  socket: Socket,
): ScrapeConnection {
  const known = connections.get(socket);
  if (known) return known;
  const conn: ScrapeConnection = { busy: false, waiting: [] };
  connections.set(socket, conn);
  socket.once("close", () => {
    conn.waiting.length = 0;
  });
  return conn;
}

/** Renders server or client stats as Prometheus text (metric names are listed in the README). */
export function renderMetrics(stats: ServerStats | ClientStats): string {
  const text = new MetricsText();
  if ("tunnels" in stats) renderServer(text, stats);
  else renderClient(text, stats);
  return text.toString();
}

function renderServer(text: MetricsText, stats: ServerStats): void {
  text.family("w3p_server_listening", "gauge", "1 while the control port listens.", [
    [{}, stats.listening ? 1 : 0],
  ]);
  text.family("w3p_server_tunnels", "gauge", "Connected clients.", [[{}, stats.tunnels.length]]);
  text.family(
    "w3p_server_pending_connections",
    "gauge",
    "Control connections not yet authenticated.",
    [[{}, stats.pendingConnections]],
  );
  text.family(
    "w3p_server_connections",
    "gauge",
    "Accepted connections open, control and visitors (counted against maxConnections).",
    [[{}, stats.connections]],
  );
  text.family(
    "w3p_server_public_ports",
    "gauge",
    "Public listeners bound, held ones included (counted against maxPublicPorts).",
    [[{}, stats.publicPorts]],
  );
  text.family(
    "w3p_server_held_ports",
    "gauge",
    "Public ports held for a disconnected client (port lease).",
    [[{}, stats.heldPorts.length]],
  );
  const tunnels = stats.tunnels.map((tunnel) => {
    const remote = hostPort(tunnel.remoteAddress, tunnel.remotePort);
    const labels = {
      tunnel: tunnel.clientId ?? remote,
      client_id: tunnel.clientId ?? "",
      remote_address: remote,
    };
    return { tunnel, labels };
  });
  const perTunnel = (pick: (t: ServerStats["tunnels"][number]) => number | null) =>
    tunnels.flatMap(({ tunnel, labels }): Sample[] => {
      const value = pick(tunnel);
      return value === null ? [] : [[labels, value]];
    });
  text.family(
    "w3p_tunnel_connected_since_seconds",
    "gauge",
    "Unix time the client connected.",
    perTunnel((t) => t.connectedSince.getTime() / 1000),
  );
  text.family(
    "w3p_tunnel_received_bytes_total",
    "counter",
    "Bytes received from the client on its control connection (framing included).",
    perTunnel((t) => t.bytesIn),
  );
  text.family(
    "w3p_tunnel_sent_bytes_total",
    "counter",
    "Bytes sent to the client on its control connection (framing included).",
    perTunnel((t) => t.bytesOut),
  );
  text.family(
    "w3p_tunnel_streams_active",
    "gauge",
    "Visitor streams open on the tunnel.",
    perTunnel((t) => t.streamsActive),
  );
  text.family(
    "w3p_tunnel_streams_total",
    "counter",
    "Visitor streams opened on the tunnel.",
    perTunnel((t) => t.streamsTotal),
  );
  text.family(
    "w3p_tunnel_rtt_seconds",
    "gauge",
    "Last heartbeat round trip to the client (absent before the first one).",
    perTunnel((t) => (t.rttMs === null ? null : t.rttMs / 1000)),
  );
  const perService = (
    pick: (s: ServerStats["tunnels"][number]["services"][number]) => number,
  ): Sample[] =>
    tunnels.flatMap(({ tunnel, labels }) =>
      tunnel.services.map(
        (service): Sample => [
          { tunnel: labels.tunnel, service: service.name, port: String(service.port) },
          pick(service),
        ],
      ),
    );
  text.family(
    "w3p_service_streams_active",
    "gauge",
    "Visitor streams open on a public port.",
    perService((s) => s.streamsActive),
  );
  text.family(
    "w3p_service_streams_total",
    "counter",
    "Visitor streams opened on a public port.",
    perService((s) => s.streamsTotal),
  );
  text.family(
    "w3p_service_received_bytes_total",
    "counter",
    "Payload bytes from the client to the service's visitors.",
    perService((s) => s.bytesIn),
  );
  text.family(
    "w3p_service_sent_bytes_total",
    "counter",
    "Payload bytes from the service's visitors to the client.",
    perService((s) => s.bytesOut),
  );
}

function renderClient(text: MetricsText, stats: ClientStats): void {
  text.family("w3p_client_connected", "gauge", "1 while the tunnel is up.", [
    [{}, stats.connected ? 1 : 0],
  ]);
  text.family(
    "w3p_client_connected_since_seconds",
    "gauge",
    "Unix time the current connection was acknowledged (absent while down).",
    stats.connectedSince && stats.connected ? [[{}, stats.connectedSince.getTime() / 1000]] : [],
  );
  text.family("w3p_client_reconnects_total", "counter", "Reconnection attempts.", [
    [{}, stats.reconnects],
  ]);
  text.family(
    "w3p_client_received_bytes_total",
    "counter",
    "Bytes received from the server on the current connection (framing included).",
    [[{}, stats.bytesIn]],
  );
  text.family(
    "w3p_client_sent_bytes_total",
    "counter",
    "Bytes sent to the server on the current connection (framing included).",
    [[{}, stats.bytesOut]],
  );
  text.family(
    "w3p_client_rtt_seconds",
    "gauge",
    "Last heartbeat round trip to the server (absent before the first one).",
    stats.rttMs === null ? [] : [[{}, stats.rttMs / 1000]],
  );
  const perService = (pick: (s: ClientStats["services"][number]) => number | null): Sample[] =>
    stats.services.flatMap((service): Sample[] => {
      const value = pick(service);
      const labels = {
        service: service.name,
        local_address: hostPort(service.localHost, service.localPort),
      };
      return value === null ? [] : [[labels, value]];
    });
  text.family(
    "w3p_client_service_public_port",
    "gauge",
    "Public port the server assigned to the service (absent before the first acknowledgement).",
    perService((s) => s.publicPort),
  );
  text.family(
    "w3p_client_service_streams_active",
    "gauge",
    "Streams open to the local service.",
    perService((s) => s.streamsActive),
  );
  text.family(
    "w3p_client_service_streams_total",
    "counter",
    "Streams opened to the local service.",
    perService((s) => s.streamsTotal),
  );
  text.family(
    "w3p_client_service_received_bytes_total",
    "counter",
    "Payload bytes from the server to the local service.",
    perService((s) => s.bytesIn),
  );
  text.family(
    "w3p_client_service_sent_bytes_total",
    "counter",
    "Payload bytes from the local service to the server.",
    perService((s) => s.bytesOut),
  );
}

type Sample = [labels: Record<string, string>, value: number];

/** Collects metric families; escapes label values and help text as the format requires. */
class MetricsText {
  private readonly lines: string[] = [];

  family(name: string, type: "gauge" | "counter", help: string, samples: Sample[]): void {
    this.lines.push(`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) {
      const pairs = Object.entries(labels).map(([key, v]) => `${key}="${escapeLabel(v)}"`);
      this.lines.push(`${name}${pairs.length ? `{${pairs.join(",")}}` : ""} ${formatValue(value)}`);
    }
  }

  toString(): string {
    return `${this.lines.join("\n")}\n`;
  }
}

function escapeHelp(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function escapeLabel(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Number.POSITIVE_INFINITY) return "+Inf";
  if (value === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(value);
}

function hostPort(host: string, port: number): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}
