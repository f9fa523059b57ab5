import { EventEmitter } from "node:events";
import net, { type Socket } from "node:net";
import type tls from "node:tls";
import { defaultMaxConnections } from "../descriptor-limit.js";
import {
  ErrorCodes,
  stacklessError,
  TunnelError,
  toStacklessError,
  toTunnelError,
} from "../errors.js";
import { type ClientEventEmitter, safeEmit } from "../events.js";
import { tlsModule } from "../lazy-builtins.js";
import {
  countClosed,
  countOpened,
  type ServiceCounters,
  serviceTraffic,
} from "../mux/service-counters.js";
import { Session, type SessionHandler } from "../mux/session.js";
import type { StreamMeta } from "../mux/stream-meta.js";
import { type StreamObserver, TunnelStream } from "../mux/tunnel-stream.js";
import {
  type CommonConfig,
  fractionOption,
  hostOption,
  jsonObjectOption,
  portOption,
  positiveInt,
  resolveCommon,
  type ServiceOptions,
  type TunnelClientOptions,
} from "../options.js";
import {
  ALL_EXTENSIONS,
  EXTENSION_PROTOCOL_VERSION,
  FrameType,
  MAGIC,
} from "../protocol/constants.js";
import { encodeHandshake } from "../protocol/encode.js";
import { EXTENSION_KEY, MAX_SERVICES, negotiate, parseServerAck } from "../protocol/handshake.js";
import { checkSecureContext } from "../tls-check.js";
import { backoffDelay } from "./backoff.js";
import { cachedLookup } from "./cached-lookup.js";
import { asClientConnection, type ClientConnection } from "./client-connection.js";
import { buildProxyHeader } from "./proxy-header.js";

interface ResolvedService {
  name: string;
  localHost: string;
  localPort: number;
  remotePort?: number;
}

export interface ClientStats {
  connected: boolean;
  connectedSince: Date | null;
  reconnects: number;
  bytesIn: number;
  bytesOut: number;
  rttMs: number | null;
  services: {
    name: string;
    localHost: string;
    localPort: number;
    publicPort: number | null;
    streamsActive: number;
    streamsTotal: number;
    /** Payload from the server to the local service (all sessions). */
    bytesIn: number;
    /** Payload from the local service to the server (all sessions). */
    bytesOut: number;
  }[];
}

type ClientState = "idle" | "running" | "stopping";

/** A local service socket's connect deadline, until it connects or closes. */
const CONNECT_TIMER = Symbol("w3p.connectTimer");
type LocalSocket = Socket & { [CONNECT_TIMER]?: NodeJS.Timeout | undefined };

function clearConnectTimer(socket: Socket): void {
  const local = socket as LocalSocket;
  const timer = local[CONNECT_TIMER];
  if (timer === undefined) return;
  clearTimeout(timer);
  local[CONNECT_TIMER] = undefined;
}

/**
 * The device side: dials the tunnel server, authenticates, and relays each visitor stream to a
 * local service. Reconnects with exponential backoff until `stop()`.
 */
export class TunnelClient {
  readonly events: ClientEventEmitter = new EventEmitter() as ClientEventEmitter;
  /** True once `stop()` was called (until a later `start()`). */
  isDestroyed = false;
  /** Public port of the first service from the last acknowledgement (null before). */
  assignedPort: number | null = null;
  /**
   * The credentials sent in the handshake. Read at every connection attempt, so replacing them
   * (a rotated token) takes effect at the next reconnect, as with W3P.
   */
  authenticationCredentials: Record<string, unknown>;

  private readonly host: string;
  private readonly port: number;
  private readonly services: ResolvedService[];
  private readonly tlsOptions: tls.ConnectionOptions | false;
  private readonly config: CommonConfig;
  private readonly options: TunnelClientOptions;
  private readonly reconnectInitialMs: number;
  private readonly reconnectMaxMs: number;
  private readonly reconnectJitter: number;
  private readonly localConnectTimeoutMs: number;

