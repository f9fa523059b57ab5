/**
 * The CLI's flag paths that end before any tunnel: help, version, bad flags and values, missing
 * authentication, unreadable files. Each spawns the real command and checks its exit code.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { ExitCode } from "../../src/cli/exit-codes.js";
import { CERT_PATH, REPO_ROOT, runToExit, tempFiles } from "../helpers/cli.js";

const VERSION = JSON.parse(readFileSync(`${REPO_ROOT}/package.json`, "utf8")).version as string;

describe("help and version", { concurrency: 3 }, () => {
  test("--help lists both commands and the exit codes", async (t) => {
    const { code, stdout } = await runToExit(t, ["--help"]);
    assert.equal(code, ExitCode.OK);
    assert.match(stdout, /server/);
    assert.match(stdout, /client/);
    assert.match(stdout, /Exit codes/);
  });

  test("no command prints the usage on stderr and fails", async (t) => {
    const { code, stderr } = await runToExit(t, []);
    assert.equal(code, ExitCode.USAGE);
    assert.match(stderr, /Usage: w3p-tunnel/);
  });

  test("--version and -V print the package version", async (t) => {
    for (const flag of ["--version", "-V"]) {
      const { code, stdout } = await runToExit(t, [flag]);
      assert.equal(code, ExitCode.OK);
      assert.equal(stdout.trim(), VERSION);
    }
  });

  test("server --help and help server list the server flags with their env variables", async (t) => {
    for (const args of [
      ["server", "--help"],
      ["help", "server"],
      ["server", "-h"],
    ]) {
      const { code, stdout } = await runToExit(t, args);
      assert.equal(code, ExitCode.OK, args.join(" "));
      for (const flag of [
        "--port",
        "--tokens-file",
        "--allow-anyone",
        "--allowed-ports",
        "--metrics",
      ]) {
        assert.ok(stdout.includes(flag), `${args.join(" ")} mentions ${flag}`);
      }
      assert.match(stdout, /\[W3P_TOKENS_FILE\]/);
    }
  });

  test("client --help lists the client flags", async (t) => {
    const { code, stdout } = await runToExit(t, ["client", "--help"]);
    assert.equal(code, ExitCode.OK);
    for (const flag of [
      "--server",
      "--local",
      "--service",
      "--token",
      "--ca",
      "--proxy-protocol",
    ]) {
      assert.ok(stdout.includes(flag), flag);
    }
  });

  test("--help wins over every other flag and needs no valid settings", async (t) => {
    const { code } = await runToExit(t, ["server", "--port", "nope", "--help"]);
    assert.equal(code, ExitCode.OK);
  });
});

describe("bad flags and values exit 2", { concurrency: 3 }, () => {
  const cases: Array<[string, string[], RegExp]> = [
    ["an unknown command", ["serve"], /unknown command/],
    ["an unknown flag", ["server", "--bogus"], /--bogus/],
    ["a flag without its value", ["server", "--port"], /--port/],
    ["a boolean flag given a value", ["server", "--allow-anyone=yes"], /allow-anyone/],
    ["a port that is not a number", ["server", "--allow-anyone", "--port", "abc"], /--port/],
    ["a port out of range", ["server", "--allow-anyone", "--port", "70000"], /--port/],
    ["a negative limit", ["server", "--allow-anyone", "--max-clients", "-1"], /max-clients/],
    ["a zero max-clients", ["server", "--allow-anyone", "--max-clients", "0"], /max-clients/],
    ["bad allowed ports", ["server", "--allow-anyone", "--allowed-ports", "9-2"], /allowedPorts/],
    ["tls cert without key", ["server", "--allow-anyone", "--tls-cert", CERT_PATH], /tls-key/],
    ["client without --server", ["client", "--local", "3000"], /--server/],
    ["client with nothing to expose", ["client", "--server", "h:1"], /--local|--service/],
    [
      "client with both --local and --service",
      ["client", "-s", "h", "-l", "1", "--service", "a=h:2"],
      /either/,
    ],
    ["a service without a name", ["client", "-s", "h", "--service", "h:22"], /no name/],
    ["an ambiguous service", ["client", "-s", "h", "--service", "ssh=22:2022"], /ambiguous/],
    ["a service port out of range", ["client", "-s", "h", "--service", "w=h:0"], /port/],
    [
      "the same service twice",
      ["client", "-s", "h", "--service", "w=h:1", "--service", "w=h:2"],
      /twice/,
    ],
    [
      "proxy protocol 3",
      ["client", "-s", "h", "-l", "1", "--proxy-protocol", "3"],
      /proxy-protocol/,
    ],
    [
      "--remote-port with --service",
      ["client", "-s", "h", "--service", "w=h:1", "--remote-port", "5"],
      /remote-port/,
    ],
    [
      "--v1 with two services",
      ["client", "-s", "h", "--v1", "--service", "a=h:1", "--service", "b=h:2"],
      /--v1/,
    ],
    ["a bad metrics address", ["server", "--allow-anyone", "--metrics", "x:y:z"], /metrics/],
    ["a stray bracket in --server", ["client", "-s", "[::1", "-l", "1"], /--server/],
    [
      "a public host that is no address",
      ["server", "--allow-anyone", "--port", "0", "--public-host", "999.1.1.1"],
      /publicHost/,
    ],
  ];
  for (const [what, args, message] of cases) {
    test(what, async (t) => {
      const { code, stderr } = await runToExit(t, args);
      assert.equal(code, ExitCode.USAGE, stderr);
      assert.match(stderr, message);
      assert.doesNotMatch(stderr, /^\s+at /m, "a clear message, no stack trace");
    });
  }

  test("a bad value from an environment variable names the variable", async (t) => {
    const { code, stderr } = await runToExit(t, ["server", "--allow-anyone"], {
      W3P_PORT: "eighty",
    });
    assert.equal(code, ExitCode.USAGE);
    assert.match(stderr, /W3P_PORT/);
  });

  test("a W3P_TOKENS token no client could present is refused, as in a tokens file", async (t) => {
    const { code, stderr } = await runToExit(t, ["server", "--port", "0"], {
      W3P_TOKENS: `short,${"x".repeat(4097)}`,
    });
    assert.equal(code, ExitCode.USAGE);
    assert.match(stderr, /W3P_TOKENS: a token must be one word of at most 4096 characters/);
  });

  test("an unknown key in the JSON config is refused", async (t) => {
    const file = tempFiles(t)("config.json", JSON.stringify({ allowAnyone: true, prot: 1 }));
    const { code, stderr } = await runToExit(t, ["server", "--config", file]);
    assert.equal(code, ExitCode.USAGE);
    assert.match(stderr, /unknown key "prot"/);
  });
});

describe("authentication is required", { concurrency: 3 }, () => {
  test("a server with no tokens and no --allow-anyone refuses to start (exit 5)", async (t) => {
    const { code, stderr } = await runToExit(t, ["server", "--port", "0"]);
    assert.equal(code, ExitCode.NO_AUTH);
    assert.match(stderr, /--tokens-file/);
    assert.match(stderr, /--allow-anyone/);
  });

  test("an empty tokens file is no way to authenticate either", async (t) => {
    const file = tempFiles(t)("tokens", "# nobody yet\n\n");
    const { code } = await runToExit(t, ["server", "--port", "0", "--tokens-file", file]);
    assert.equal(code, ExitCode.NO_AUTH);
  });

  test("--allow-anyone with tokens is a contradiction", async (t) => {
    const { code, stderr } = await runToExit(t, ["server", "--allow-anyone"], { W3P_TOKENS: "a" });
    assert.equal(code, ExitCode.USAGE);
    assert.match(stderr, /W3P_TOKENS/);
  });
});

describe("unreadable or unusable files exit 3", { concurrency: 3 }, () => {
  test("a missing tokens file", async (t) => {
    const { code, stderr } = await runToExit(t, ["server", "--tokens-file", "/nonexistent/tokens"]);
    assert.equal(code, ExitCode.FILE);
    assert.match(stderr, /\/nonexistent\/tokens/);
  });

  test("a tokens file that is a directory", async (t) => {
    const { code } = await runToExit(t, ["server", "--tokens-file", REPO_ROOT]);
    assert.equal(code, ExitCode.FILE);
  });

  test("a missing config file, and one that is not JSON", async (t) => {
    const missing = await runToExit(t, ["server", "--config", "/nonexistent/w3p.json"]);
    assert.equal(missing.code, ExitCode.FILE);
    const file = tempFiles(t)("bad.json", "{ port: 1 ");
    const invalid = await runToExit(t, ["server", "--config", file]);
    assert.equal(invalid.code, ExitCode.FILE);
    assert.match(invalid.stderr, /not valid JSON/);
  });

  test("a TLS key that does not match the certificate", async (t) => {
    const key = tempFiles(t)(
      "bad.key",
      "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
    );
    const { code, stderr } = await runToExit(t, [
      "server",
      "--allow-anyone",
      "--tls-cert",
      CERT_PATH,
      "--tls-key",
      key,
    ]);
    assert.equal(code, ExitCode.FILE);
    assert.match(stderr, /TLS certificate/);
  });

  test("a missing CA file and a missing token file on the client", async (t) => {
    const ca = await runToExit(t, ["client", "-s", "h", "-l", "1", "--ca", "/nonexistent/ca.pem"]);
    assert.equal(ca.code, ExitCode.FILE);
    assert.match(ca.stderr, /CA file/);
    const token = await runToExit(t, [
      "client",
      "-s",
      "h",
      "-l",
      "1",
      "--token-file",
      "/nonexistent/t",
    ]);
    assert.equal(token.code, ExitCode.FILE);
  });
});
