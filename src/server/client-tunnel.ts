import type { AddressInfo, Server, Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { debug } from "../debug.js";
import {
  ErrorCodes,
  stacklessError,
  TunnelError,
  toStacklessError,
  toTunnelError,
} from "../errors.js";
import { type EventArgs, type ServerEventEmitter, type ServerEvents, safeEmit } from "../events.js";
import { isTlsSocket } from "../lazy-builtins.js";
import {
  countClosed,
  countOpened,
  type ServiceCounters,
  serviceTraffic,
} from "../mux/service-counters.js";
import { Session, type SessionHandler } from "../mux/session.js";
import type { SessionConfig } from "../mux/session-config.js";
import { encodeStreamMeta, type StreamMeta } from "../mux/stream-meta.js";
import { type StreamObserver, TunnelStream } from "../mux/tunnel-stream.js";
import type { ConnectionContext, HeldConnectionFilter } from "../options.js";
import {
  ALL_EXTENSIONS,
  EXTENSION_PROTOCOL_VERSION,
  Extension,
  FrameType,
} from "../protocol/constants.js";
import { encodeHandshake } from "../protocol/encode.js";
import {
  EXTENSION_KEY,
  type ExtensionOffer,
  negotiate,
  parseClientHandshake,
  type RefusalReason,
  type ServiceRequest,
} from "../protocol/handshake.js";

/**
 * A dual-stack public listener (the default) reports IPv4 visitors as `::ffff:a.b.c.d`; the
 * stream metadata names them as the IPv4 peers they are.
 */
function unmapIPv4(address: string | undefined): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address ?? "");
  return mapped ? mapped[1]! : (address ?? "");
}

/** One public port and who it currently serves (null while it is held for a lease). */
export interface PublicService {
  name: string;
  server: Server;
  address: AddressInfo;
  owner: ClientTunnel | null;
  identity: string | null;
  leaseTimer: NodeJS.Timeout | null;
}

/** What a ClientTunnel needs from its TunnelServer: config, events, ports and admission. */
export interface ServerContext {
  readonly session: SessionConfig;
  readonly handshakeTimeoutMs: number;
  readonly secure: boolean;
  readonly extensions: boolean;
  readonly events: ServerEventEmitter;
  /** The server's filter as it is now (it may be replaced while the server runs). */
  connectionFilter(): HeldConnectionFilter;
  identify(
    credentials: Record<string, unknown>,
    offer: ExtensionOffer | null,
    context: ConnectionContext,
  ): string | null;
  /**
   * Pays for an authentication attempt before the filter runs: 0 when it may go ahead, else the
   * ms to wait (failed attempts from this address are being throttled).
   */
  takeAuthAttempt(remoteAddress: string): number;
  /** The filter accepted: the attempt's payment is given back. */
  authSucceeded(remoteAddress: string): void;
  /** The filter refused (the attempt stays paid): the delay the client should wait (ms). */
  authFailed(remoteAddress: string): number;
  /** A TLS handshake that came to nothing (no W3P handshake followed): counted as a failure. */
  handshakeWasted(remoteAddress: string): void;
  /** A connection turned away before it became a tunnel (the `connection-rejected` event). */
  rejected(tunnel: ClientTunnel, err: TunnelError): void;
  /** Checks limits, takes over a stale session, binds the public ports. Throws a coded error. */
  admit(
    tunnel: ClientTunnel,
    identity: string | null,
    requests: ServiceRequest[],
  ): Promise<PublicService[]>;
  /** The tunnel ended: hold or close its ports, forget it. */
  release(tunnel: ClientTunnel): void;
  visitorAllowed(remoteAddress: string): boolean;
}

export interface TunnelStats {
  connectedSince: Date;
  remoteAddress: string;
  remotePort: number;
  clientId: string | null;
  bytesIn: number;
  bytesOut: number;
  streamsActive: number;
  streamsTotal: number;
  rttMs: number | null;
  /** Per service; `bytesIn` = payload from the client to visitors, `bytesOut` = from visitors. */
  services: {
    name: string;
    port: number;
    streamsActive: number;
    streamsTotal: number;
    bytesIn: number;
    bytesOut: number;
  }[];
}

type Lifecycle = "awaiting-handshake" | "authenticating" | "open" | "closed";