  private state: ClientState = "idle";
  private session: Session | null = null;
  private connected = false;
  /** The TCP (and TLS) connection of the current attempt is up. */
  private transportReady = false;
  /** The TCP connection under a TLS one is up: a failure from now on is the handshake's. */
  private tcpConnected = false;
  private readonly markTcpConnected = (): void => {
    this.tcpConnected = true;
  };
  private connectedSince: Date | null = null;
  /** Consecutive attempts that did not end in a session that lasted (see `onSessionClose`). */
  private attempt = 0;
  /** When the current session was acknowledged (0: none is). */
  private ackedAt = 0;
  private reconnects = 0;
  private retryAfterMs = 0;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private handshakeTimer: NodeJS.Timeout | null = null;
  private publicPorts = new Map<string, number>();
  private readonly streamCounts = new Map<string, ServiceCounters>();
  /** Local service sockets: stop() waits for them to close. */
  private readonly localSockets = new Set<Socket>();
  /** Shared 'close' listener of every local socket (`this` is the socket): no closure per stream. */
  private readonly localSocketClosed = ((sockets: Set<Socket>) =>
    function localSocketClosed(this: Socket): void {
      sockets.delete(this);
      clearConnectTimer(this);
    })(this.localSockets);
  private firstAck: { resolve: (port: number) => void; reject: (err: Error) => void } | null = null;
  private startPromise: Promise<number> | null = null;
  private stopPromise: Promise<void> | null = null;
  private sessionClosed: (() => void) | null = null;
  /** What the stream limit is, for the error of a refused stream. */
  private readonly streamLimit: string = "maxStreams";

  constructor(options: TunnelClientOptions | number = {}) {
    const opts: TunnelClientOptions =
      typeof options === "number" ? { localServicePort: options } : options;
    this.options = opts;
    this.config = resolveCommon(opts);
    // Each stream holds a local socket. Unless set, streams stop short of the open-file limit (as
    // the server's maxConnections does): a visitor flood is then refused stream by stream instead
    // of running the host process out of descriptors (its files, its reconnects).
    const byDescriptors = opts.maxStreams === undefined ? defaultMaxConnections() : Infinity;
    if (byDescriptors < this.config.session.maxStreams) {
      this.config.session.maxStreams = byDescriptors;
      this.streamLimit = "maxStreams, by default below the open-file limit";
    }
    if (![undefined, false, 1, 2].includes(opts.proxyProtocol)) {
      throw new TunnelError(
        ErrorCodes.INVALID_OPTION,
        `option proxyProtocol must be 1, 2 or false, got ${JSON.stringify(opts.proxyProtocol)}`,
      );
    }
    if (
      opts.clientId !== undefined &&
      (typeof opts.clientId !== "string" || opts.clientId.length === 0)
    ) {
      throw new TunnelError(
        ErrorCodes.INVALID_OPTION,
        `option clientId must be a non-empty string, got ${JSON.stringify(opts.clientId)}`,
      );
    }
    if (opts.services !== undefined && !Array.isArray(opts.services)) {
      throw new TunnelError(ErrorCodes.INVALID_OPTION, "option services must be an array");
    }
    this.host = hostOption("tunnelServerHost", opts.tunnelServerHost, "localhost");
    this.port = portOption("tunnelServerPort", opts.tunnelServerPort, 9000);
    this.services = resolveServices(opts);
    this.authenticationCredentials = jsonObjectOption(
      "authenticationCredentials",
      opts.authenticationCredentials,
    );
    this.tlsOptions = opts.tls || false;
    // Checked now: unusable options would otherwise fail every connection attempt.
    if (this.tlsOptions) checkSecureContext(this.tlsOptions, "tls");
    this.reconnectInitialMs = positiveInt(
      "reconnectInitialDelayMs",
      opts.reconnectInitialDelayMs,
      1_000,
      false,
    );
    this.reconnectMaxMs = positiveInt(
      "reconnectMaxDelayMs",
      opts.reconnectMaxDelayMs,
      30_000,
      false,
    );
    this.reconnectJitter = fractionOption("reconnectJitter", opts.reconnectJitter, 0);
    this.localConnectTimeoutMs = positiveInt(
      "localConnectTimeoutMs",
      opts.localConnectTimeoutMs,
      10_000,
      false,
    );
  }

