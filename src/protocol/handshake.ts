import { ErrorCodes, TunnelError } from "../errors.js";
import { ALL_EXTENSIONS, EXTENSION_PROTOCOL_VERSION, type ExtensionName } from "./constants.js";
import { jsonNestsDeeperThan, MAX_JSON_DEPTH } from "./json-limits.js";

/** The reserved handshake key that carries extension negotiation (DECISIONS.md). */
export const EXTENSION_KEY = "w3p";

/** One service a client asks for: its name and, optionally, the public port it wants. */
export interface ServiceRequest {
  name: string;
  port?: number;
}

/** What one side announced under `w3p` in its handshake. */
export interface ExtensionOffer {
  version: number;
  extensions: Set<ExtensionName>;
  /** Initial per-stream receive window the sender grants (flow extension). */
  windowBytes?: number;
  clientId?: string;
  services?: ServiceRequest[];
}

export interface RefusalReason {
  code: string;
  message: string;
  retryAfterMs?: number;
}

export interface ClientHandshake {
  /** The credentials object without the reserved key: what `connectionFilter` sees. */
  credentials: Record<string, unknown>;
  offer: ExtensionOffer | null;
}

export interface ServerAck {
  port: number;
  offer: ExtensionOffer | null;
  /** Public port per service, when the services extension is in use. */
  services: { name: string; port: number }[];
}

function parseJsonObject(body: Buffer, what: string): Record<string, unknown> {
  if (jsonNestsDeeperThan(body, MAX_JSON_DEPTH)) {
    throw new TunnelError(
      ErrorCodes.BAD_HANDSHAKE,
      `${what} nests deeper than ${MAX_JSON_DEPTH} levels`,
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(body.toString("utf8"));
  } catch (err) {
    throw new TunnelError(ErrorCodes.BAD_HANDSHAKE, `${what} is not valid JSON`, { cause: err });
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new TunnelError(ErrorCodes.BAD_HANDSHAKE, `${what} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

export function isValidPort(value: unknown, allowZero = false): value is number {
  return (
    typeof value === "number" &&
    Number.isInteger(value) &&
    value >= (allowZero ? 0 : 1) &&
    value <= 65535
  );
}

/** Most services one handshake may list (the server's `maxServicesPerClient` is usually lower). */
export const MAX_SERVICES = 256;

/**
 * Reads the `w3p` block leniently: unknown extension names are ignored (a newer peer may know
 * more), but a block of the wrong shape is a handshake error.
 */
function parseOffer(raw: unknown): ExtensionOffer | null {
  if (raw === undefined) return null;
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new TunnelError(ErrorCodes.BAD_HANDSHAKE, `"${EXTENSION_KEY}" must be an object`);
  }
  const block = raw as Record<string, unknown>;
  const version = typeof block.v === "number" ? block.v : EXTENSION_PROTOCOL_VERSION;
  const extensions = new Set<ExtensionName>();
  if (Array.isArray(block.ext)) {
    for (const name of block.ext) {
      if ((ALL_EXTENSIONS as readonly unknown[]).includes(name))
        extensions.add(name as ExtensionName);
    }
  }
  const offer: ExtensionOffer = { version, extensions };
  if (typeof block.win === "number" && Number.isInteger(block.win) && block.win > 0) {
    offer.windowBytes = Math.min(block.win, 0xffffffff);
  }
  if (typeof block.clientId === "string" && block.clientId.length > 0) {
    offer.clientId = block.clientId.slice(0, 256);
  }
  if (Array.isArray(block.services)) {
    if (block.services.length > MAX_SERVICES) {
      throw new TunnelError(
        ErrorCodes.BAD_HANDSHAKE,
        `at most ${MAX_SERVICES} services per handshake (got ${block.services.length})`,
      );
    }
    offer.services = [];
    const names = new Set<string>();
    for (const entry of block.services) {
      if (entry === null || typeof entry !== "object") {
        throw new TunnelError(ErrorCodes.BAD_HANDSHAKE, "each service must be an object");
      }
      const { name, port } = entry as Record<string, unknown>;
      if (typeof name !== "string" || name.length === 0 || name.length > 128) {
        throw new TunnelError(ErrorCodes.BAD_HANDSHAKE, "each service needs a name (1-128 chars)");
      }
      if (port !== undefined && !isValidPort(port, true)) {
        throw new TunnelError(
          ErrorCodes.BAD_HANDSHAKE,
          `service "${name}" asks for an invalid port`,
        );
      }
      if (names.has(name)) {
        throw new TunnelError(ErrorCodes.BAD_HANDSHAKE, `service name "${name}" appears twice`);
      }
      names.add(name);
      offer.services.push(port ? { name, port } : { name });
    }
  }
  return offer;
}

export function parseClientHandshake(body: Buffer): ClientHandshake {
  const object = parseJsonObject(body, "handshake");
  const offer = parseOffer(object[EXTENSION_KEY]);
  const credentials = { ...object };
  delete credentials[EXTENSION_KEY];
  return { credentials, offer };
}

/** Parses the server's first message: an ack with a port, or (extensions only) a refusal. */
export function parseServerAck(body: Buffer): ServerAck | { refusal: RefusalReason } {
  const object = parseJsonObject(body, "server acknowledgement");
  const rawBlock = object[EXTENSION_KEY];
  const refusal =
    rawBlock && typeof rawBlock === "object" ? (rawBlock as Record<string, unknown>).error : null;
  if (refusal && typeof refusal === "object") {
    const { code, message, retryAfterMs } = refusal as Record<string, unknown>;
    return {
      refusal: {
        code: typeof code === "string" ? code : ErrorCodes.AUTH_REJECTED,
        message: typeof message === "string" ? message : "refused by the server",
        ...(typeof retryAfterMs === "number" && retryAfterMs >= 0 ? { retryAfterMs } : {}),
      },
    };
  }
  if (!isValidPort(object.port)) {
    throw new TunnelError(
      ErrorCodes.BAD_HANDSHAKE,
      `server acknowledgement has no valid port (got ${JSON.stringify(object.port)})`,
    );
  }
  const offer = parseOffer(rawBlock);
  const services: { name: string; port: number }[] = [];
  const rawServices =
    rawBlock && typeof rawBlock === "object"
      ? (rawBlock as Record<string, unknown>).services
      : undefined;
  if (Array.isArray(rawServices)) {
    for (const entry of rawServices) {
      const { name, port } = (entry ?? {}) as Record<string, unknown>;
      if (typeof name !== "string" || !isValidPort(port)) {
        throw new TunnelError(ErrorCodes.BAD_HANDSHAKE, "server acknowledged an invalid service");
      }
      services.push({ name, port });
    }
  }
  return { port: object.port, offer, services };
}

/** The intersection of what both sides announced: only these extensions are used. */
export function negotiate(
  ours: readonly ExtensionName[],
  theirs: ExtensionOffer | null,
): Set<ExtensionName> {
  const agreed = new Set<ExtensionName>();
  if (!theirs) return agreed;
  for (const name of ours) if (theirs.extensions.has(name)) agreed.add(name);
  return agreed;
}