/**
 * One connected client on the server: its control session, authentication, public port(s) and
 * visitors. Created when the control connection is accepted; `authenticationCredentials` and
 * `tunnelAddress` are set once the client is accepted and its public port listens.
 */
export class ClientTunnel {
  /** The control connection. */
  readonly socket: Socket;
  /** Public listener address of the first (or only) service; null until it listens. */
  tunnelAddress: AddressInfo | null = null;
  /** The accepted credentials (without the reserved `w3p` key); null until accepted. */
  authenticationCredentials: Record<string, unknown> | null = null;
  /** Every service of this client with its public address. */
  services: { name: string; address: AddressInfo }[] = [];
  /** Identity used for port leases and takeover (explicit `clientId` or `clientIdentity()`). */
  clientId: string | null = null;
  readonly connectedAt = new Date();
  readonly remoteAddress: string;
  readonly remotePort: number;

  /** @internal */
  readonly session: Session;
  /** @internal */
  publicServices: PublicService[] = [];
  private readonly ctx: ServerContext;
  private lifecycle: Lifecycle = "awaiting-handshake";
  private handshakeTimer: NodeJS.Timeout | null;
  private offer: ExtensionOffer | null = null;
  private streamsTotal = 0;
  private readonly streamsByService = new Map<string, ServiceCounters>();
  private readonly observer: StreamObserver;
  private closeListeners: Array<() => void> = [];

  /** `spentMs`: how much of `handshakeTimeoutMs` went by before (a TLS handshake's time). */
  constructor(ctx: ServerContext, socket: Socket, spentMs = 0) {
    this.ctx = ctx;
    this.socket = socket;
    this.remoteAddress = socket.remoteAddress ?? "";
    this.remotePort = socket.remotePort ?? 0;
    this.session = new Session(socket, ctx.session, this.handler, true);
    this.handshakeTimer = setTimeout(
      () => {
        // The client waits for its acknowledgement as long, so a slow filter cannot take longer.
        const what =
          this.lifecycle === "authenticating"
            ? "the handshake arrived, but connectionFilter did not decide"
            : "no complete handshake";
        this.session.close(
          new TunnelError(
            ErrorCodes.HANDSHAKE_TIMEOUT,
            `${what} within ${ctx.handshakeTimeoutMs} ms`,
          ),
        );
      },
      Math.max(0, ctx.handshakeTimeoutMs - spentMs),
    );
    this.handshakeTimer.unref();
    this.observer = this.makeObserver();
  }

  /** True once the client is accepted and its public port(s) listen. */
  get isOpen(): boolean {
    return this.lifecycle === "open";
  }

  get isClosed(): boolean {
    return this.lifecycle === "closed";
  }

  /** Last heartbeat round trip in ms (null without the ping extension or before the first pong). */
  get rttMs(): number | null {
    return this.session.rttMs;
  }

  /** Drops this client on purpose; an extension client is told why (GOAWAY) first. */
  close(reason = "closed by the server"): void {
    this.session.close(null, { code: ErrorCodes.GOING_AWAY, message: reason });
  }

  /** Resolves once the control connection and every visitor of this tunnel are closed. */
  closed(): Promise<void> {
    if (this.lifecycle === "closed" && this.socket.closed) return Promise.resolve();
    return new Promise((resolve) => this.closeListeners.push(resolve));
  }

  stats(): TunnelStats {
    return {
      connectedSince: this.connectedAt,
      remoteAddress: this.remoteAddress,
      remotePort: this.remotePort,
      clientId: this.clientId,
      bytesIn: this.session.bytesIn,
      bytesOut: this.session.bytesOut,
      streamsActive: this.session.streams.size,
      streamsTotal: this.streamsTotal,
      rttMs: this.session.rttMs,
      services: this.services.map(({ name, address }) => {
        const counters = serviceTraffic(
          this.streamsByService.get(name),
          this.session.streams.values(),
          name,
        );
        return {
          name,
          port: address.port,
          streamsActive: counters.active,
          streamsTotal: counters.total,
          bytesIn: counters.bytesIn,
          bytesOut: counters.bytesOut,
        };
      }),
    };
  }

