import { createHash, timingSafeEqual } from "node:crypto";
import type { ConnectionFilter } from "../options.js";
import { CliError, ExitCode, type ExitCodeValue } from "./exit-codes.js";
import { readTextFile } from "./settings.js";

/** Longest token looked at; anything longer is refused without hashing megabytes. */
const MAX_TOKEN_LENGTH = 4096;

/**
 * Tokens file format: one token per line; blank lines and lines starting with `#` are ignored;
 * surrounding whitespace is trimmed (a token itself cannot contain whitespace).
 */
export function parseTokens(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
}

export function readTokensFile(path: string): string[] {
  return checkTokens(
    parseTokens(readTextFile(path, "tokens file")),
    `tokens file ${path}`,
    ExitCode.FILE,
  );
}

/**
 * Refuses tokens no client could ever present (`accepts` looks at none longer than
 * MAX_TOKEN_LENGTH): a server started with one would refuse that client for ever, silently.
 */
export function checkTokens(tokens: string[], source: string, code: ExitCodeValue): string[] {
  for (const token of tokens) {
    if (/\s/.test(token) || token.length > MAX_TOKEN_LENGTH) {
      throw new CliError(
        code,
        `${source}: a token must be one word of at most ${MAX_TOKEN_LENGTH} characters`,
      );
    }
  }
  return tokens;
}

const digest = (value: string): Buffer => createHash("sha256").update(value, "utf8").digest();

/**
 * Accepts a client whose credentials are `{ "token": "<one of the tokens>" }`. Tokens are kept as
 * SHA-256 digests so every comparison is between equal-length buffers (`timingSafeEqual`), and
 * every token is compared, so the time taken tells nothing about which one nearly matched.
 * `replace()` swaps the list at run time (SIGHUP reload).
 */
export class TokenAuthenticator {
  private digests: Buffer[] = [];

  constructor(tokens: readonly string[]) {
    this.replace(tokens);
  }

  get size(): number {
    return this.digests.length;
  }

  replace(tokens: readonly string[]): void {
    this.digests = [...new Set(tokens)].map(digest);
  }

  accepts(token: unknown): boolean {
    if (typeof token !== "string" || token.length === 0 || token.length > MAX_TOKEN_LENGTH) {
      return false;
    }
    const presented = digest(token);
    let match = false;
    for (const candidate of this.digests) {
      if (timingSafeEqual(presented, candidate)) match = true;
    }
    return match;
  }

  readonly filter: ConnectionFilter = (credentials) => this.accepts(credentials.token);
}
