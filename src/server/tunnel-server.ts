import { EventEmitter } from "node:events";
import net, { type Server, type Socket } from "node:net";
import type { SecureContextOptions, TlsOptions } from "node:tls";
import { debug } from "../debug.js";
import { controlReserve, defaultMaxConnections } from "../descriptor-limit.js";
import {
  ErrorCodes,
  stacklessError,
  TunnelError,
  toStacklessError,
  toTunnelError,
} from "../errors.js";
import { type EventArgs, type ServerEventEmitter, type ServerEvents, safeEmit } from "../events.js";
import { isTlsSocket, tlsModule } from "../lazy-builtins.js";
import type { SessionConfig } from "../mux/session-config.js";
import {
  acceptEveryone,
  type CommonConfig,
  type ConnectionContext,
  type ConnectionFilter,
  type HeldConnectionFilter,
  hostOption,
  parsePortRanges,
  positiveInt,
  resolveCommon,
  type TunnelServerOptions,
} from "../options.js";
import type { ExtensionOffer, ServiceRequest } from "../protocol/handshake.js";
import { checkSecureContext } from "../tls-check.js";
import {
  ClientTunnel,
  type PublicService,
  type ServerContext,
  type TunnelStats,
} from "./client-tunnel.js";
import { countDown, countUp } from "./counts.js";
import { PortBudget } from "./port-budget.js";
import {
  bindPublicPort,
  closeServer,
  createPublicServer,
  listen,
  requestedPortRefusal,
} from "./public-ports.js";
import { RateLimiter } from "./rate-limiter.js";

type ServerState = "idle" | "starting" | "listening" | "stopping";

export interface ServerStats {
  listening: boolean;
  port: number | null;
  tunnels: TunnelStats[];
  pendingConnections: number;
  /** Public listeners bound, held ones included (what `maxPublicPorts` counts). */
  publicPorts: number;
  heldPorts: number[];
  /** Accepted connections open, control and visitors, a TLS one once (what `maxConnections` counts). */
  connections: number;
}

/**
 * The public side of the tunnel: accepts clients on a control port, authenticates them, gives
 * each its public port(s) and relays every visitor over the client's control connection.
 */
export class TunnelServer {
  /**
   * Decides who may open a tunnel (see the option of the same name; without one, everyone is
   * accepted). May be replaced at any time; each authentication uses the filter set at that moment.
   */
  get connectionFilter(): HeldConnectionFilter {
    return this.filter as HeldConnectionFilter;
  }

  set connectionFilter(filter: ConnectionFilter | undefined) {
    // Plain JavaScript may also clear it with null: everyone is accepted again.
    if (filter !== undefined && filter !== null && typeof filter !== "function") {
      // Anything else would refuse every client, each as "rejected by connection filter".
      throw new TunnelError(
        ErrorCodes.INVALID_OPTION,
        `connectionFilter must be a function, got ${typeof filter}`,
      );
    }
    this.filter = filter ?? acceptEveryone;
  }

  /**
   * One ClientTunnel per connected client, from `client-connected` (still authenticating) until
   * it is gone, as W3P had it; `authenticated` holds those past their handshake.
   */
  readonly tunnels = new Set<ClientTunnel>();
  private readonly authenticated = new Set<ClientTunnel>();
  readonly events: ServerEventEmitter = new EventEmitter() as ServerEventEmitter;

  private filter: ConnectionFilter = acceptEveryone;
  private readonly config: CommonConfig;
  private readonly options: TunnelServerOptions;
  private mainTls: TlsOptions | false;
  private publicTls: TlsOptions | false;
  private readonly portRanges: Array<[number, number]> | null;
  private readonly portLeaseMs: number;
  private readonly maxHeldPorts: number;
  /** Ports in `leases`, all identities together. */
  private heldPorts = 0;
  private readonly maxPending: number;
  private readonly maxPendingPerAddress: number;
  private readonly maxClients: number;
  /** Accepted connections at once, control and visitors (one file descriptor each). */
  private readonly maxConnections: number;
  /** Visitors are refused from here on: the rest of `maxConnections` is kept for clients. */
  private readonly maxVisitorConnections: number;
  /** Accepted connections open now: a TLS one counts once, by the TCP socket under it. */
  private connections = 0;
  private readonly maxServices: number;
  private readonly portBudget: PortBudget;
  private readonly authLimiter: RateLimiter;
  private readonly visitorLimiter: RateLimiter;
  private readonly ctx: ServerContext;

