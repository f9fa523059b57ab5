import { isIP } from "node:net";
import type { StreamMeta } from "../mux/stream-meta.js";

/** The 12-byte signature that starts every PROXY protocol v2 header. */
const V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);

/** An address as PROXY headers carry it: text for v1, 4 bytes or 8 groups of 16 bits for v2. */
interface Address {
  family: 4 | 6;
  text: string;
  /** The four bytes (IPv4) or eight 16-bit groups (IPv6). */
  parts: number[];
}

/**
 * The address as PROXY headers carry it, or null if it cannot be carried. `::ffff:1.2.3.4` (how
 * a dual-stack listener reports IPv4 peers) is IPv4. An IPv6 zone (`fe80::1%eth0`) has no place
 * in either header version and is dropped; `net.isIP` accepts zones with almost any characters,
 * so what remains must still be a plain IPv6 address.
 */
function normalize(address: string | undefined): Address | null {
  if (!address) return null;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  const v4 = mapped ? mapped[1]! : address;
  if (isIP(v4) === 4) return { family: 4, text: v4, parts: v4.split(".").map(Number) };
  const unzoned = address.split("%", 1)[0]!;
  const groups = ipv6Groups(unzoned);
  return groups ? { family: 6, text: unzoned, parts: groups } : null;
}

/** The eight 16-bit groups of an IPv6 address (dotted IPv4 tail included), or null if invalid. */
function ipv6Groups(address: string): number[] | null {
  if (isIP(address) !== 6 || address.includes("%")) return null;
  let text = address;
  const dotted = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted[2]!.split(".").map(Number) as [number, number, number, number];
    text = `${dotted[1]}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const parse = (part: string) => (part === "" ? [] : part.split(":"));
  const head = parse(halves[0]!);
  const tail = halves.length === 2 ? parse(halves[1]!) : [];
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const groups = [...head, ...Array<string>(missing).fill("0"), ...tail];
  if (!groups.every((group) => /^[0-9a-f]{1,4}$/i.test(group))) return null;
  return groups.map((group) => Number.parseInt(group, 16));
}

interface Endpoints {
  family: 4 | 6;
  source: Address;
  destination: Address;
  sourcePort: number;
  destinationPort: number;
}

const ANY_V4: Address = { family: 4, text: "0.0.0.0", parts: [0, 0, 0, 0] };
const ANY_V6: Address = { family: 6, text: "::", parts: [0, 0, 0, 0, 0, 0, 0, 0] };

function endpoints(meta: StreamMeta | null): Endpoints | null {
  if (!meta) return null;
  const source = normalize(meta.address);
  if (!source) return null;
  let destination = normalize(meta.localAddress);
  if (destination?.family !== source.family) destination = source.family === 4 ? ANY_V4 : ANY_V6;
  return {
    family: source.family,
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
      `PROXY ${proto} ${ends.source.text} ${ends.destination.text} ${ends.sourcePort} ${ends.destinationPort}\r\n`,
      "ascii",
    );
  }
  if (!ends) {
    // Command LOCAL (0x20), family UNSPEC, no addresses.
    return Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
  }
  const addressBytes = ends.family === 4 ? 4 : 16;
  const body = Buffer.alloc(addressBytes * 2 + 4);
  writeAddress(body, 0, ends.source);
  writeAddress(body, addressBytes, ends.destination);
  body.writeUInt16BE(ends.sourcePort, addressBytes * 2);
  body.writeUInt16BE(ends.destinationPort, addressBytes * 2 + 2);
  const head = Buffer.alloc(4);
  head[0] = 0x21; // version 2, command PROXY
  head[1] = ends.family === 4 ? 0x11 : 0x21; // TCP over IPv4 / IPv6
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([V2_SIGNATURE, head, body]);
}

function writeAddress(target: Buffer, offset: number, address: Address): void {
  address.parts.forEach((part, i) => {
    if (address.family === 4) target[offset + i] = part;
    else target.writeUInt16BE(part, offset + i * 2);
  });
}
