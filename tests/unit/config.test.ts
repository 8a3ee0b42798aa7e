// Unit tests of the settings: shell-syntax parsing, precedence, defaults and validation.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chmodSync } from "node:fs";
import { ConfigError, configFileChoice, likelySetting, loadSettings, parseShellConfig, resolveSettings } from "../../lib/config.ts";
import { jsonErrorPosition } from "../../lib/jsonpos.ts";

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
    const { values, warnings } = parseShellConfig(text, (k) => (k === "HOME" ? "/root" : undefined));
    expect(values.get("BIN_MANAGER_API")).toBe("http://bm.example:8080/api/v1");
    expect(values.get("BIN_DIR")).toBe("/opt/bin");
    expect(values.get("LOG_FILE")).toBe("/var/log/$literal.log");
    expect(values.get("DOWNLOAD_BASE_URL")).toBe("http://bm.example:8080/api/v1/download");
    expect(values.get("LOCK_DIR")).toBe("/root/locks");
    expect(values.get("NODE_NAME")).toBe('web "one"');
    expect(values.get("HTTP_TIMEOUT")).toBe("45");
    expect(values.size).toBe(7);
    expect(warnings).toEqual([]);
  });

  test("command substitution in a setting is an error naming the key and line", () => {
    expect(() => parseShellConfig("\nNODE_NAME=$(hostname)\n", noEnv)).toThrow(/config line 2: NODE_NAME/);
    expect(() => parseShellConfig("NODE_NAME=`hostname`", noEnv)).toThrow(ConfigError);
  });

  test("unsupported syntax in a key bin-proxy does not use is ignored", () => {
    expect(parseShellConfig("OTHER=$(date)\nBIN_DIR=/b", noEnv).values.get("BIN_DIR")).toBe("/b");
  });

  test("unterminated quotes are errors", () => {
    expect(() => parseShellConfig('BIN_DIR="/opt', noEnv)).toThrow(/unterminated double quote/);
  });

  test("an unquoted space in a setting's value is an error naming the file and line, not a value cut short", () => {
    const text = "# x\nSUPERVISORCTL=/usr/bin/supervisorctl -c /etc/x.conf\n";
    expect(() => parseShellConfig(text, noEnv, "/etc/bin-proxy/config")).toThrow(
      /^\/etc\/bin-proxy\/config line 2: SUPERVISORCTL: unquoted space in the value: sh would set "\/usr\/bin\/supervisorctl" and run "-c \/etc\/x.conf" as a command; quote the value; .*SUPERVISORCTL_CONFIG/,
    );
    expect(() => parseShellConfig("BIN_DIR=/a b", noEnv)).toThrow(/config line 1: BIN_DIR: unquoted space/);
    // What may follow a value: a comment, the next command; and another variable's command line is not ours to judge.
    const ok = parseShellConfig("BIN_DIR=/a  # note\nLOCK_DIR=/l; export LOCK_DIR\nLOG_FILE=/x && true\nOTHER=1 some-command\n", noEnv);
    expect([...ok.values]).toEqual([["BIN_DIR", "/a"], ["LOCK_DIR", "/l"], ["LOG_FILE", "/x"]]);
    expect(parseShellConfig('BIN_DIR="/a b"', noEnv).values.get("BIN_DIR")).toBe("/a b");
  });

  test("a likely typo of a setting and spaces around = are warnings naming the line and the likely key; neither is applied", () => {
    const text = ["BIN_MANGER_API=http://x/api", "BIN_DIR = /x", "LOG_FILE= /y", "export lock_dir=/z", "ROOT=/r", "BIN_DIRS=/d", "LOCK_DIR=$BIN_DIRS", "HTTP_TIMEOT=5"].join("\n");
    const { values, warnings } = parseShellConfig(text, noEnv, "/c");
    expect(warnings).toEqual([
      { line: 1, message: "BIN_MANGER_API is not a bin-proxy setting and is ignored: did you mean BIN_MANAGER_API?" },
      { line: 2, message: 'spaces around "=": sh does not assign BIN_DIR here, and neither does bin-proxy; write BIN_DIR=value' },
      { line: 3, message: 'spaces around "=": sh does not assign LOG_FILE here, and neither does bin-proxy; write LOG_FILE=value' },
      { line: 4, message: "lock_dir is not a bin-proxy setting and is ignored: did you mean LOCK_DIR?" },
      { line: 8, message: "HTTP_TIMEOT is not a bin-proxy setting and is ignored: did you mean HTTP_TIMEOUT?" },
    ]);
    expect(values.has("BIN_DIR")).toBe(false);
    expect(values.has("LOG_FILE")).toBe(false);
    expect(values.get("LOCK_DIR")).toBe("/d");
  });

  test("likelySetting: close names only", () => {
    expect(likelySetting("BIN_MANAGER_APII")).toBe("BIN_MANAGER_API");
    expect(likelySetting("BIN_MANAEGR_API")).toBe("BIN_MANAGER_API");
    expect(likelySetting("SUPERVISORCTRL")).toBe("SUPERVISORCTL");
    expect(likelySetting("ROOT")).toBeNull();
    expect(likelySetting("PATH")).toBeNull();
    expect(likelySetting("BIN_DIR")).toBeNull();
    expect(likelySetting("MY_APP_HOME")).toBeNull();
  });
});