  /** Last heartbeat round trip to the server in ms (null before the first pong). */
  get rttMs(): number | null {
    return this.session?.rttMs ?? null;
  }

  /** True while a tunnel is acknowledged and up. */
  get isConnected(): boolean {
    return this.connected;
  }

  /**
   * The current control connection, or null between connections. W3P exposed it under this name;
   * code written for it reads `.socket` and `.destinationSockets` (see `ClientConnection`).
   */
  get tunnelSocketContext(): ClientConnection | null {
    return (this.session?.socket as ClientConnection | undefined) ?? null;
  }

  /**
   * Connects and keeps the tunnel up. Resolves with the assigned public port at the first
   * acknowledgement; keeps retrying through failures; rejects only if `stop()` comes first.
   * Called again on a client that is up, it resolves with the port of the latest acknowledgement
   * (`assignedPort`): a reconnection since the first may have brought another one.
   */
  start(): Promise<number> {
    if (this.startPromise) {
      const port = this.assignedPort;
      return this.firstAck === null && port !== null ? Promise.resolve(port) : this.startPromise;
    }
    let ack!: NonNullable<TunnelClient["firstAck"]>;
    this.startPromise = new Promise<number>((resolve, reject) => {
      ack = { resolve, reject };
    });
    this.firstAck = ack;
    this.startPromise.catch(() => {});
    // A start() right behind a stop() (a restart written without awaiting) begins once the stop
    // is complete, so the old connection's close cannot be taken for a loss to reconnect from.
    if (this.stopPromise) void this.stopPromise.then(() => this.begin(ack));
    else this.begin(ack);
    return this.startPromise;
  }

  /** Begins the start whose acknowledgement is `ack`, unless a stop() called it off since. */
  private begin(ack: NonNullable<TunnelClient["firstAck"]>): void {
    // Called off, or replaced by a later start() (stop(); start(); stop(); start() queues two
    // begins behind one stop: only the last start's may connect).
    if (this.firstAck !== ack || this.state === "running") return;
    this.isDestroyed = false;
    this.state = "running";
    this.attempt = 0;
    this.connect();
  }

  /** No more reconnects; closes the tunnel and every local connection. Same Promise if called twice. */
  stop(): Promise<void> {
    if (this.stopPromise) {
      // A start() queued behind this stop is called off too.
      this.firstAck?.reject(
        new TunnelError(ErrorCodes.STOPPED, "client stopped before it started"),
      );
      this.firstAck = null;
      this.startPromise = null;
      return this.stopPromise;
    }
    if (this.state === "idle") {
      this.isDestroyed = true;
      return Promise.resolve();
    }
    this.stopPromise = this.shutdown().finally(() => {
      this.stopPromise = null;
      this.state = "idle";
    });
    return this.stopPromise;
  }

  private async shutdown(): Promise<void> {
    this.state = "stopping";
    this.isDestroyed = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.firstAck?.reject(
      new TunnelError(ErrorCodes.STOPPED, "client stopped before the tunnel came up"),
    );
    this.firstAck = null;
    this.startPromise = null;
    const session = this.session;
    if (session) {
      const closed = new Promise<void>((resolve) => {
        this.sessionClosed = resolve;
      });
      session.close(null, { code: ErrorCodes.GOING_AWAY, message: "client is stopping" });
      const grace = setTimeout(() => session.socket.destroy(), this.config.stopGraceMs);
      grace.unref();
      await closed;
      clearTimeout(grace);
    }
    await this.localSocketsClosed();
    safeEmit(this.events, "tunnel-client-end");
  }

  private localSocketsClosed(): Promise<void> {
    if (this.localSockets.size === 0) return Promise.resolve();
    for (const socket of this.localSockets) socket.destroy();
    return new Promise((resolve) => {
      for (const socket of this.localSockets) {
        socket.once("close", () => {
          if (this.localSockets.size === 0) resolve();
        });
      }
    });
  }

