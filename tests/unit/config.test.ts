// Unit tests of the settings: shell-syntax parsing, precedence, defaults and validation.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, configFileChoice, loadSettings, parseShellConfig, resolveSettings } from "../../lib/config.ts";

const noEnv = () => undefined;

describe("parseShellConfig", () => {
  test("reads the old script's syntax: export, quotes, comments, expansion of keys above", () => {
    const text = [
      "# bin-proxy config",
      'export BIN_MANAGER_API="http://bm.example:8080/api/v1"',
      "BIN_DIR=/opt/bin   # trailing comment",
      "LOG_FILE='/var/log/$literal.log'",
      'DOWNLOAD_BASE_URL="${BIN_MANAGER_API}/download"',
      "LOCK_DIR=$HOME/locks",
      'NODE_NAME="web \\"one\\""',
      "HTTP_TIMEOUT=${UNSET_KEY:-45}",
      "if [ -f /x ]; then echo hi; fi",
      "",
    ].join("\n");
    const values = parseShellConfig(text, (k) => (k === "HOME" ? "/root" : undefined));
    expect(values.get("BIN_MANAGER_API")).toBe("http://bm.example:8080/api/v1");
    expect(values.get("BIN_DIR")).toBe("/opt/bin");
    expect(values.get("LOG_FILE")).toBe("/var/log/$literal.log");
    expect(values.get("DOWNLOAD_BASE_URL")).toBe("http://bm.example:8080/api/v1/download");
    expect(values.get("LOCK_DIR")).toBe("/root/locks");
    expect(values.get("NODE_NAME")).toBe('web "one"');
    expect(values.get("HTTP_TIMEOUT")).toBe("45");
    expect(values.size).toBe(7);
  });

  test("command substitution in a setting is an error naming the key and line", () => {
    expect(() => parseShellConfig("\nNODE_NAME=$(hostname)\n", noEnv)).toThrow(/config line 2: NODE_NAME/);
    expect(() => parseShellConfig("NODE_NAME=`hostname`", noEnv)).toThrow(ConfigError);
  });

  test("unsupported syntax in a key bin-proxy does not use is ignored", () => {
    expect(parseShellConfig("OTHER=$(date)\nBIN_DIR=/b", noEnv).get("BIN_DIR")).toBe("/b");
  });

  test("unterminated quotes are errors", () => {
    expect(() => parseShellConfig('BIN_DIR="/opt', noEnv)).toThrow(/unterminated double quote/);
  });
});

describe("resolveSettings", () => {
  const from = (values: Record<string, string>) => (key: string) => values[key];

  test("defaults match SPEC §3", () => {
    const s = resolveSettings(from({ SUPERVISORCTL: "", NODE_NAME: "n1" }));
    expect(s).toMatchObject({
      api: "http://localhost:8080/api/v1",
      binDir: "/usr/local/bin",
      manifest: "/etc/bin-proxy/bin-manifests.json",
      logFile: "/var/log/bin-proxy.log",
      lockDir: "/var/run/bin-proxy",
      downloadBaseUrl: "http://localhost:8080/api/v1/download",
      token: undefined,
      stateDir: "/var/lib/bin-proxy",
      lockTimeoutSec: 600,
      splaySec: 0,
      supervisorctl: null,
      nodeName: "n1",
      httpTimeoutMs: 30_000,
      maxDownloadBytes: 4294967296,
      retryBackoffSec: 600,
    });
  });

  test.each([
    ["LOCK_TIMEOUT", "ten"],
    ["LOCK_TIMEOUT", "0"],
    ["HTTP_TIMEOUT", "-1"],
    ["MAX_DOWNLOAD_BYTES", "1e9"],
    ["BIN_DIR", "relative/bin"],
    ["BIN_MANAGER_API", "ftp://x"],
    ["BIN_MANAGER_API", "http://user:pw@x/api"],
    ["SUPERVISORCTL", "/nonexistent/supervisorctl"],
    ["NODE_NAME", "has space"],
  ])("%s=%s is rejected with a message naming the key", (key, value) => {
    expect(() => resolveSettings(from({ SUPERVISORCTL: "", [key]: value }))).toThrow(new RegExp(key));
  });

  test("a trailing slash on the API URL is dropped", () => {
    expect(resolveSettings(from({ SUPERVISORCTL: "", BIN_MANAGER_API: "http://h/api/v1/" })).api).toBe("http://h/api/v1");
  });
});

describe("loadSettings precedence", () => {
  const dir = mkdtempSync(join(tmpdir(), "bin-proxy-config-"));
  const file = join(dir, "config");
  writeFileSync(file, 'BIN_DIR="/from/file"\nLOCK_DIR=/file/locks\nSUPERVISORCTL=""\n');

  test("environment over file over defaults", () => {
    const s = loadSettings({ configFlag: file, env: { BIN_DIR: "/from/env" } });
    expect(s.binDir).toBe("/from/env");
    expect(s.lockDir).toBe("/file/locks");
    expect(s.logFile).toBe("/var/log/bin-proxy.log");
  });

  test("a missing --config FILE or BIN_PROXY_CONFIG is an error; a missing default is not", () => {
    expect(() => loadSettings({ configFlag: join(dir, "nope"), env: {} })).toThrow(/cannot read config file/);
    expect(() => loadSettings({ configFlag: undefined, env: { BIN_PROXY_CONFIG: join(dir, "nope") } })).toThrow(ConfigError);
    expect(configFileChoice({ configFlag: undefined, env: {} })).toEqual({ path: "/etc/bin-proxy/config", required: false });
  });
});