describe("resolveSettings", () => {
  const from = (values: Record<string, string>) => (key: string) => values[key];

  test("a proxy URL that does not parse is refused without quoting its credentials, with or without a scheme", () => {
    for (const [value, shown] of [
      ["user:s3cret@proxy:99999", '"…@proxy:99999"'],
      ["http://user:s3cret@proxy:99999", '"http://…@proxy:99999"'],
      ["http://proxy:99999", '"http://proxy:99999"'],
    ]) {
      const attempt = () => resolveSettings(from({ SUPERVISORCTL: "", NODE_NAME: "n1", https_proxy: value! }));
      expect(attempt).toThrow(ConfigError);
      expect(attempt).toThrow(`https_proxy must be a proxy URL such as http://proxy.example:3128, got ${shown}`);
      expect(attempt).not.toThrow(/s3cret|user:/);
    }
  });

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
    const { settings: s } = loadSettings({ configFlag: file, env: { BIN_DIR: "/from/env" } });
    expect(s.binDir).toBe("/from/env");
    expect(s.lockDir).toBe("/file/locks");
    expect(s.logFile).toBe("/var/log/bin-proxy.log");
  });

  test("a missing --config FILE or BIN_PROXY_CONFIG is an error; a missing default is not", () => {
    expect(() => loadSettings({ configFlag: join(dir, "nope"), env: {} })).toThrow(/cannot read config file/);
    expect(() => loadSettings({ configFlag: undefined, env: { BIN_PROXY_CONFIG: join(dir, "nope") } })).toThrow(ConfigError);
    expect(configFileChoice({ configFlag: undefined, env: {} })).toEqual({ path: "/etc/bin-proxy/config", required: false, namedBy: null });
    expect(() => loadSettings({ configFlag: join(dir, "nope"), env: {} })).toThrow(/\(named by --config on the command line\)/);
    expect(() => loadSettings({ configFlag: undefined, env: { BIN_PROXY_CONFIG: join(dir, "nope") } })).toThrow(/\(named by BIN_PROXY_CONFIG in the environment\)/);
  });

  test("an empty environment value counts as unset, so the file's value applies; SUPERVISORCTL is the exception", () => {
    const ctlFile = join(dir, "ctl");
    writeFileSync(ctlFile, "BIN_DIR=/from/file\nSUPERVISORCTL=/nonexistent/supervisorctl\n");
    const { settings } = loadSettings({ configFlag: ctlFile, env: { BIN_DIR: "", SUPERVISORCTL: "" } });
    expect(settings.binDir).toBe("/from/file");
    expect(settings.supervisorctl).toBeNull();
    expect(settings.restartsDisabled).toBe(true);
  });

  test("an error in a value says where the value came from: the environment, or the file and line", () => {
    const bad = join(dir, "bad");
    writeFileSync(bad, "SUPERVISORCTL=''\n# comment\nLOCK_TIMEOUT=ten\n");
    expect(() => loadSettings({ configFlag: bad, env: {} })).toThrow(`LOCK_TIMEOUT must be a whole number >= 1, got "ten" (set in ${bad} line 3)`);
    expect(() => loadSettings({ configFlag: bad, env: { LOCK_TIMEOUT: "soon" } })).toThrow(`LOCK_TIMEOUT must be a whole number >= 1, got "soon" (set in the environment)`);
    expect(() => loadSettings({ configFlag: bad, env: { LOCK_TIMEOUT: "5", https_proxy: "ftp://p" } })).toThrow(/https_proxy must be .* \(set in the environment\)/);
  });

  test("a config file holding the token that others can read is a warning naming the file, line and mode", () => {
    const tokenFile = join(dir, "token");
    writeFileSync(tokenFile, "SUPERVISORCTL=\nBIN_MANAGER_TOKEN=s3cret\n");
    for (const [mode, expected] of [[0o600, []], [0o640, ["its group (mode 0640)"]], [0o604, ["everyone (mode 0604)"]]] as const) {
      chmodSync(tokenFile, mode);
      const { warnings } = loadSettings({ configFlag: tokenFile, env: {} });
      expect(warnings.map((w) => `${w.file}:${w.line}`)).toEqual(expected.map(() => `${tokenFile}:2`));
      for (const [i, words] of expected.entries()) expect(warnings[i]!.message).toBe(`holds BIN_MANAGER_TOKEN but is readable by ${words}: chmod 600 ${tokenFile}`);
    }
    // A token given only in the environment is not the file's business.
    chmodSync(tokenFile, 0o644);
    writeFileSync(tokenFile, "SUPERVISORCTL=\n");
    expect(loadSettings({ configFlag: tokenFile, env: { BIN_MANAGER_TOKEN: "t" } }).warnings).toEqual([]);
  });

  test("SUPERVISORCTL_CONFIG must be a readable file", () => {
    const conf = join(dir, "supervisord.conf");
    writeFileSync(conf, "[supervisorctl]\n");
    expect(loadSettings({ configFlag: file, env: { SUPERVISORCTL_CONFIG: conf } }).settings.supervisorctlConfig).toBe(conf);
    expect(loadSettings({ configFlag: file, env: {} }).settings.supervisorctlConfig).toBeNull();
    expect(() => loadSettings({ configFlag: file, env: { SUPERVISORCTL_CONFIG: join(dir, "none.conf") } })).toThrow(/SUPERVISORCTL_CONFIG is not a readable file: .*none\.conf \(ENOENT\) \(set in the environment\)/);
  });
});

describe("jsonErrorPosition", () => {
  test.each([
    ['{"a":1,\n "b": x}', 2, 7],
    ['{"binaries": [\n  {"binaryName": "b",}\n]}', 2, 22],
    ["", 1, 1],
    ["[1,2", 1, 5],
    ['{"a":1} x', 1, 9],
    ['{"a":"\\u12G4"}', 1, 11],
    ["01", 1, 2],
  ])("%j breaks at line %d, column %d", (text, line, column) => {
    expect(JSON.parse.bind(null, text)).toThrow();
    expect(jsonErrorPosition(text)).toEqual({ line, column });
  });
  test("valid JSON has no error position", () => {
    expect(jsonErrorPosition('{"a":[1,-2.5e3,{"b":null,"c":true}],"d":"x\\n\\u00e9"}')).toBeNull();
  });
});
