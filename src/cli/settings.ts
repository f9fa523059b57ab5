import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import { type ParseArgsConfig, parseArgs } from "node:util";
import { CliError, ExitCode } from "./exit-codes.js";

/** One command-line flag; the same name is the key in the JSON config file. */
export interface FlagSpec {
  /** kebab-case name: `--max-clients`, config key `"max-clients"` (or `"maxClients"`). */
  name: string;
  type: "string" | "boolean";
  /** May be given several times (config: an array; environment: comma-separated). */
  multiple?: boolean;
  short?: string;
  /** Environment variable; default `W3P_` + the name in upper snake case; null = none. */
  env?: string | null;
  /** Placeholder shown in `--help`, e.g. `HOST:PORT`. */
  value?: string;
  help: string;
}

export type SettingValue = string | boolean | string[];

/** The merged settings of one command: flags win over environment variables over the config file. */
export interface Settings {
  values: Map<string, SettingValue>;
  /** Where each value came from, for error messages ("--port", "W3P_PORT", "config key port"). */
  sources: Map<string, string>;
  help: boolean;
}

export function envName(spec: FlagSpec): string | null {
  if (spec.env === null) return null;
  return spec.env ?? `W3P_${spec.name.toUpperCase().replace(/-/g, "_")}`;
}

/**
 * Parses `argv` strictly (unknown flags and missing values are usage errors), then fills what the
 * command line left out from the environment and from the JSON file named by `--config` /
 * `W3P_CONFIG`.
 */
export function resolveSettings(
  command: string,
  specs: readonly FlagSpec[],
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): Settings {
  const options: NonNullable<ParseArgsConfig["options"]> = {};
  for (const spec of specs) {
    options[spec.name] = {
      type: spec.type,
      ...(spec.multiple ? { multiple: true } : {}),
      ...(spec.short ? { short: spec.short } : {}),
    };
  }
  let parsed: Record<string, string | boolean | (string | boolean)[] | undefined>;
  try {
    parsed = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new CliError(
      ExitCode.USAGE,
      `${message}\nRun "w3p-tunnel ${command} --help" for the flags.`,
      {
        cause: err,
      },
    );
  }
  const values = new Map<string, SettingValue>();
  const sources = new Map<string, string>();
  for (const spec of specs) {
    const value = parsed[spec.name];
    if (value === undefined) continue;
    values.set(spec.name, Array.isArray(value) ? value.map(String) : value);
    sources.set(spec.name, `--${spec.name}`);
  }
  if (values.get("help") === true) return { values, sources, help: true };

  for (const spec of specs) {
    const name = envName(spec);
    if (values.has(spec.name) || !name) continue;
    const raw = env[name];
    if (raw === undefined || raw === "") continue;
    values.set(spec.name, fromText(spec, raw, name));
    sources.set(spec.name, name);
  }

  const configPath = values.get("config");
  if (typeof configPath === "string" && configPath) {
    const config = readConfigFile(configPath);
    const byKey = new Map<string, FlagSpec>();
    for (const spec of specs) {
      byKey.set(spec.name, spec);
      byKey.set(camelCase(spec.name), spec);
    }
    for (const [key, raw] of Object.entries(config)) {
      const spec = byKey.get(key);
      if (!spec || spec.name === "config" || spec.name === "help") {
        throw new CliError(
          ExitCode.USAGE,
          `config file ${configPath}: unknown key "${key}" for "w3p-tunnel ${command}"`,
        );
      }
      if (values.has(spec.name)) continue;
      values.set(spec.name, fromJson(spec, raw, `config key "${key}" in ${configPath}`));
      sources.set(spec.name, `config key "${key}"`);
    }
  }
  return { values, sources, help: false };
}

function fromText(spec: FlagSpec, raw: string, where: string): SettingValue {
  if (spec.type === "boolean") return parseBoolean(raw, where);
  if (spec.multiple) {
    return raw
      .split(/[,\s]+/)
      .map((part) => part.trim())
      .filter(Boolean);
  }
  return raw;
}

function fromJson(spec: FlagSpec, raw: unknown, where: string): SettingValue {
  if (spec.type === "boolean") {
    if (typeof raw === "boolean") return raw;
    if (typeof raw === "string") return parseBoolean(raw, where);
    throw new CliError(ExitCode.USAGE, `${where} must be true or false`);
  }
  const scalar = (item: unknown): string => {
    if (typeof item === "string") return item;
    if (typeof item === "number" && Number.isFinite(item)) return String(item);
    throw new CliError(ExitCode.USAGE, `${where} must be a string or a number`);
  };
  if (spec.multiple) return (Array.isArray(raw) ? raw : [raw]).map(scalar);
  return scalar(raw);
}