  /**
   * A raw connection to one of this tunnel's TLS public ports, before its handshake: it counts
   * against `maxStreams` and the new-visitor rate from now on. Returns what gives its place back
   * (once secured or gone), or null when it was turned away (the socket is destroyed).
   */
  admitVisitorHandshake(socket: Socket): (() => void) | null {
    const err = this.visitorLimitError(this.visitorHandshakes) ?? this.visitorRateError(socket);
    if (err) {
      this.rejectVisitor(socket, err);
      return null;
    }
    this.visitorHandshakes++;
    return () => {
      this.visitorHandshakes--;
    };
  }

  /** Visitors to this tunnel's TLS public ports still in their handshake. */
  private visitorHandshakes = 0;

  private visitorLimitError(extra: number): TunnelError | null {
    if (this.lifecycle !== "open") return stacklessError(ErrorCodes.STOPPED, "tunnel is not open");
    const streams = this.session.streams.size + extra;
    if (streams >= this.ctx.session.maxStreams) {
      return stacklessError(
        ErrorCodes.TOO_MANY_STREAMS,
        `tunnel already has ${streams} streams (maxStreams)`,
      );
    }
    return null;
  }

  /** Takes a new-visitor token for the visitor's address; the refusal when there is none. */
  private visitorRateError(socket: Socket): TunnelError | null {
    if (this.ctx.visitorAllowed(socket.remoteAddress ?? "")) return null;
    return stacklessError(
      ErrorCodes.VISITOR_RATE,
      `too many new visitors from ${socket.remoteAddress}`,
    );
  }

  private rejectVisitor(socket: Socket, err: TunnelError): void {
    socket.on("error", () => {});
    socket.destroy();
    this.emit("visitor-rejected", { clientTunnel: this, visitorSocket: socket, err });
  }

  /**
   * A visitor arrived on one of this tunnel's public ports. `admitted`: it was counted against the
   * new-visitor rate already, before its TLS handshake.
   */
  acceptVisitor(socket: Socket, service: PublicService, admitted = false): void {
    const reject = (err: TunnelError) => this.rejectVisitor(socket, err);
    const limited = this.visitorLimitError(this.visitorHandshakes);
    if (limited) {
      reject(limited);
      return;
    }
    if (this.session.backlogged) {
      reject(
        stacklessError(
          ErrorCodes.TUNNEL_BACKLOG,
          `the tunnel's client has ${this.socket.writableLength} bytes unread`,
        ),
      );
      return;
    }
    const tooFast = admitted ? null : this.visitorRateError(socket);
    if (tooFast) {
      reject(tooFast);
      return;
    }
    const id = this.session.allocateStreamId();
    const hasOpen = this.session.has(Extension.OPEN);
    if (this.session.has(Extension.FIN)) socket.allowHalfOpen = true;
    socket.setNoDelay(true);
    const meta: StreamMeta | null = hasOpen ? this.visitorMeta(socket, service) : null;
    const stream = new TunnelStream(this.session, id, socket, this.observer, service.name);
    // Announce the stream before any of its bytes: an OPEN frame, or for v1 clients an empty data
    // frame, so a service that speaks first (SSH, SMTP) is dialled at once.
    if (meta) this.session.writeControl(id, FrameType.OPEN, encodeStreamMeta(meta));
    else this.session.writeData(id, Buffer.alloc(0));
    this.streamsTotal++;
    countOpened(this.streamsByService, service.name);
    this.emit("visitor-connected", {
      clientTunnel: this,
      visitorSocket: socket,
      streamId: stream.id,
      service: service.name,
    });
  }

  private visitorMeta(socket: Socket, service: PublicService): StreamMeta {
    const remote = unmapIPv4(socket.remoteAddress);
    const meta: StreamMeta = {
      service: service.name,
      family: remote === socket.remoteAddress ? (socket.remoteFamily ?? "unknown") : "IPv4",
      address: remote,
      port: socket.remotePort ?? 0,
      publicPort: service.address.port,
    };
    if (socket.localAddress) meta.localAddress = unmapIPv4(socket.localAddress);
    if (isTlsSocket(socket)) {
      const servername = (socket as TLSSocket & { servername?: string | false }).servername;
      if (typeof servername === "string" && servername) meta.servername = servername;
    }
    return meta;
  }

