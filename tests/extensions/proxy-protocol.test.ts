/**
 * PROXY protocol toward the local service (client option `proxyProtocol: 1 | 2`). The local
 * service here parses the header with its own small parser, written from the HAProxy PROXY
 * protocol specification, and checks it names the real visitor.
 */
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { type TestContext, test } from "node:test";
import { buildProxyHeader } from "../../src/client/proxy-header.js";
import type { StreamMeta } from "../../src/mux/stream-meta.js";
import {
  connect,
  type LocalService,
  pseudoRandomBytes,
  readBytes,
  sha256,
  startService,
  startTunnel,
} from "../helpers/net.js";
import { documentedVectors } from "../helpers/v1-peer.js";

const V2_SIGNATURE = Buffer.from("0d0a0d0a000d0a515549540a", "hex");

interface ProxyHeader {
  version: 1 | 2;
  /** "PROXY" (a relayed connection) or "LOCAL" / "UNKNOWN" (no address information). */
  command: string;
  family?: "TCP4" | "TCP6";
  source?: string;
  destination?: string;
  sourcePort?: number;
  destinationPort?: number;
}

/** Canonical text of an IPv6 address (what `net` reports), from any valid spelling. */
function canonicalIPv6(address: string): string {
  return new URL(`http://[${address}]/`).hostname.slice(1, -1);
}

/**
 * Parses one PROXY header at the start of `buffer`. Returns null when more bytes are needed,
 * else the header and how many bytes it used.
 */
function parseProxyHeader(buffer: Buffer): { header: ProxyHeader; length: number } | null {
  if (buffer.length >= 16 && buffer.subarray(0, 12).equals(V2_SIGNATURE)) {
    const versionCommand = buffer[12]!;
    const familyTransport = buffer[13]!;
    const length = 16 + buffer.readUInt16BE(14);
    if (buffer.length < length) return null;
    assert.equal(versionCommand >> 4, 2, "v2 header version nibble");
    const command = (versionCommand & 0x0f) === 1 ? "PROXY" : "LOCAL";
    if (command === "LOCAL") return { header: { version: 2, command }, length };
    assert.equal(familyTransport & 0x0f, 1, "transport is STREAM");
    const body = buffer.subarray(16, length);
    if (familyTransport >> 4 === 1) {
      const ip = (at: number) => [...body.subarray(at, at + 4)].join(".");
      return {
        header: {
          version: 2,
          command,
          family: "TCP4",
          source: ip(0),
          destination: ip(4),
          sourcePort: body.readUInt16BE(8),
          destinationPort: body.readUInt16BE(10),
        },
        length,
      };
    }
    assert.equal(familyTransport >> 4, 2, "family is INET6");
    const ip = (at: number) => {
      const groups: string[] = [];
      for (let i = 0; i < 8; i++) groups.push(body.readUInt16BE(at + i * 2).toString(16));
      return canonicalIPv6(groups.join(":"));
    };
    return {
      header: {
        version: 2,
        command,
        family: "TCP6",
        source: ip(0),
        destination: ip(16),
        sourcePort: body.readUInt16BE(32),
        destinationPort: body.readUInt16BE(34),
      },
      length,
    };
  }
  if (buffer.length < 8) return null;
  assert.equal(buffer.subarray(0, 6).toString("latin1"), "PROXY ", "v1 header prefix");
  const end = buffer.indexOf("\r\n");
  if (end < 0) {
    assert.ok(buffer.length < 107, "a v1 header is at most 107 bytes");
    return null;
  }
  const parts = buffer.subarray(0, end).toString("latin1").split(" ");
  const length = end + 2;
  if (parts[1] === "UNKNOWN") return { header: { version: 1, command: "UNKNOWN" }, length };
  assert.equal(parts.length, 6, "PROXY TCPx src dst sport dport");
  const family = parts[1] as "TCP4" | "TCP6";
  const address = (text: string) => (family === "TCP6" ? canonicalIPv6(text) : text);
  return {
    header: {
      version: 1,
      command: "PROXY",
      family,
      source: address(parts[2]!),
      destination: address(parts[3]!),
      sourcePort: Number(parts[4]),
      destinationPort: Number(parts[5]),
    },
    length,
  };
}

/** A service that parses the PROXY header, then echoes the payload that follows it. */
async function proxyAwareEcho(t: TestContext): Promise<LocalService & { headers: ProxyHeader[] }> {
  const headers: ProxyHeader[] = [];
  const service = await startService(t, (socket: Socket) => {
    let buffered = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      const parsed = parseProxyHeader(buffered);
      if (!parsed) return;
      socket.off("data", onData);
      headers.push(parsed.header);
      const rest = buffered.subarray(parsed.length);
      if (rest.length > 0) socket.write(rest);
      socket.pipe(socket);
    };
    socket.on("data", onData);
  });
  return Object.assign(service, { headers });
}