  private state: ServerState = "idle";
  private mainServer: Server | null = null;
  private boundPort: number | null = null;
  /** Every connection not yet accepted as a tunnel. */
  private readonly pending = new Set<ClientTunnel>();
  /** Unauthenticated connections per remote address (one address cannot fill `pending`). */
  private readonly pendingByAddress = new Map<string, number>();
  /** Every socket this server accepted (control and visitors): stop() waits for all to close. */
  private readonly sockets = new Set<Socket>();
  /**
   * Raw connections to a TLS port still in their handshake, each with what releases its place in
   * the limits (pending connections, a tunnel's streams) once it is secured or gone.
   */
  private readonly tlsHandshakes = new Map<Socket, () => void>();
  /** Connections to the TLS control port still in their handshake, per remote address. */
  private readonly controlHandshakesByAddress = new Map<string, number>();
  private controlHandshakes = 0;
  /** Raw connections this server turned away: their TLS layer's "socket hang up" is not news. */
  private readonly turnedAway = new WeakSet<Socket>();
  /**
   * Where each TLS control connection came from, noted at its first byte: a client that gives up
   * on the handshake (an untrusted certificate) leaves a socket that no longer knows its peer.
   */
  private readonly handshakePeers = new WeakMap<
    Socket,
    { remoteAddress: string; remotePort: number; acceptedAt: number }
  >();
  private readonly publicPorts = new Map<number, PublicService>();
  private readonly byIdentity = new Map<string, ClientTunnel>();
  /** Ports held for a disconnected identity, by identity. */
  private readonly leases = new Map<string, PublicService[]>();
  /** The last admission under way per identity: admissions of one identity run one at a time. */
  private readonly admitting = new Map<string, Promise<unknown>>();
  private stopping: Promise<void> | null = null;
  private starting: Promise<number> | null = null;
  /** Numbers start() calls: a start queued behind a stop runs only if no call came after it. */
  private startTicket = 0;

  /** The `tls` option as given (`false` without one), as W3P exposed it. */
  get tls(): NonNullable<TunnelServerOptions["tls"]> {
    return this.options.tls || false;
  }

  /** Whether the control port speaks TLS (W3P's getter of the same name). */
  get tlsEnabled(): boolean {
    return Boolean(this.mainTls);
  }

  constructor(options: TunnelServerOptions = {}) {
    this.options = options;
    this.connectionFilter = options.connectionFilter ?? acceptEveryone;
    this.config = resolveCommon(options);
    const tlsOption = options.tls || false;
    this.mainTls = tlsOption ? (tlsOption.mainServer ?? false) : false;
    this.publicTls = tlsOption ? (tlsOption.tunnelServer ?? false) : false;
    // Checked now: unusable TLS options would otherwise fail only at start() or at a client's
    // first service.
    if (this.mainTls) checkSecureContext(this.mainTls, "tls.mainServer");
    if (this.publicTls) checkSecureContext(this.publicTls, "tls.tunnelServer");
    this.portRanges = parsePortRanges(options.allowedPorts);
    if (options.clientIdentity !== undefined && typeof options.clientIdentity !== "function") {
      throw new TunnelError(
        ErrorCodes.INVALID_OPTION,
        `option clientIdentity must be a function (credentials, context) => string, got ${typeof options.clientIdentity}`,
      );
    }
    if (options.publicHost !== undefined) hostOption("publicHost", options.publicHost, "");
    this.portLeaseMs = positiveInt("portLeaseMs", options.portLeaseMs, 60_000);
    this.maxHeldPorts = positiveInt("maxHeldPorts", options.maxHeldPorts, 4_096);
    this.maxClients = positiveInt("maxClients", options.maxClients, 10_000, false);
    this.maxConnections =
      options.maxConnections === undefined
        ? defaultMaxConnections()
        : positiveInt("maxConnections", options.maxConnections, 0, false);
    this.maxVisitorConnections = this.maxConnections - controlReserve(this.maxConnections);
    // By default unauthenticated connections may hold at most half of maxConnections, and those
    // of one address a quarter: with a low open-file limit, silent connections could otherwise
    // take every place, the part kept for clients included, until their handshake timeout.
    this.maxPending = positiveInt(
      "maxPendingConnections",
      options.maxPendingConnections,
      Math.min(2_000, Math.max(1, Math.floor(this.maxConnections / 2))),
      false,
    );
    this.maxPendingPerAddress = positiveInt(
      "maxPendingPerAddress",
      options.maxPendingPerAddress,
      Math.min(1_000, this.maxPending, Math.max(1, Math.floor(this.maxConnections / 4))),
      false,
    );
    this.maxServices = positiveInt("maxServicesPerClient", options.maxServicesPerClient, 64, false);
    const maxPublicPorts = positiveInt("maxPublicPorts", options.maxPublicPorts, 4_096, false);
    this.portBudget = new PortBudget(
      maxPublicPorts,
      positiveInt(
        "maxPublicPortsPerAddress",
        options.maxPublicPortsPerAddress,
        Math.min(2_048, maxPublicPorts),
        false,
      ),
    );
    const authRate = positiveInt("authFailuresPerSecond", options.authFailuresPerSecond, 5);
    this.authLimiter = new RateLimiter(authRate, authRate * 4);
    const visitorRate = positiveInt("visitorsPerSecond", options.visitorsPerSecond, 2_000);
    this.visitorLimiter = new RateLimiter(visitorRate, visitorRate * 2);
    this.ctx = this.makeContext();
  }

  /** The bound control port (null when not listening). */
  get port(): number | null {
    return this.boundPort;
  }