  private makeObserver(): StreamObserver {
    const events = this.ctx.events;
    return {
      inbound: (stream, data) => {
        if (events.listenerCount("data-to-visitor") === 0) return false;
        this.emit("data-to-visitor", { clientTunnel: this, visitorSocket: stream.socket, data });
        return true;
      },
      outbound: (stream, data) => {
        if (events.listenerCount("data-from-visitor") === 0) return false;
        this.emit("data-from-visitor", { clientTunnel: this, visitorSocket: stream.socket, data });
        return true;
      },
      error: (stream, err) => {
        this.emit("visitor-error", {
          clientTunnel: this,
          visitorSocket: stream.socket,
          err: toStacklessError(err, ErrorCodes.SOCKET, "visitor connection failed"),
          streamId: stream.id,
          service: stream.service,
        });
      },
      closed: (stream) => {
        countClosed(this.streamsByService, stream);
        this.emit("visitor-disconnected", {
          clientTunnel: this,
          visitorSocket: stream.socket,
          streamId: stream.id,
          service: stream.service,
        });
      },
    };
  }

  private readonly handler: SessionHandler = {
    onMagic: () => {
      this.emit("client-protocol-confirmed", { clientTunnel: this });
    },
    onHandshake: (body) => {
      this.session.pauseDecoding();
      this.lifecycle = "authenticating";
      this.authenticate(body).catch((err) => {
        this.session.close(toTunnelError(err, ErrorCodes.BAD_HANDSHAKE, "handshake failed"));
      });
    },
    onOpenRequest: () => {
      // The session rejects OPEN from clients before this could run; nothing to do.
    },
    onGoAway: (reason) => {
      debug("client %s going away: %s", this.remoteAddress, reason.message);
    },
    onRtt: (rttMs) => {
      this.emit("heartbeat", { clientTunnel: this, rttMs });
    },
    onClose: (err) => this.onSessionClose(err),
  };

  private async authenticate(body: Buffer): Promise<void> {
    const { credentials, offer } = parseClientHandshake(body);
    this.offer = this.ctx.extensions ? offer : null;
    // Throttled: refused without asking the filter (an extension client learns when to retry).
    // An attempt is paid for before the filter runs and refunded if it accepts: with an async
    // filter, any number of guesses could otherwise be in flight before the first failure counts.
    const throttleMs = this.ctx.takeAuthAttempt(this.remoteAddress);
    if (throttleMs > 0) {
      const err = stacklessError(
        ErrorCodes.AUTH_THROTTLED,
        `too many failed authentications from ${this.remoteAddress}; retry in ${throttleMs} ms`,
      );
      this.ctx.rejected(this, err);
      this.refuse(err, throttleMs);
      return;
    }
    const context = this.connectionContext();
    const accepted = await this.runFilter(credentials, context);
    if (this.lifecycle !== "authenticating") return;
    if (accepted) this.ctx.authSucceeded(this.remoteAddress);
    if (!accepted) {
      const retryAfterMs = this.ctx.authFailed(this.remoteAddress);
      const err = stacklessError(ErrorCodes.AUTH_REJECTED, "Client rejected by connection filter", {
        cause: accepted === null ? this.filterError : undefined,
      });
      this.emit("client-authentication-failed", { clientTunnel: this, err });
      this.refuse(err, retryAfterMs);
      return;
    }
    const identity = this.ctx.identify(credentials, this.offer, context);
    const requests: ServiceRequest[] =
      this.offer?.extensions.has(Extension.SERVICES) && this.offer.services?.length
        ? this.offer.services
        : [
            {
              name: this.offer?.services?.[0]?.name ?? "default",
              ...(this.offer?.services?.[0]?.port ? { port: this.offer.services[0].port } : {}),
            },
          ];
    let services: PublicService[];
    try {
      services = await this.ctx.admit(this, identity, requests);
    } catch (err) {
      // Reported once, as `client-error` when the connection closes: no tunnel existed yet.
      const coded = toTunnelError(err, ErrorCodes.LISTEN_FAILED, "cannot open the public port");
      this.refuse(coded, 5_000);
      return;
    }
    if (this.lifecycle !== "authenticating") {
      // The client left while its ports were being bound.
      this.publicServices = services;
      this.ctx.release(this);
      return;
    }
    this.clientId = identity;
    this.authenticationCredentials = credentials;
    this.publicServices = services;
    this.services = services.map(({ name, address }) => ({ name, address }));
    this.tunnelAddress = services[0]!.address;
    const agreed = negotiate(ALL_EXTENSIONS, this.offer);
    const ack: Record<string, unknown> = { port: this.tunnelAddress.port };
    if (this.offer) {
      ack[EXTENSION_KEY] = {
        v: EXTENSION_PROTOCOL_VERSION,
        ext: [...agreed],
        win: this.ctx.session.streamWindowBytes,
        services: services.map(({ name, address }) => ({ name, port: address.port })),
      };
    }
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.lifecycle = "open";
    this.session.writeRaw(encodeHandshake(ack));
    for (const service of services) service.owner = this;
    // Open before the event (a listener that closes the tunnel sends GOAWAY like any close), but
    // what the client sent right behind its handshake is decoded only after it: a bad frame there
    // closes the tunnel, which must then already exist for every listener.
    this.session.open(agreed, this.offer?.windowBytes ?? this.ctx.session.streamWindowBytes, true);
    this.emit("tunnel-created", {
      clientTunnel: this,
      clientAuthenticationCredentials: credentials,
      secure: this.ctx.secure,
    });
    this.session.releaseDecoding();
  }

