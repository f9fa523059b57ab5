import { ErrorCodes, TunnelError } from "../errors.js";
import { isValidPort } from "../protocol/handshake.js";
import { controlJsonProblem } from "../protocol/json-limits.js";

/** What the server knows about a visitor; carried by the OPEN frame (open extension). */
export interface StreamMeta {
  /** Name of the service (public port) the visitor connected to. */
  service?: string;
  /** `"IPv4"` or `"IPv6"`. */
  family: string;
  /** The visitor's address as the server saw it. */
  address: string;
  /** The visitor's source port. */
  port: number;
  /** The public port the visitor connected to. */
  publicPort: number;
  /** The server address the visitor connected to (the PROXY header's destination). */
  localAddress?: string;
  /** TLS server name (SNI) the visitor asked for, when the public port is TLS. */
  servername?: string;
}

export function encodeStreamMeta(meta: StreamMeta): Buffer {
  return Buffer.from(JSON.stringify(meta), "utf8");
}

/**
 * Longest string a real server sends in each field (an IPv6 address with a zone, a DNS name,
 * a service name): anything longer is not metadata, and would otherwise travel into events and
 * PROXY headers.
 */
const STRING_LIMITS: ReadonlyArray<[string, number]> = [
  ["family", 16],
  ["address", 100],
  ["localAddress", 100],
  ["servername", 255],
  ["service", 128],
];

/** Parses an OPEN payload; an empty payload means "no metadata". Bad metadata is a framing error. */
export function parseStreamMeta(payload: Buffer): StreamMeta | null {
  if (payload.length === 0) return null;
  const problem = controlJsonProblem(payload);
  if (problem) throw new TunnelError(ErrorCodes.MALFORMED_FRAME, `OPEN metadata ${problem}`);
  let value: unknown;
  try {
    value = JSON.parse(payload.toString("utf8"));
  } catch (err) {
    throw new TunnelError(ErrorCodes.MALFORMED_FRAME, "OPEN metadata is not JSON", { cause: err });
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new TunnelError(ErrorCodes.MALFORMED_FRAME, "OPEN metadata is not a JSON object");
  }
  const raw = value as Record<string, unknown>;
  for (const [key, limit] of STRING_LIMITS) {
    const field = raw[key];
    if (typeof field === "string" && field.length > limit) {
      throw new TunnelError(
        ErrorCodes.MALFORMED_FRAME,
        `OPEN metadata: ${key} is longer than ${limit} characters`,
      );
    }
  }
  const meta: StreamMeta = {
    family: typeof raw.family === "string" ? raw.family : "unknown",
    address: typeof raw.address === "string" ? raw.address : "",
    port: isValidPort(raw.port, true) ? raw.port : 0,
    publicPort: isValidPort(raw.publicPort, true) ? raw.publicPort : 0,
  };
  if (typeof raw.service === "string") meta.service = raw.service;
  if (typeof raw.servername === "string") meta.servername = raw.servername;
  if (typeof raw.localAddress === "string") meta.localAddress = raw.localAddress;
  return meta;
}
