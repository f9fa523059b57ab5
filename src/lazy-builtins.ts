import type * as Crypto from "node:crypto";
import type * as Http from "node:http";
import { createRequire } from "node:module";
import type * as Tls from "node:tls";

/**
 * Built-in modules that only some tunnels use, loaded on first use: a plain TCP tunnel never
 * loads TLS, crypto or HTTP, which keeps about 1.2 MiB out of each process's resident memory.
 * `process.getBuiltinModule` (Node 20.16+) works in any module format, also in a bundle that
 * turned this file into CommonJS; older Node falls back to a `require` made here.
 */
function load(id: string): unknown {
  const node = process as { getBuiltinModule?: (id: string) => unknown };
  if (typeof node.getBuiltinModule === "function") return node.getBuiltinModule(id);
  return createRequire(import.meta.url)(id);
}

let tls: typeof Tls | undefined;
let crypto: typeof Crypto | undefined;
let http: typeof Http | undefined;

export function tlsModule(): typeof Tls {
  tls ??= load("node:tls") as typeof Tls;
  return tls;
}

export function cryptoModule(): typeof Crypto {
  crypto ??= load("node:crypto") as typeof Crypto;
  return crypto;
}

export function httpModule(): typeof Http {
  http ??= load("node:http") as typeof Http;
  return http;
}

/** A TLS socket, told without loading node:tls for `instanceof`: only TLSSocket is `encrypted`. */
export function isTlsSocket(socket: object): socket is Tls.TLSSocket {
  return (socket as { encrypted?: unknown }).encrypted === true;
}
