import { isIP } from "node:net";
import type { StreamMeta } from "../mux/stream-meta.js";

/** The 12-byte signature that starts every PROXY protocol v2 header. */
const V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);

/** `::ffff:1.2.3.4` (how a dual-stack listener reports IPv4 peers) is an IPv4 address. */
function normalize(address: string | undefined): string {
  if (!address) return "";
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped ? mapped[1]! : address;
}

interface Endpoints {
  family: 4 | 6;
  source: string;
  destination: string;
  sourcePort: number;
  destinationPort: number;
}

function endpoints(meta: StreamMeta | null): Endpoints | null {
  if (!meta) return null;
  const source = normalize(meta.address);
  const family = isIP(source);
  if (family !== 4 && family !== 6) return null;
  let destination = normalize(meta.localAddress);
  if (isIP(destination) !== family) destination = family === 4 ? "0.0.0.0" : "::";
  return {
    family,
    source,
    destination,
    sourcePort: meta.port,
    destinationPort: meta.publicPort,
  };
}

/**
 * A HAProxy PROXY protocol header (v1 text or v2 binary) describing the visitor, written to the
 * local service before any stream byte. Without visitor metadata (a v1 server) it says UNKNOWN /
 * LOCAL, which PROXY-aware services accept and treat as a direct connection.
 */
export function buildProxyHeader(version: 1 | 2, meta: StreamMeta | null): Buffer {
  const ends = endpoints(meta);
  if (version === 1) {
    if (!ends) return Buffer.from("PROXY UNKNOWN\r\n", "ascii");
    const proto = ends.family === 4 ? "TCP4" : "TCP6";
    return Buffer.from(
      `PROXY ${proto} ${ends.source} ${ends.destination} ${ends.sourcePort} ${ends.destinationPort}\r\n`,
      "ascii",
    );
  }
  if (!ends) {
    // Command LOCAL (0x20), family UNSPEC, no addresses.
    return Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
  }
  const addressBytes = ends.family === 4 ? 4 : 16;
  const body = Buffer.alloc(addressBytes * 2 + 4);
  writeAddress(body, 0, ends.source, ends.family);
  writeAddress(body, addressBytes, ends.destination, ends.family);
  body.writeUInt16BE(ends.sourcePort, addressBytes * 2);
  body.writeUInt16BE(ends.destinationPort, addressBytes * 2 + 2);
  const head = Buffer.alloc(4);
  head[0] = 0x21; // version 2, command PROXY
  head[1] = ends.family === 4 ? 0x11 : 0x21; // TCP over IPv4 / IPv6
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([V2_SIGNATURE, head, body]);
}

function writeAddress(target: Buffer, offset: number, address: string, family: 4 | 6): void {
  if (family === 4) {
    address.split(".").forEach((part, i) => {
      target[offset + i] = Number(part);
    });
    return;
  }
  // Expand "::" and write eight 16-bit groups.
  const [head = "", tail = ""] = address.split("::");
  const headGroups = head ? head.split(":") : [];
  const tailGroups = tail ? tail.split(":") : [];
  const groups = address.includes("::")
    ? [...headGroups, ...Array(8 - headGroups.length - tailGroups.length).fill("0"), ...tailGroups]
    : headGroups;
  groups.forEach((group: string, i: number) => {
    target.writeUInt16BE(Number.parseInt(group || "0", 16), offset + i * 2);
  });
}