  stats(): ClientStats {
    const session = this.session;
    return {
      connected: this.connected,
      connectedSince: this.connectedSince,
      reconnects: this.reconnects,
      bytesIn: session?.bytesIn ?? 0,
      bytesOut: session?.bytesOut ?? 0,
      rttMs: session?.rttMs ?? null,
      services: this.services.map((service) => {
        const counters = serviceTraffic(
          this.streamCounts.get(service.name),
          session?.streamsWithSockets() ?? [],
          service.name,
        );
        return {
          name: service.name,
          localHost: service.localHost,
          localPort: service.localPort,
          publicPort: this.publicPorts.get(service.name) ?? null,
          streamsActive: counters.active,
          streamsTotal: counters.total,
          bytesIn: counters.bytesIn,
          bytesOut: counters.bytesOut,
        };
      }),
    };
  }

  // --- connection lifecycle --------------------------------------------------------------------

  private connect(): void {
    this.reconnectTimer = null;
    if (this.state !== "running") return;
    let socket: Socket;
    try {
      socket = this.tlsOptions
        ? tlsModule().connect({
            ...this.options.connectOptions,
            host: this.host,
            port: this.port,
            ...this.tlsOptions,
          })
        : net.connect({
            ...this.options.connectOptions,
            host: this.host,
            port: this.port,
          } as net.NetConnectOpts);
    } catch (err) {
      // Options Node refuses only when connecting (in connectOptions, say): this attempt fails
      // the way a refused connection does (events, then a retry), so start() still settles only
      // on an ack or a stop().
      const failed = new net.Socket();
      const coded = toTunnelError(err, ErrorCodes.INVALID_OPTION, "cannot connect to the server");
      process.nextTick(() => failed.destroy(coded));
      socket = failed;
    }
    socket.setNoDelay(true);
    if (this.config.keepAliveMs > 0) socket.setKeepAlive(true, this.config.keepAliveMs);
    this.connected = false;
    this.transportReady = false;
    this.tcpConnected = false;
    // A failure before this is the connection's, not the TLS handshake's (see onSessionClose).
    if (this.tlsOptions) socket.once("connect", this.markTcpConnected);
    const session = new Session(socket, this.config.session, this.makeHandler(socket), false);
    asClientConnection(socket, session.streams);
    this.session = session;
    this.handshakeTimer = setTimeout(() => {
      session.close(
        new TunnelError(
          ErrorCodes.HANDSHAKE_TIMEOUT,
          `no acknowledgement within ${this.config.handshakeTimeoutMs} ms`,
        ),
      );
    }, this.config.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    socket.once(this.tlsOptions ? "secureConnect" : "connect", () => this.sendHandshake(session));
  }

  private sendHandshake(session: Session): void {
    const socket = session.socket;
    this.transportReady = true;
    safeEmit(this.events, "tunnel-connection-established", { clientConnection: socket });
    const credentials = this.authenticationCredentials ?? {};
    const message: Record<string, unknown> = { ...credentials };
    if (this.options.extensions !== false) {
      const block: Record<string, unknown> = {
        v: EXTENSION_PROTOCOL_VERSION,
        ext: ALL_EXTENSIONS,
        win: this.config.session.streamWindowBytes,
        services: this.services.map(({ name, remotePort }) =>
          remotePort ? { name, port: remotePort } : { name },
        ),
      };
      if (this.options.clientId) block.clientId = this.options.clientId;
      message[EXTENSION_KEY] = block;
    }
    let handshake: Buffer;
    try {
      handshake = encodeHandshake(message);
    } catch (err) {
      // Credentials replaced after construction with something JSON cannot carry (a BigInt, a
      // cycle): this attempt fails with the reason; a later one sends whatever is set by then.
      session.close(
        toTunnelError(err, ErrorCodes.INVALID_OPTION, "authenticationCredentials cannot be sent"),
      );
      return;
    }
    // The body after the magic and the 4-byte length. A server at the same limit (64 KiB by
    // default, as W3P's) would only hang up on it: said here, once per attempt, instead.
    const bodyBytes = handshake.length - MAGIC.length - 4;
    if (bodyBytes > this.config.session.maxHandshakeBytes) {
      session.close(
        new TunnelError(
          ErrorCodes.HANDSHAKE_TOO_LARGE,
          `the handshake with these authenticationCredentials is ${bodyBytes} bytes, above maxHandshakeBytes (${this.config.session.maxHandshakeBytes}): a server with the same limit would hang up on it`,
        ),
      );
      return;
    }
    session.writeRaw(handshake);
    safeEmit(this.events, "authentication-credentials-sent", {
      clientConnection: socket,
      authenticationCredentials: credentials,
    });
  }

  private makeHandler(socket: Socket): SessionHandler {
    return {
      onMagic: () =>
        safeEmit(this.events, "tunnel-protocol-confirmed", { clientConnection: socket }),
      onHandshake: (body) => this.onAck(body),
      onOpenRequest: (streamId, meta) => this.openStream(streamId, meta),
      onGoAway: (reason) => {
        if (typeof reason.retryAfterMs === "number") this.retryAfterMs = reason.retryAfterMs;
        safeEmit(this.events, "server-going-away", {
          clientConnection: socket,
          err: new TunnelError(ErrorCodes.GOING_AWAY, reason.message),
        });
      },
      onRtt: (rttMs) => safeEmit(this.events, "heartbeat", { clientConnection: socket, rttMs }),
      onClose: (err) => this.onSessionClose(socket, err),
    };
  }

  private onAck(body: Buffer): void {
    const session = this.session!;
    const socket = session.socket;
    const ack = parseServerAck(body);
    if ("refusal" in ack) {
      const { code, message, retryAfterMs } = ack.refusal;
      const known = Object.values(ErrorCodes).find((c) => c === code) ?? ErrorCodes.AUTH_REJECTED;
      const err = new TunnelError(known, `server refused the tunnel: ${message}`);
      this.retryAfterMs = retryAfterMs ?? 0;
      safeEmit(this.events, "authentication-rejected", {
        clientConnection: socket,
        err,
        retryAfterMs: retryAfterMs ?? null,
      });
      session.close(err);
      return;
    }
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    const agreed =
      this.options.extensions === false ? new Set<never>() : negotiate(ALL_EXTENSIONS, ack.offer);
    const services =
      ack.services.length > 0 ? ack.services : [{ name: this.services[0]!.name, port: ack.port }];
    this.publicPorts = new Map(services.map(({ name, port }) => [name, port]));
    this.assignedPort = ack.port;
    this.connected = true;
    this.connectedSince = new Date();
    this.ackedAt = Date.now();
    this.retryAfterMs = 0;
    session.open(agreed, ack.offer?.windowBytes ?? this.config.session.streamWindowBytes);
    // Settled before the event: the ack came first, so a listener that calls stop() must not
    // turn start() into a rejection.
    this.firstAck?.resolve(ack.port);
    this.firstAck = null;
    safeEmit(this.events, "authentication-acknowledged", {
      clientConnection: socket,
      assignedPort: ack.port,
      services,
    });
  }

  private onSessionClose(socket: Socket, err: TunnelError | null): void {
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    if (this.session?.socket === socket) this.session = null;
    this.connected = false;
    // The backoff starts over only after a session that lasted as long as the longest wait: a
    // server that accepts and then drops every session at once (broken, or hostile) would
    // otherwise have every device it serves reconnect each second, forever.
    const acked = this.ackedAt > 0;
    if (acked && Date.now() - this.ackedAt >= this.reconnectMaxMs) this.attempt = 0;
    this.ackedAt = 0;
    if (err) {
      // A TLS failure shows up as a plain socket error between 'connect' and 'secureConnect':
      // name it. One before 'connect' (refused, unreachable, no descriptor left) stays as it is.
      const coded =
        (err.code === ErrorCodes.SOCKET || err.code === ErrorCodes.CONNECTION_CLOSED) &&
        this.tlsOptions &&
        this.tcpConnected &&
        !this.transportReady
          ? new TunnelError(
              ErrorCodes.TLS_HANDSHAKE,
              `TLS handshake with the server failed: ${err.message}`,
              {
                cause: err.cause,
              },
            )
          : acked
            ? err
            : this.explainSilentClose(err);
      safeEmit(this.events, "tunnel-error", { clientConnection: socket, err: coded });
    }
    safeEmit(this.events, "tunnel-disconnected", {
      clientConnection: socket,
      hadError: err !== null,
    });
    const closed = this.sessionClosed;
    this.sessionClosed = null;
    closed?.();
    if (this.state === "running") this.scheduleReconnect();
  }

  /**
   * A v1 server refuses by closing without a word, and sees the `w3p` key of an extension
   * handshake among the credentials: one whose connectionFilter rejects keys it does not know
   * refuses every attempt. Name the way out instead of a bare "closed".
   */
  private explainSilentClose(err: TunnelError): TunnelError {
    if (err.code !== ErrorCodes.CONNECTION_CLOSED) return err;
    const hints: string[] = [];
    if (this.options.extensions !== false) {
      hints.push(
        "a v1 server refuses by closing; one whose connectionFilter rejects credentials with unknown keys needs the client option extensions: false",
      );
    }
    // A TLS port drops a plain ClientHello-less connection without a byte (no alert to go by).
    if (!this.tlsOptions) {
      hints.push("a server whose control port speaks TLS closes plain connections so: set tls");
    }
    return new TunnelError(
      err.code,
      `${err.message}, without an answer: the server refused or dropped the connection (${hints.join("; ")})`,
      { cause: err.cause },
    );
  }

  private scheduleReconnect(): void {
    let timeout = backoffDelay(
      this.attempt++,
      this.reconnectInitialMs,
      this.reconnectMaxMs,
      this.reconnectJitter,
    );
    if (this.retryAfterMs > timeout) timeout = Math.min(this.retryAfterMs, this.reconnectMaxMs * 2);
    this.retryAfterMs = 0;
    this.reconnects++;
    // Armed before the event: a listener that calls stop() must find the timer to clear.
    this.reconnectTimer = setTimeout(() => this.connect(), timeout);
    safeEmit(this.events, "tunnel-reconnect-queued", { timeout });
  }

  // --- streams -----------------------------------------------------------------------------------

  private openStream(streamId: number, meta: StreamMeta | null): void {
    const session = this.session;
    if (!session) return;
    const service = meta?.service
      ? this.services.find((s) => s.name === meta.service)
      : this.services[0];
    if (!service || session.streamCount >= this.config.session.maxStreams) {
      const err = service
        ? stacklessError(
            ErrorCodes.TOO_MANY_STREAMS,
            `${session.streamCount} streams already open (${this.streamLimit})`,
          )
        : stacklessError(
            ErrorCodes.UNKNOWN_SERVICE,
            `the server opened a stream for unknown service ${JSON.stringify(meta?.service)}`,
          );
      session.writeControl(streamId, FrameType.ERROR);
      safeEmit(this.events, "stream-rejected", {
        clientConnection: session.socket,
        streamId,
        service: service?.name ?? String(meta?.service),
        err,
      });
      return;
    }
    const proxyVersion = this.options.proxyProtocol;
    // Built before anything is opened: nothing below may throw with a socket half set up.
    const proxyHeader =
      proxyVersion === 1 || proxyVersion === 2 ? buildProxyHeader(proxyVersion, meta) : null;
    const socket = net.connect({
      host: service.localHost,
      port: service.localPort,
      allowHalfOpen: true,
      // Applied once the connection is up; setNoDelay() before that costs a second system call.
      noDelay: true,
      lookup: this.serviceLookup,
    });
    // The stream at once: it owns the socket's listeners ('error' included).
    const stream = new TunnelStream(
      session,
      streamId,
      socket,
      this.observerFor(session),
      service.name,
    );
    this.localSockets.add(socket);
    socket.on("close", this.localSocketClosed);
    // Our own timer, not socket.setTimeout: that leaves a timeout object and listener on every
    // service socket for its whole life (hundreds of bytes per idle stream). Kept on the socket
    // (not in a closure) so the shared close listener can clear it and 'connect' can drop it.
    (socket as LocalSocket)[CONNECT_TIMER] = setTimeout(() => {
      stream.fail(
        stacklessError(
          ErrorCodes.LOCAL_CONNECT_TIMEOUT,
          `local service ${service.localHost}:${service.localPort} did not accept within ${this.localConnectTimeoutMs} ms`,
        ),
      );
    }, this.localConnectTimeoutMs);
    if (proxyHeader) socket.write(proxyHeader);
    countOpened(this.streamCounts, service.name);
    socket.once("connect", () => {
      clearConnectTimer(socket);
      safeEmit(this.events, "service-connected", {
        serviceSocket: socket,
        streamId,
        service: service.name,
        visitor: meta,
      });
    });
  }

  /** One observer per session, shared by its streams (not a set of closures per stream). */
  private observerFor(session: Session): StreamObserver {
    if (this.observer?.session !== session) {
      this.observer = { session, observer: this.streamObserver(session.socket) };
    }
    return this.observer.observer;
  }

  private observer: { session: Session; observer: StreamObserver } | null = null;
  /** Service host names are looked up once a second at most, not once per visitor. */
  private readonly serviceLookup = cachedLookup();

  private streamObserver(clientConnection: Socket): StreamObserver {
    const events = this.events;
    return {
      inbound: (_stream, data) => {
        if (events.listenerCount("data-to-service") === 0) return false;
        safeEmit(events, "data-to-service", { clientConnection, data });
        return true;
      },
      outbound: (_stream, data) => {
        if (events.listenerCount("data-from-service") === 0) return false;
        safeEmit(events, "data-from-service", { clientConnection, data });
        return true;
      },
      error: (stream, err) => {
        // `connecting` is already false when a failed connect is reported; syscall says it (a
        // named service's failed lookup included).
        const syscall = (err as NodeJS.ErrnoException).syscall;
        const failedToConnect =
          stream.socket.connecting || syscall === "connect" || syscall === "getaddrinfo";
        const code = failedToConnect ? ErrorCodes.LOCAL_CONNECT_FAILED : ErrorCodes.SOCKET;
        safeEmit(events, "service-error", {
          serviceSocket: stream.socket,
          err: toStacklessError(err, code, `local service ${stream.service}`),
          streamId: stream.id,
          service: stream.service,
        });
      },
      closed: (stream) => {
        countClosed(this.streamCounts, stream);
        safeEmit(events, "service-disconnected", {
          serviceSocket: stream.socket,
          streamId: stream.id,
          service: stream.service,
        });
      },
    };
  }
}

function resolveServices(options: TunnelClientOptions): ResolvedService[] {
  const list: ServiceOptions[] = options.services?.length
    ? options.services
    : [
        {
          name: "default",
          localHost: hostOption("localServiceHost", options.localServiceHost, "localhost"),
          localPort: options.localServicePort ?? 3000,
        },
      ];
  if (list.length > MAX_SERVICES) {
    throw new TunnelError(
      ErrorCodes.INVALID_OPTION,
      `at most ${MAX_SERVICES} services per client (got ${list.length})`,
    );
  }
  const names = new Set<string>();
  return list.map((service) => {
    if (typeof service.name !== "string" || service.name.length === 0 || names.has(service.name)) {
      throw new TunnelError(
        ErrorCodes.INVALID_OPTION,
        `each service needs a unique name (got ${JSON.stringify(service.name)})`,
      );
    }
    names.add(service.name);
    const resolved: ResolvedService = {
      name: service.name,
      localHost: hostOption(
        `services.${service.name}.localHost`,
        service.localHost,
        hostOption("localServiceHost", options.localServiceHost, "localhost"),
      ),
      localPort: portOption(`services.${service.name}.localPort`, service.localPort, 0),
    };
    if (service.remotePort !== undefined) {
      resolved.remotePort = portOption(
        `services.${service.name}.remotePort`,
        service.remotePort,
        0,
      );
    }
    return resolved;
  });
}