  /**
   * Listens on the control port (default 9000; 0 = any free port) and resolves with the bound
   * port. A failure (port in use) rejects and is also the `main-server-error` event; an
   * un-awaited call never becomes an unhandled rejection.
   */
  start(port = 9000, host = this.options.host): Promise<number> {
    // A start() right behind a stop() (a restart written without awaiting) waits for the stop;
    // a later start() or stop() calls it off (the last call is what the caller wants).
    const ticket = ++this.startTicket;
    const result = this.stopping
      ? this.stopping.then(() =>
          ticket === this.startTicket
            ? this.listen(port, host)
            : Promise.reject(
                new TunnelError(ErrorCodes.STOPPED, "start() called off by a later call"),
              ),
        )
      : this.listen(port, host);
    result.catch(() => {});
    return result;
  }

  private listen(port: number, host: string | undefined): Promise<number> {
    if (this.state !== "idle") {
      const err = new TunnelError(ErrorCodes.ALREADY_RUNNING, `server is already ${this.state}`);
      safeEmit(this.events, "main-server-error", { err });
      return Promise.reject(err);
    }
    this.state = "starting";
    const starting = this.bindControlPort(port, host);
    this.starting = starting;
    const forget = () => {
      if (this.starting === starting) this.starting = null;
    };
    starting.then(forget, forget);
    return starting;
  }

  private async bindControlPort(port: number, host: string | undefined): Promise<number> {
    let server: Server;
    try {
      server = this.mainTls
        ? tlsModule().createServer({
            handshakeTimeout: this.config.handshakeTimeoutMs,
            ...this.mainTls,
          })
        : net.createServer({ noDelay: true });
    } catch (err) {
      // Options the context check does not cover (ticketKeys of the wrong size, say).
      return this.startFailed(
        toTunnelError(err, ErrorCodes.INVALID_OPTION, "tls.mainServer options are unusable"),
      );
    }
    server.on(this.mainTls ? "secureConnection" : "connection", (socket: Socket) =>
      this.onControlConnection(socket),
    );
    if (this.mainTls) {
      // Track the raw socket too: one still in its TLS handshake must not hold up stop(), and it
      // counts as pending from its first byte (a silent one would otherwise cost a descriptor for
      // the whole handshake timeout without counting against any limit).
      server.on("connection", (raw: Socket) => this.onControlHandshake(raw));
      server.on("tlsClientError", (err: Error, socket: Socket) =>
        this.onTlsClientError(err, socket),
      );
    }
    try {
      const address = await listen(server, port, host);
      server.on("error", (err) => {
        safeEmit(this.events, "main-server-error", {
          err: toTunnelError(err, ErrorCodes.LISTEN_FAILED, "control listener failed"),
        });
      });
      this.mainServer = server;
      this.boundPort = address.port;
      // A stop() that came while binding stays in charge (it closes this listener next).
      if (this.state === "starting") this.state = "listening";
      safeEmit(this.events, "main-server-start", {
        port: address.port,
        secure: Boolean(this.mainTls),
      });
      return address.port;
    } catch (err) {
      return this.startFailed(
        toTunnelError(err, ErrorCodes.LISTEN_FAILED, "cannot start the tunnel server"),
      );
    }
  }

  private startFailed(err: TunnelError): never {
    if (this.state === "starting") this.state = "idle";
    safeEmit(this.events, "main-server-error", { err });
    throw err;
  }

  /**
   * Stops accepting, tells extension clients the server is going away, closes every public port
   * and resolves once every listener and socket is closed (sockets still open after `stopGraceMs`
   * are destroyed). Calling it again returns the same Promise; `start()` works again afterwards.
   */
  stop(): Promise<void> {
    if (this.stopping) {
      this.startTicket++; // a start() queued behind this stop is called off
      return this.stopping;
    }
    if (this.state === "idle") return Promise.resolve();
    this.stopping = this.shutdown().finally(() => {
      this.stopping = null;
      this.state = "idle";
    });
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.state = "stopping";
    // stop() right behind start(): let the listener come up, then close it with the rest.
    if (this.starting) await this.starting.catch(() => {});
    const mainServer = this.mainServer;
    this.mainServer = null;
    const closing: Promise<void>[] = [];
    if (mainServer) closing.push(closeServer(mainServer));
    // Ended by us, not failed: no client-tls-error for them.
    for (const raw of [...this.tlsHandshakes.keys()]) this.turnAway(raw);
    for (const tunnel of [...this.tunnels]) tunnel.close("server is stopping");
    for (const service of [...this.publicPorts.values()]) closing.push(this.closePublic(service));
    const graceTimer = setTimeout(() => {
      for (const socket of this.sockets) socket.destroy();
    }, this.config.stopGraceMs);
    graceTimer.unref();
    await Promise.all(closing);
    await this.allSocketsClosed();
    clearTimeout(graceTimer);
    this.leases.clear();
    this.heldPorts = 0;
    this.byIdentity.clear();
    this.boundPort = null;
    safeEmit(this.events, "main-server-end");
  }