function parseBoolean(raw: string, where: string): boolean {
  const text = raw.trim().toLowerCase();
  if (["1", "true", "yes", "on"].includes(text)) return true;
  if (["0", "false", "no", "off"].includes(text)) return false;
  throw new CliError(ExitCode.USAGE, `${where} must be true or false, got "${raw}"`);
}

function camelCase(name: string): string {
  return name.replace(/-([a-z])/g, (_, letter: string) => letter.toUpperCase());
}

function readConfigFile(path: string): Record<string, unknown> {
  const text = readTextFile(path, "config file");
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new CliError(
      ExitCode.FILE,
      `config file ${path} is not valid JSON: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new CliError(ExitCode.FILE, `config file ${path} must hold a JSON object`);
  }
  return parsed as Record<string, unknown>;
}

/** Largest config, tokens or token file (1 MiB): a bigger one is refused, not read to the end. */
export const MAX_SETTINGS_FILE_BYTES = 1024 * 1024;
/** Largest TLS certificate, key or CA file (16 MiB). */
export const MAX_PEM_FILE_BYTES = 16 * 1024 * 1024;
/** Longest wait for a pipe or device (e.g. a process substitution `<(...)`) to reach its end. */
const PIPE_DEADLINE_MS = 5000;
const CHUNK_BYTES = 64 * 1024;

/** Reads a whole file as UTF-8; any failure is a FILE exit with the path and the system reason. */
export function readTextFile(path: string, what: string, limit = MAX_SETTINGS_FILE_BYTES): string {
  return readFileBytes(path, what, limit).toString("utf8");
}

/**
 * Reads a whole file, at most `limit` bytes: a bigger file, an endless device (`/dev/zero`), a FIFO
 * with no writer or a pipe that never ends is a FILE exit naming the path, never a hang or an
 * unbounded allocation. The file is opened non-blocking (opening a FIFO would otherwise wait for a
 * writer); a pipe or device is read until its end for at most PIPE_DEADLINE_MS.
 */
export function readFileBytes(path: string, what: string, limit = MAX_SETTINGS_FILE_BYTES): Buffer {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch (err) {
    throw fileError(err, path, what);
  }
  try {
    return readBounded(fd, path, what, limit);
  } catch (err) {
    throw err instanceof CliError ? err : fileError(err, path, what);
  } finally {
    closeSync(fd);
  }
}

function readBounded(fd: number, path: string, what: string, limit: number): Buffer {
  const stat = fstatSync(fd);
  if (stat.isDirectory()) {
    throw new CliError(ExitCode.FILE, `cannot read ${what} ${path}: is a directory`);
  }
  const tooLarge = () =>
    new CliError(
      ExitCode.FILE,
      `${what} ${path} is larger than ${formatBytes(limit)} (the limit for this file)`,
    );
  if (stat.isFile() && stat.size > limit) throw tooLarge();
  const chunks: Buffer[] = [];
  let total = 0;
  const deadline = performance.now() + PIPE_DEADLINE_MS;
  for (;;) {
    // Never more than limit + 1 bytes in all: one byte past the limit is enough to refuse.
    const chunk = Buffer.allocUnsafe(Math.min(CHUNK_BYTES, limit + 1 - total));
    let count: number;
    try {
      count = readSync(fd, chunk, 0, chunk.length, null);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "EAGAIN" && code !== "EWOULDBLOCK") throw err;
      if (performance.now() >= deadline) {
        throw new CliError(
          ExitCode.FILE,
          `cannot read ${what} ${path}: still no end after ${PIPE_DEADLINE_MS / 1000} s (a pipe or device that does not end)`,
        );
      }
      sleep(10);
      continue;
    }
    if (count === 0) break;
    chunks.push(chunk.subarray(0, count));
    total += count;
    if (total > limit) throw tooLarge();
  }
  if (total === 0 && stat.isFIFO()) {
    throw new CliError(
      ExitCode.FILE,
      `cannot read ${what} ${path}: a FIFO or pipe with no writer (nothing to read)`,
    );
  }
  return Buffer.concat(chunks, total);
}

function fileError(err: unknown, path: string, what: string): CliError {
  const code = (err as NodeJS.ErrnoException).code ?? "";
  const reason =
    code === "ENOENT"
      ? "no such file"
      : code === "EACCES" || code === "EPERM"
        ? "permission denied"
        : code === "EISDIR"
          ? "is a directory"
          : (err as Error).message;
  return new CliError(ExitCode.FILE, `cannot read ${what} ${path}: ${reason}`, { cause: err });
}

function formatBytes(bytes: number): string {
  return bytes % (1024 * 1024) === 0 ? `${bytes / (1024 * 1024)} MiB` : `${bytes} bytes`;
}

/** Blocks the thread for `ms` (the reads around it are synchronous by design). */
function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
