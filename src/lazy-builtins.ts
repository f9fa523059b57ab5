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
let fallbackRequire: NodeJS.Require | undefined;

function load(id: string): unknown {
  const node = process as { getBuiltinModule?: (id: string) => unknown };
  if (typeof node.getBuiltinModule === "function") return node.getBuiltinModule(id);
  fallbackRequire ??= createRequire(import.meta.url);
  return fallbackRequire(id);
}

// Node keeps each built-in module once: every call after the first returns the same object.
export const tlsModule = (): typeof Tls => load("node:tls") as typeof Tls;
export const cryptoModule = (): typeof Crypto => load("node:crypto") as typeof Crypto;
export const httpModule = (): typeof Http => load("node:http") as typeof Http;

/** A TLS socket, told without loading node:tls for `instanceof`: only TLSSocket is `encrypted`. */
export function isTlsSocket(socket: object): socket is Tls.TLSSocket {
  return (socket as { encrypted?: unknown }).encrypted === true;
}