  private allSocketsClosed(): Promise<void> {
    if (this.sockets.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (this.sockets.size === 0) resolve();
      };
      for (const socket of this.sockets) socket.once("close", () => setImmediate(check));
    });
  }

  /**
   * Replaces TLS options (typically `key` and `cert` after a renewal) of the control port and/or
   * the public ports on a running server. New connections use them; established ones keep
   * theirs; public ports opened later use them too. The options are checked first: a key that
   * does not match its certificate throws `W3P_ERR_INVALID_OPTION` and changes nothing.
   */
  setSecureContext(options: {
    mainServer?: SecureContextOptions;
    tunnelServer?: SecureContextOptions;
  }): void {
    const next = { mainServer: this.mainTls, tunnelServer: this.publicTls };
    for (const side of ["mainServer", "tunnelServer"] as const) {
      const update = options[side];
      if (!update) continue;
      const current = next[side];
      if (!current) {
        throw new TunnelError(ErrorCodes.INVALID_OPTION, `tls.${side} is off: nothing to renew`);
      }
      next[side] = { ...current, ...update };
      checkSecureContext(next[side], `tls.${side}`);
    }
    this.mainTls = next.mainServer;
    this.publicTls = next.tunnelServer;
    if (options.mainServer && this.mainServer instanceof tlsModule().Server && this.mainTls) {
      this.mainServer.setSecureContext(this.mainTls);
    }
    if (options.tunnelServer && this.publicTls) {
      for (const service of this.publicPorts.values()) {
        if (service.server instanceof tlsModule().Server)
          service.server.setSecureContext(this.publicTls);
      }
    }
  }

  /** Per-tunnel figures: connected since, bytes, streams, heartbeat RTT, services. */
  stats(): ServerStats {
    return {
      listening: this.state === "listening",
      port: this.boundPort,
      tunnels: [...this.authenticated].map((tunnel) => tunnel.stats()),
      // Those still in their TLS handshake too: they hold a pending slot already.
      pendingConnections: this.pending.size + this.controlHandshakes,
      publicPorts: this.publicPorts.size,
      heldPorts: [...this.publicPorts.values()].filter((s) => !s.owner).map((s) => s.address.port),
      connections: this.connections,
    };
  }

  // --- control connections ---------------------------------------------------------------------

  private track(socket: Socket): void {
    this.sockets.add(socket);
    if (!isTlsSocket(socket)) this.connections++;
    socket.on("close", this.untrack);
  }

  /** A 'close' listener (the socket is `this`), one function for every socket. */
  private readonly untrack = ((server: TunnelServer) =>
    function (this: Socket): void {
      if (server.sockets.delete(this) && !isTlsSocket(this)) server.connections--;
    })(this);

  /**
   * Why one more accepted connection is refused before anything else is done with it: the server
   * holds `maxConnections` already (for a visitor, all but the part kept for clients).
   */
  private connectionLimitError(visitor: boolean): TunnelError | null {
    const limit = visitor ? this.maxVisitorConnections : this.maxConnections;
    if (this.connections < limit) return null;
    return stacklessError(
      ErrorCodes.TOO_MANY_CONNECTIONS,
      visitor && limit < this.maxConnections
        ? `${this.connections} connections open; the last ${this.maxConnections - limit} of maxConnections are kept for clients`
        : `${this.connections} connections open (maxConnections)`,
    );
  }

  /**
   * A raw connection to a TLS port, until its handshake completes: stop() destroys these at once
   * (there is nobody to say goodbye to yet) instead of waiting out `stopGraceMs` for them.
   * `release` gives back its place in the limits, once.
   */
  private trackTlsHandshake(raw: Socket, release: () => void): void {
    this.track(raw);
    this.tlsHandshakes.set(raw, release);
    raw.on("close", this.handshakeGone);
  }

  /** A 'close' listener (the socket is `this`), one function for every raw socket. */
  private readonly handshakeGone = ((server: TunnelServer) =>
    function (this: Socket): void {
      server.handshakeOver(this);
    })(this);

  private handshakeOver(raw: Socket): void {
    const release = this.tlsHandshakes.get(raw);
    if (!release) return;
    this.tlsHandshakes.delete(raw);
    release();
  }

  /** The TLS socket is secured: its raw socket is a live connection now, closed the normal way. */
  private secured(socket: Socket): void {
    const raw = rawSocketOf(socket);
    if (raw) this.handshakeOver(raw);
  }

  /** Turns a raw connection away before its TLS handshake (no TLS alert: it has not said hello). */
  private turnAway(raw: Socket): void {
    this.turnedAway.add(raw);
    raw.on("error", () => {});
    raw.destroy();
  }

  /**
   * Why one more unauthenticated connection from `remoteAddress` is refused, or null. Connections
   * still in their TLS handshake count too.
   */
  private pendingLimitError(remoteAddress: string): TunnelError | null {
    const pending = this.pending.size + this.controlHandshakes;
    if (pending >= this.maxPending) {
      return stacklessError(
        ErrorCodes.TOO_MANY_PENDING,
        `${pending} unauthenticated connections already open (maxPendingConnections)`,
      );
    }
    const fromHere =
      (this.pendingByAddress.get(remoteAddress) ?? 0) +
      (this.controlHandshakesByAddress.get(remoteAddress) ?? 0);
    if (fromHere >= this.maxPendingPerAddress) {
      return stacklessError(
        ErrorCodes.TOO_MANY_PENDING,
        `${fromHere} unauthenticated connections already open from ${remoteAddress} (maxPendingPerAddress)`,
      );
    }
    return null;
  }

  /**
   * An address whose TLS handshakes or authentications keep failing (`authFailuresPerSecond`) is
   * turned away before the handshake, which is the costly part (a few ms of CPU each).
   */
  private handshakesThrottled(remoteAddress: string): TunnelError | null {
    // Paid for now, refunded once the handshake succeeds (onControlConnection).
    const throttleMs = this.takeAttempt(remoteAddress);
    if (throttleMs === 0) return null;
    return stacklessError(
      ErrorCodes.AUTH_THROTTLED,
      `too many failed handshakes or authentications from ${remoteAddress}; retry in ${throttleMs} ms`,
    );
  }

  /**
   * Pays for a handshake or authentication attempt from `remoteAddress` (refunded when it
   * succeeds): 0 when it may go ahead, else the ms until it may try again.
   */
  private takeAttempt(remoteAddress: string): number {
    if (this.authLimiter.take(remoteAddress)) return 0;
    return Math.max(1, this.authLimiter.retryAfterMs(remoteAddress));
  }

  /** A raw connection to the TLS control port: refused at once past the pending limits. */
  private onControlHandshake(raw: Socket): void {
    const remoteAddress = raw.remoteAddress ?? "";
    const err =
      this.state === "listening"
        ? (this.connectionLimitError(false) ??
          this.handshakesThrottled(remoteAddress) ??
          this.pendingLimitError(remoteAddress))
        : stacklessError(ErrorCodes.STOPPED, "server is stopping");
    if (err) {
      this.turnAway(raw);
      safeEmit(this.events, "connection-rejected", {
        remoteAddress,
        remotePort: raw.remotePort ?? 0,
        err,
      });
      return;
    }
    this.controlHandshakes++;
    countUp(this.controlHandshakesByAddress, remoteAddress);
    this.handshakePeers.set(raw, {
      remoteAddress,
      remotePort: raw.remotePort ?? 0,
      acceptedAt: Date.now(),
    });
    this.trackTlsHandshake(raw, () => {
      this.controlHandshakes--;
      countDown(this.controlHandshakesByAddress, remoteAddress);
    });
  }

  private onControlConnection(socket: Socket): void {
    const remoteAddress = socket.remoteAddress ?? "";
    const reject = (err: TunnelError) => {
      socket.on("error", () => {});
      socket.destroy();
      safeEmit(this.events, "connection-rejected", {
        remoteAddress,
        remotePort: socket.remotePort ?? 0,
        err,
      });
    };
    // A TLS connection was counted by its TCP socket, before its handshake.
    const full = this.mainTls ? null : this.connectionLimitError(false);
    if (full) {
      reject(full);
      return;
    }
    // The TLS handshake that led here was paid for in onControlHandshake: it went well.
    if (this.mainTls) this.authLimiter.refund(remoteAddress);
    this.track(socket);
    this.secured(socket);
    if (this.state !== "listening") {
      reject(stacklessError(ErrorCodes.STOPPED, "server is stopping"));
      return;
    }
    const limited = this.pendingLimitError(remoteAddress);
    if (limited) {
      reject(limited);
      return;
    }
    socket.setNoDelay(true);
    if (this.config.keepAliveMs > 0) socket.setKeepAlive(true, this.config.keepAliveMs);
    // On a TLS port the deadline runs from the TCP connection: the TLS handshake spent part of
    // it (one deadline for both, not one each).
    const raw = rawSocketOf(socket);
    const acceptedAt = raw ? this.handshakePeers.get(raw)?.acceptedAt : undefined;
    const tunnel = new ClientTunnel(this.ctx, socket, acceptedAt ? Date.now() - acceptedAt : 0);
    this.pending.add(tunnel);
    this.tunnels.add(tunnel);
    countUp(this.pendingByAddress, remoteAddress);
    safeEmit(this.events, "client-connected", { clientTunnel: tunnel });
  }

  private onTlsClientError(err: Error, socket: Socket): void {
    // Read the peer's address first: a destroyed (or timed-out) TLS socket no longer has it, but
    // the raw connection it wraps may.
    const raw = rawSocketOf(socket);
    const peer = raw ? this.handshakePeers.get(raw) : undefined;
    const remoteAddress = socket.remoteAddress ?? raw?.remoteAddress ?? peer?.remoteAddress ?? "";
    const remotePort = socket.remotePort ?? raw?.remotePort ?? peer?.remotePort ?? 0;
    // Node leaves the socket open after some TLS errors (the handshake timeout among them).
    socket.destroy();
    if (raw && this.turnedAway.has(raw)) return; // already reported as connection-rejected
    // The failure stays paid for: the handshake took a token in onControlHandshake.
    const code = /wrong version number|http request|unknown protocol|packet length too long/i.test(
      err.message,
    )
      ? ErrorCodes.TLS_MISMATCH
      : ErrorCodes.TLS_HANDSHAKE;
    safeEmit(this.events, "client-tls-error", {
      remoteAddress,
      remotePort,
      err: toStacklessError(err, code, "TLS handshake on the control port failed"),
    });
  }

  // --- what ClientTunnel asks of the server ----------------------------------------------------

  private makeContext(): ServerContext {
    return {
      session: this.config.session as SessionConfig,
      handshakeTimeoutMs: this.config.handshakeTimeoutMs,
      secure: Boolean(this.publicTls),
      extensions: this.options.extensions !== false,
      events: this.events,
      // Read at each authentication: code written for W3P sets `server.connectionFilter` after
      // construction.
      connectionFilter: () => this.connectionFilter,
      identify: (credentials, offer, context) => this.identify(credentials, offer, context),
      authFailed: (remoteAddress) => Math.max(1_000, this.authLimiter.retryAfterMs(remoteAddress)),
      authSucceeded: (remoteAddress) => this.authLimiter.refund(remoteAddress),
      handshakeWasted: (remoteAddress) => {
        this.authLimiter.take(remoteAddress);
      },
      takeAuthAttempt: (remoteAddress) => this.takeAttempt(remoteAddress),
      rejected: (tunnel, err) =>
        safeEmit(this.events, "connection-rejected", {
          remoteAddress: tunnel.remoteAddress,
          remotePort: tunnel.remotePort,
          err,
        }),
      admit: (tunnel, identity, requests) => this.admit(tunnel, identity, requests),
      release: (tunnel) => this.release(tunnel),
      visitorAllowed: (remoteAddress) => this.visitorLimiter.take(remoteAddress),
    };
  }

  /**
   * Identity for leases and takeover. A `clientId` is whatever the client claims, so when the
   * operator derives identities (`clientIdentity`), the claim is scoped under the derived one: a
   * client holding one credential can never take over the ports of another credential's device.
   */
  private identify(
    credentials: Record<string, unknown>,
    offer: ExtensionOffer | null,
    context: ConnectionContext,
  ): string | null {
    const derive = this.options.clientIdentity;
    if (!derive) return offer?.clientId || null;
    let derived: unknown;
    try {
      derived = derive(credentials, context);
    } catch (err) {
      debug("clientIdentity threw: %o", err);
      return null;
    }
    if (typeof derived !== "string" || !derived) return null;
    // "/" separates the claim: one inside the derived identity is escaped, so credential "team"
    // claiming "alice" is never credential "team/alice" (whose own identity reads "team%2Falice").
    const scope = derived.replaceAll("%", "%25").replaceAll("/", "%2F");
    return offer?.clientId ? `${scope}/${offer.clientId}` : scope;
  }

  /**
   * Admissions of one identity are queued: two sessions arriving together must not both get
   * ports; the later one replaces the earlier as soon as that one is in.
   */
  private admit(
    tunnel: ClientTunnel,
    identity: string | null,
    requests: ServiceRequest[],
  ): Promise<PublicService[]> {
    if (!identity) return this.admitNow(tunnel, identity, requests);
    const previous = this.admitting.get(identity);
    const mine = previous
      ? previous.then(
          () => this.admitNow(tunnel, identity, requests),
          () => this.admitNow(tunnel, identity, requests),
        )
      : this.admitNow(tunnel, identity, requests);
    this.admitting.set(identity, mine);
    const forget = () => {
      if (this.admitting.get(identity) === mine) this.admitting.delete(identity);
    };
    mine.then(forget, forget);
    return mine;
  }

  private async admitNow(
    tunnel: ClientTunnel,
    identity: string | null,
    requests: ServiceRequest[],
  ): Promise<PublicService[]> {
    if (tunnel.isClosed) throw new TunnelError(ErrorCodes.CONNECTION_CLOSED, "client left");
    if (this.state !== "listening") throw new TunnelError(ErrorCodes.STOPPED, "server is stopping");
    // Before any takeover: a session refused for this must not have cut off the running one.
    if (requests.length > this.maxServices) {
      throw new TunnelError(
        ErrorCodes.TOO_MANY_SERVICES,
        `${requests.length} services asked for; at most ${this.maxServices} per client (maxServicesPerClient)`,
      );
    }
    const stale = identity ? this.byIdentity.get(identity) : undefined;
    // Also before any takeover: a port asked for by number that cannot be had refuses the
    // session while the running one (or the lease) keeps every port it has.
    this.checkRequestedPorts(requests, [
      ...(identity ? (this.leases.get(identity) ?? []) : []),
      ...(stale && stale !== tunnel ? stale.publicServices : []),
    ]);
    if (stale && stale !== tunnel) {
      // The same device is back before we noticed it was gone: the new session wins at once,
      // and the old one's ports pass to it through the lease below.
      debug("identity %s reconnected: replacing the previous session", identity);
      this.release(stale, true);
      stale.close("replaced by a new session with the same identity");
    } else if (this.authenticated.size >= this.maxClients) {
      throw new TunnelError(
        ErrorCodes.TOO_MANY_CLIENTS,
        `server already has ${this.authenticated.size} clients (maxClients)`,
      );
    }
    const lease = identity ? (this.leases.get(identity) ?? []) : [];
    // Which requests a held port answers is decided first: only the others need new listeners.
    const unmatched = [...lease];
    const plan = requests.map((request) => {
      const reuse = unmatched.findIndex(
        (service) =>
          service.name === request.name && (!request.port || request.port === service.address.port),
      );
      return { request, held: reuse >= 0 ? unmatched.splice(reuse, 1)[0]! : null };
    });
    const fresh = plan.filter((step) => !step.held).length;
    // Checked before the lease is touched: a client refused here keeps its held ports.
    const refusal = this.portBudget.refusal(
      tunnel.remoteAddress,
      requests.length,
      fresh - unmatched.length,
      this.publicPorts.size,
      this.heldPorts - lease.length,
    );
    if (refusal) throw refusal;
    if (identity) this.leases.delete(identity);
    this.heldPorts -= lease.length;
    // The ports are claimed now: a lease running out while the other ports bind must not close them.
    for (const service of lease) {
      if (service.leaseTimer) clearTimeout(service.leaseTimer);
      service.leaseTimer = null;
    }
    for (const service of unmatched) void this.closePublic(service);
    this.makeRoom(fresh);
    this.portBudget.take(tunnel, tunnel.remoteAddress, requests.length, fresh);
    const services: PublicService[] = [];
    let bound = 0;
    try {
      for (const { request, held } of plan) {
        if (held) {
          services.push(held);
          continue;
        }
        services.push(await this.openPublic(request, identity));
        bound++;
      }
    } catch (err) {
      // Held ports go back on lease for the identity: a session refused here (a port the system
      // would not bind) must not cost the device the ports it had.
      const held = new Set(plan.flatMap((step) => (step.held ? [step.held] : [])));
      for (const service of services) {
        if (held.has(service) && identity) this.holdForIdentity(identity, service);
        else void this.closePublic(service);
      }
      this.portBudget.free(tunnel);
      throw err;
    } finally {
      // openPublic moved each listener it bound from promised to bound; the rest never will be.
      this.portBudget.unpromise(fresh - bound);
    }
    this.dropPending(tunnel);
    this.authenticated.add(tunnel);
    if (identity) this.byIdentity.set(identity, tunnel);
    return services;
  }

  /**
   * Refuses requests for a port by number that are outside `allowedPorts` or bound for someone
   * else; `own` are the listeners this identity holds already (its session's, its lease's).
   */
  private checkRequestedPorts(requests: ServiceRequest[], own: PublicService[]): void {
    const owned = new Set(own.map((service) => service.address.port));
    const heldByOthers = (port: number) => this.publicPorts.has(port);
    for (const { port } of requests) {
      if (!port || owned.has(port)) continue;
      const refusal = requestedPortRefusal(port, this.portRanges, heldByOthers);
      if (refusal) throw refusal;
    }
  }

  private async openPublic(
    request: ServiceRequest,
    identity: string | null,
  ): Promise<PublicService> {
    let service: PublicService | null = null;
    const publicTls = this.publicTls && {
      handshakeTimeout: this.config.handshakeTimeoutMs,
      ...this.publicTls,
    };
    let server: Server;
    try {
      server = createPublicServer(publicTls, (socket) => this.onVisitor(socket, service!));
    } catch (err) {
      throw toTunnelError(err, ErrorCodes.INVALID_OPTION, "tls.tunnelServer options are unusable");
    }
    const address = await bindPublicPort(
      server,
      this.options.publicHost,
      this.portRanges,
      request.port,
      (port) => this.publicPorts.has(port),
    );
    if (this.publicTls) {
      server.on("connection", (raw: Socket) => this.onVisitorHandshake(raw, service!));
    }
    service = { name: request.name, server, address, owner: null, identity, leaseTimer: null };
    server.on("error", (err) => this.publicListenerFailed(service!, err));
    this.publicPorts.set(address.port, service);
    this.portBudget.unpromise(1);
    return service;
  }

  /**
   * A bound public listener failed (accept() can, e.g. out of descriptors): the tunnel that owns
   * the port hears of it; the listener itself stays up and takes the next connection.
   */
  private publicListenerFailed(service: PublicService, err: Error): void {
    debug("public listener %d failed: %o", service.address.port, err);
    if (!service.owner) return;
    safeEmit(this.events, "tunnel-error", {
      clientTunnel: service.owner,
      err: toStacklessError(
        err,
        ErrorCodes.LISTEN_FAILED,
        `public port ${service.address.port} (${service.name})`,
      ),
    });
  }

  private onVisitor(socket: Socket, service: PublicService): void {
    // A TLS visitor was counted by its TCP socket, before its handshake.
    const full = this.publicTls ? null : this.connectionLimitError(true);
    if (full) {
      this.refuseVisitor(socket, service, full);
      return;
    }
    this.track(socket);
    this.secured(socket);
    const owner = service.owner;
    if (!owner || this.state !== "listening") {
      this.rejectUnowned(socket, service);
      return;
    }
    // On a TLS port the visitor was admitted (rate, stream limit) before its handshake.
    owner.acceptVisitor(socket, service, Boolean(this.publicTls));
  }

  /**
   * A raw connection to a TLS public port: checked against the tunnel's limits before its
   * handshake, where it holds a place among the tunnel's streams, so silent connections cannot
   * pile up past `maxStreams` or the new-visitor rate.
   */
  private onVisitorHandshake(raw: Socket, service: PublicService): void {
    const full = this.connectionLimitError(true);
    if (full) {
      this.refuseVisitor(raw, service, full);
      return;
    }
    const owner = service.owner;
    if (!owner || this.state !== "listening") {
      this.rejectUnowned(raw, service);
      return;
    }
    const release = owner.admitVisitorHandshake(raw);
    if (release) this.trackTlsHandshake(raw, release);
  }

  private rejectUnowned(socket: Socket, service: PublicService): void {
    this.refuseVisitor(
      socket,
      service,
      stacklessError(
        this.state === "listening" ? ErrorCodes.PORT_HELD : ErrorCodes.STOPPED,
        `port ${service.address.port} has no connected client`,
      ),
    );
  }

  private refuseVisitor(socket: Socket, service: PublicService, err: TunnelError): void {
    socket.on("error", () => {});
    socket.destroy();
    safeEmit(this.events, "visitor-rejected", {
      clientTunnel: service.owner,
      visitorSocket: socket,
      err,
    });
  }

  /** The tunnel is no longer unauthenticated (admitted, refused or gone). */
  private dropPending(tunnel: ClientTunnel): void {
    if (!this.pending.delete(tunnel)) return;
    countDown(this.pendingByAddress, tunnel.remoteAddress);
  }

  /**
   * Forgets a tunnel; its ports close, or are held for its identity (`portLeaseMs`). `handOver`
   * holds them even without a lease: a new session of the same identity takes them at once.
   */
  private release(tunnel: ClientTunnel, handOver = false): void {
    this.dropPending(tunnel);
    this.authenticated.delete(tunnel);
    this.portBudget.free(tunnel);
    this.tunnels.delete(tunnel);
    const identity = tunnel.clientId;
    if (identity && this.byIdentity.get(identity) === tunnel) this.byIdentity.delete(identity);
    const services = tunnel.publicServices;
    tunnel.publicServices = [];
    const keep =
      identity !== null && this.state === "listening" && (handOver || this.portLeaseMs > 0);
    for (const service of services) {
      if (service.owner !== tunnel && service.owner !== null) continue;
      service.owner = null;
      if (!keep) {
        void this.closePublic(service);
        continue;
      }
      this.holdForIdentity(identity, service);
    }
    if (keep) this.trimLeases(identity);
  }

  /**
   * Holds a port for `identity`: visitors meanwhile are turned away, nobody else gets it, and the
   * listener closes when the lease runs out.
   */
  private holdForIdentity(identity: string, service: PublicService): void {
    const held = this.leases.get(identity) ?? [];
    held.push(service);
    this.leases.set(identity, held);
    this.heldPorts++;
    service.owner = null;
    service.leaseTimer = setTimeout(() => {
      service.leaseTimer = null;
      const list = this.leases.get(identity);
      if (list?.includes(service)) {
        const remaining = list.filter((s) => s !== service);
        if (remaining.length) this.leases.set(identity, remaining);
        else this.leases.delete(identity);
        this.heldPorts--;
      }
      void this.closePublic(service);
    }, this.portLeaseMs);
    service.leaseTimer.unref();
  }

  /**
   * At most `maxClients` identities and `maxHeldPorts` ports are held on lease: a client cycling
   * through fresh client ids, each asking for many services and leaving at once, could otherwise
   * keep thousands of listeners bound (each a port and a file descriptor) for the whole lease,
   * after it is gone. The oldest leases (Map order) go first, `current`, the one just added, last.
   */
  private trimLeases(current: string): void {
    const over = () => this.leases.size > this.maxClients || this.heldPorts > this.maxHeldPorts;
    for (const identity of this.leases.keys()) {
      if (!over()) return;
      if (identity !== current) this.dropLease(identity);
    }
    if (over()) this.dropLease(current);
  }

  /**
   * Held ports give way to a connecting client: the oldest leases end early until `fresh` more
   * listeners fit under `maxPublicPorts` (admitNow checked that enough of them are held).
   */
  private makeRoom(fresh: number): void {
    for (const identity of this.leases.keys()) {
      if (this.portBudget.inUse(this.publicPorts.size) + fresh <= this.portBudget.maxPorts) return;
      this.dropLease(identity);
    }
  }

  private dropLease(identity: string): void {
    const held = this.leases.get(identity);
    if (!held) return;
    this.leases.delete(identity);
    this.heldPorts -= held.length;
    debug("lease of %s dropped early: %d ports held", identity, this.heldPorts);
    for (const service of held) void this.closePublic(service);
  }

  private closePublic(service: PublicService): Promise<void> {
    if (service.leaseTimer) clearTimeout(service.leaseTimer);
    service.leaseTimer = null;
    if (this.publicPorts.get(service.address.port) === service)
      this.publicPorts.delete(service.address.port);
    return closeServer(service.server);
  }
}

/** The TCP socket a TLS socket wraps (Node's `_parent`; undefined for a plain socket). */
function rawSocketOf(socket: Socket): Socket | null | undefined {
  return (socket as Socket & { _parent?: Socket | null })._parent;
}

export type { EventArgs, ServerEvents };
