import { type ServiceOptions, UNRESOLVABLE_HOST_CHARS } from "../options.js";
import { CliError, ExitCode } from "./exit-codes.js";
import type { Settings } from "./settings.js";

/** Typed reads of merged settings; a bad value is a USAGE exit naming where it came from. */

export function getString(settings: Settings, name: string): string | undefined {
  const value = settings.values.get(name);
  return typeof value === "string" && value !== "" ? value : undefined;
}

export function getBoolean(settings: Settings, name: string): boolean {
  return settings.values.get(name) === true;
}

export function getList(settings: Settings, name: string): string[] {
  const value = settings.values.get(name);
  if (Array.isArray(value)) return value;
  return typeof value === "string" && value ? [value] : [];
}

export function where(settings: Settings, name: string): string {
  return settings.sources.get(name) ?? `--${name}`;
}

/** An integer in [min, max]; undefined when not set. */
export function getInteger(
  settings: Settings,
  name: string,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number | undefined {
  const text = getString(settings, name);
  if (text === undefined) return undefined;
  return parseInteger(text, where(settings, name), min, max);
}

export function parseInteger(text: string, source: string, min: number, max: number): number {
  const value = /^\s*\d+\s*$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
    throw new CliError(ExitCode.USAGE, `${source} must be an integer ${range}, got "${text}"`);
  }
  return value;
}

export interface HostPort {
  host: string | undefined;
  port: number;
}

/**
 * Splits `HOST:PORT`, `[IPV6]:PORT`, or a bare `PORT` (host undefined). A bare host (no port) is
 * accepted only when `defaultPort` is given.
 */
export function parseHostPort(text: string, source: string, defaultPort?: number): HostPort {
  const fail = (): never => {
    throw new CliError(
      ExitCode.USAGE,
      `${source} must be ${defaultPort === undefined ? "[HOST:]PORT" : "HOST[:PORT]"} (IPv6 in brackets: [::1]:9000), got "${text}"`,
    );
  };
  const trimmed = text.trim();
  let host: string | undefined;
  let portText: string | undefined;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(trimmed);
  if (bracketed) {
    host = bracketed[1];
    portText = bracketed[2];
  } else if (/^\d+$/.test(trimmed)) {
    portText = trimmed;
  } else {
    const colons = trimmed.split(":").length - 1;
    if (colons === 0) host = trimmed;
    else if (colons === 1) [host, portText] = trimmed.split(":") as [string, string];
    else host = trimmed; // a bare IPv6 address: no port can follow it unbracketed
  }
  // A stray bracket ("[::1"), a space or a slash make a host no lookup can find: said now, not
  // found out by retrying for ever.
  if (host === "" || (host !== undefined && UNRESOLVABLE_HOST_CHARS.test(host))) fail();
  if (portText === undefined) {
    if (defaultPort === undefined || host === undefined) return fail();
    return { host, port: defaultPort };
  }
  if (!/^\d+$/.test(portText)) fail();
  return { host, port: parseInteger(portText, source, 0, 65535) };
}

/** `HOST:PORT` with brackets around IPv6 literals, for messages and `tunnel up:` lines. */
export function formatHostPort(host: string, port: number): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/** `name=[HOST:]PORT[:REMOTE_PORT]` (the remote form needs the host) into a service. */
export function parseService(text: string, source: string): ServiceOptions {
  const fail = (why: string): never => {
    throw new CliError(
      ExitCode.USAGE,
      `${source}: "${text}" ${why}; expected name=HOST:PORT[:REMOTE_PORT], e.g. ssh=127.0.0.1:22:20022`,
    );
  };
  const eq = text.indexOf("=");
  if (eq <= 0) return fail("has no name");
  const name = text.slice(0, eq).trim();
  if (!/^[\w.-]+$/.test(name)) fail("has a name with characters other than letters, digits, . _ -");
  const target = text.slice(eq + 1).trim();
  let host: string | undefined;
  let rest: string[];
  const bracketed = /^\[([^\]]+)\]:(.+)$/.exec(target);
  if (bracketed) {
    host = bracketed[1];
    rest = bracketed[2]!.split(":");
  } else {
    const parts = target.split(":");
    if (parts.length === 1) rest = parts;
    else {
      host = parts[0];
      rest = parts.slice(1);
    }
    if (parts.length === 2 && /^\d+$/.test(parts[0]!)) {
      fail("is ambiguous (PORT:REMOTE_PORT or HOST:PORT?); write the host");
    }
  }
  if (host === "" || rest.length > 2 || rest.some((part) => !/^\d+$/.test(part))) {
    fail("is not valid");
  }
  const service: ServiceOptions = {
    name,
    localPort: parseInteger(rest[0]!, `${source} (${name} port)`, 1, 65535),
  };
  if (host !== undefined) service.localHost = host;
  if (rest[1] !== undefined) {
    service.remotePort = parseInteger(rest[1], `${source} (${name} remote port)`, 1, 65535);
  }
  return service;
}
