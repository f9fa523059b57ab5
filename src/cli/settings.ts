import { readFileSync } from "node:fs";
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

/** Reads a whole file as UTF-8; any failure is a FILE exit with the path and the system reason. */
export function readTextFile(path: string, what: string): string {
  return readFileBytes(path, what).toString("utf8");
}

export function readFileBytes(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    const reason =
      code === "ENOENT"
        ? "no such file"
        : code === "EACCES" || code === "EPERM"
          ? "permission denied"
          : code === "EISDIR"
            ? "is a directory"
            : (err as Error).message;
    throw new CliError(ExitCode.FILE, `cannot read ${what} ${path}: ${reason}`, { cause: err });
  }
}