for (const version of [1, 2] as const) {
  test(`PROXY v${version}: IPv4 and IPv6 visitors are named, then the payload follows intact`, async (t) => {
    const service = await proxyAwareEcho(t);
    const { publicPort } = await startTunnel(t, service.port, {}, { proxyProtocol: version });
    for (const [host, family] of [
      ["127.0.0.1", "TCP4"],
      ["::1", "TCP6"],
    ] as const) {
      const visitor = await connect(t, publicPort, host);
      const payload = pseudoRandomBytes(200_000, version * 10 + family.length);
      const echoed = readBytes(visitor, payload.length);
      visitor.write(payload);
      assert.equal(sha256(await echoed), sha256(payload), `${host} payload`);
      const header = service.headers.at(-1)!;
      assert.deepEqual(header, {
        version,
        command: "PROXY",
        family,
        source: visitor.localAddress,
        destination: host,
        sourcePort: visitor.localPort,
        destinationPort: publicPort,
      });
      visitor.destroy();
    }
    assert.equal(service.headers.length, 2);
  });
}

test("PROXY header behind a server without `open`: UNKNOWN (v1) and LOCAL (v2)", async (t) => {
  for (const version of [1, 2] as const) {
    const service = await proxyAwareEcho(t);
    const { publicPort } = await startTunnel(
      t,
      service.port,
      { extensions: false },
      { proxyProtocol: version },
    );
    const visitor = await connect(t, publicPort);
    visitor.write("after the header");
    assert.equal((await readBytes(visitor, 16)).toString(), "after the header");
    assert.deepEqual(service.headers.at(-1), {
      version,
      command: version === 1 ? "UNKNOWN" : "LOCAL",
    });
  }
});

test("PROTOCOL.md PROXY vectors parse as documented and match what the client writes", () => {
  const vectors = documentedVectors();
  const v4: StreamMeta = {
    family: "IPv4",
    address: "203.0.113.7",
    port: 51234,
    publicPort: 41199,
    localAddress: "198.51.100.1",
  };
  const v6: StreamMeta = {
    ...v4,
    family: "IPv6",
    address: "2001:db8::7",
    localAddress: "2001:db8::1",
  };
  const cases: Array<[string, 1 | 2, StreamMeta | null, ProxyHeader]> = [];
  for (const version of [1, 2] as const) {
    for (const [meta, family] of [
      [v4, "TCP4"],
      [v6, "TCP6"],
    ] as const) {
      cases.push([
        `proxy-v${version}-${family.toLowerCase()}`,
        version,
        meta,
        {
          version,
          command: "PROXY",
          family,
          source: meta.address,
          destination: meta.localAddress!,
          sourcePort: 51234,
          destinationPort: 41199,
        },
      ]);
    }
  }
  cases.push(["proxy-v1-unknown", 1, null, { version: 1, command: "UNKNOWN" }]);
  cases.push(["proxy-v2-local", 2, null, { version: 2, command: "LOCAL" }]);
  for (const [name, version, meta, expected] of cases) {
    const bytes = vectors.get(name);
    assert.ok(bytes, `PROTOCOL.md documents ${name}`);
    const parsed = parseProxyHeader(bytes);
    assert.ok(parsed, name);
    assert.equal(parsed.length, bytes.length, `${name}: the whole vector is one header`);
    assert.deepEqual(parsed.header, expected, name);
    assert.deepEqual(buildProxyHeader(version, meta), bytes, name);
  }
});

test("PROXY headers from odd visitor addresses: zones dropped, IPv4 tails expanded, junk refused", () => {
  const base: StreamMeta = { family: "IPv6", address: "", port: 5000, publicPort: 6000 };
  const v2Source = (address: string) => {
    const header = parseProxyHeader(buildProxyHeader(2, { ...base, address }))!.header;
    return header.command === "PROXY" ? header.source : header.command;
  };
  const v1Line = (address: string) =>
    buildProxyHeader(1, { ...base, address })
      .toString("latin1")
      .trim();
  // A zone has no place in either header; `net.isIP` accepts zones with colons in them.
  assert.equal(v2Source("fe80::1%eth0"), canonicalIPv6("fe80::1"));
  assert.equal(v2Source("fe80::1%a:b:c:d:e:f:1:2:3"), canonicalIPv6("fe80::1"));
  assert.equal(v1Line("fe80::1%a:b:c:d:e:f:1:2:3"), "PROXY TCP6 fe80::1 :: 5000 6000");
  assert.equal(v2Source("1:2:3:4:5:6:7:8%a:b:c"), canonicalIPv6("1:2:3:4:5:6:7:8"));
  // A dotted IPv4 tail is two groups, not one hex group.
  assert.equal(v2Source("64:ff9b::192.0.2.33"), canonicalIPv6("64:ff9b::c000:221"));
  assert.equal(v2Source("::ffff:192.0.2.33"), "192.0.2.33");
  // Anything that is not an address gives an address-less header, never a throw.
  for (const junk of ["not an address", "1:2:3:4:5:6:7:8:9", "%eth0", "::1::2", ""]) {
    assert.equal(v2Source(junk), "LOCAL", junk);
    assert.equal(v1Line(junk), "PROXY UNKNOWN", junk);
  }
});
