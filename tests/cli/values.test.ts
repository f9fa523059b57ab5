/** Parsing of addresses, services and tokens, without spawning the CLI. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ExitCode } from "../../src/cli/exit-codes.js";
import { CLIENT_FLAGS, CLIENT_LIMITS, SERVER_FLAGS, SERVER_LIMITS } from "../../src/cli/flags.js";
import { applyLimits } from "../../src/cli/runtime.js";
import { resolveSettings } from "../../src/cli/settings.js";
import { parseTokens, TokenAuthenticator } from "../../src/cli/tokens.js";
import { formatHostPort, parseHostPort, parseService } from "../../src/cli/values.js";

const usage = { exitCode: ExitCode.USAGE };

describe("parseHostPort", () => {
  test("host:port, bare port, bracketed IPv6, default port", () => {
    assert.deepEqual(parseHostPort("example.com:9000", "x"), { host: "example.com", port: 9000 });
    assert.deepEqual(parseHostPort("3000", "x"), { host: undefined, port: 3000 });
    assert.deepEqual(parseHostPort("[::1]:22", "x"), { host: "::1", port: 22 });
    assert.deepEqual(parseHostPort("example.com", "x", 9000), { host: "example.com", port: 9000 });
    assert.deepEqual(parseHostPort("::1", "x", 9000), { host: "::1", port: 9000 });
    assert.deepEqual(parseHostPort("[::1]", "x", 9000), { host: "::1", port: 9000 });
  });

  test("refuses what it cannot read", () => {
    for (const bad of ["example.com", "host:abc", "host:70000", ":80", "a:b:c"]) {
      assert.throws(() => parseHostPort(bad, "--local"), usage, bad);
    }
    for (const bad of ["[::1", "::1]", "[::1]]:9000", "exa mple.com", "host/path:80"]) {
      assert.throws(() => parseHostPort(bad, "--server", 9000), usage, bad);
    }
  });

  test("formatHostPort brackets IPv6", () => {
    assert.equal(formatHostPort("::1", 80), "[::1]:80");
    assert.equal(formatHostPort("example.com", 80), "example.com:80");
  });
});

describe("parseService", () => {
  test("name=host:port, with a remote port, IPv6, bare port", () => {
    assert.deepEqual(parseService("web=127.0.0.1:80", "s"), {
      name: "web",
      localHost: "127.0.0.1",
      localPort: 80,
    });
    assert.deepEqual(parseService("ssh=localhost:22:20022", "s"), {
      name: "ssh",
      localHost: "localhost",
      localPort: 22,
      remotePort: 20022,
    });
    assert.deepEqual(parseService("db=[::1]:5432:25432", "s"), {
      name: "db",
      localHost: "::1",
      localPort: 5432,
      remotePort: 25432,
    });
    assert.deepEqual(parseService("ssh=22", "s"), { name: "ssh", localPort: 22 });
  });

  test("refuses bad names, ambiguous and malformed targets", () => {
    for (const bad of ["=h:1", "a b=h:1", "ssh=22:2022", "w=h:1:2:3", "w=h:x", "w=:1", "w=h:0"]) {
      assert.throws(() => parseService(bad, "--service"), usage, bad);
    }
  });
});

describe("tokens", () => {
  test("file format: one per line, comments and blanks ignored, whitespace trimmed", () => {
    assert.deepEqual(parseTokens("# c\n a \r\n\nb\n#d\n"), ["a", "b"]);
  });

  test("the authenticator accepts listed tokens only, whatever the credentials hold", () => {
    const auth = new TokenAuthenticator(["alpha", "beta", "alpha"]);
    assert.equal(auth.size, 2);
    const context = { remoteAddress: "127.0.0.1", remotePort: 1 };
    assert.equal(auth.filter({ token: "beta" }, context), true);
    for (const credentials of [
      { token: "gamma" },
      { token: "bet" },
      { token: "" },
      { token: 42 },
      { token: ["beta"] },
      { id: "beta" },
      { token: "x".repeat(10_000) },
    ]) {
      assert.equal(
        auth.filter(credentials, context),
        false,
        JSON.stringify(credentials).slice(0, 40),
      );
    }
    auth.replace(["gamma"]);
    assert.equal(auth.filter({ token: "gamma" }, context), true);
    assert.equal(auth.filter({ token: "beta" }, context), false);
  });
});

describe("--reset-on-abort", () => {
  // The behaviour itself (a reset, not a FIN) is tested on real sockets in
  // tests/faults/reset-on-abort.test.ts; here, that the flag, its variable and its config key
  // reach the library option, for both commands.
  const cases = [
    ["server", SERVER_FLAGS, SERVER_LIMITS],
    ["client", CLIENT_FLAGS, CLIENT_LIMITS],
  ] as const;
  for (const [command, flags, limits] of cases) {
    test(`${command}: flag and W3P_RESET_ON_ABORT set resetOnAbort; absent, it stays unset`, () => {
      const optionsFor = (argv: string[], env: NodeJS.ProcessEnv = {}) => {
        const options: Record<string, unknown> = {};
        applyLimits(resolveSettings(command, flags, argv, env), limits, options);
        return options.resetOnAbort;
      };
      assert.equal(optionsFor(["--reset-on-abort"]), true);
      assert.equal(optionsFor([], { W3P_RESET_ON_ABORT: "1" }), true);
      assert.equal(optionsFor([]), undefined);
    });
  }
});