  private filterError: unknown;

  /** true = accepted, false = refused, null = the filter threw (a refusal too). */
  private async runFilter(
    credentials: Record<string, unknown>,
    context: ConnectionContext,
  ): Promise<boolean | null> {
    const filter = this.ctx.connectionFilter();
    try {
      // Truthy accepts, as W3P always did (plain-JS filters often return the user record).
      return Boolean(await filter(credentials, context));
    } catch (err) {
      this.filterError = err;
      debug("connectionFilter threw: %o", err);
      return null;
    }
  }

  private connectionContext(): ConnectionContext {
    const context: ConnectionContext = {
      remoteAddress: this.remoteAddress,
      remotePort: this.remotePort,
    };
    if (isTlsSocket(this.socket)) {
      context.peerCertificate = this.socket.getPeerCertificate();
      context.authorized = this.socket.authorized;
    }
    return context;
  }

  /** Tells an extension client why (a v1 client is simply closed), then closes. */
  private refuse(err: TunnelError, retryAfterMs: number): void {
    this.lifecycle = "closed";
    if (this.offer) {
      const reason: RefusalReason = { code: err.code, message: err.message, retryAfterMs };
      this.session.writeRaw(
        encodeHandshake({ [EXTENSION_KEY]: { v: EXTENSION_PROTOCOL_VERSION, error: reason } }),
      );
      this.session.close(err, reason);
    } else {
      this.session.close(err);
    }
  }

  private onSessionClose(err: TunnelError | null): void {
    const wasOpen = this.tunnelAddress !== null && this.authenticationCredentials !== null;
    // A TLS connection that fails or gives up before its handshake cost us a TLS handshake for
    // nothing: it counts as a failed authentication, so one address cannot keep the CPU busy
    // with handshakes it never follows up.
    if (err && this.lifecycle === "awaiting-handshake" && isTlsSocket(this.socket)) {
      this.ctx.handshakeWasted(this.remoteAddress);
    }
    this.lifecycle = "closed";
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.ctx.release(this);
    if (err && err.code !== ErrorCodes.AUTH_REJECTED && err.code !== ErrorCodes.AUTH_THROTTLED) {
      // Every failure of the control connection is a `client-error`, in any phase, as it was in
      // W3P (code written for it watches that event); one that ends an established tunnel is
      // also its `tunnel-error`.
      this.emit("client-error", { clientTunnel: this, err });
      if (wasOpen) this.emit("tunnel-error", { clientTunnel: this, err });
    }
    this.emit("client-disconnected", { clientTunnel: this });
    if (wasOpen) this.emit("tunnel-destroyed", { clientTunnel: this });
    const listeners = this.closeListeners;
    this.closeListeners = [];
    for (const resolve of listeners) resolve();
  }

  private emit<K extends keyof ServerEvents & string>(
    event: K,
    ...args: EventArgs<ServerEvents>[K]
  ): void {
    safeEmit(this.ctx.events, event, ...args);
  }
}
