// End-to-end tests of configuration and the command line: the crontab line, the config file sourced or read, precedence, errors.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import { artifact, startBinManager, type BinManager } from "../fixture/bin-manager.ts";
import { BIN_PROXY, hostPool, runBinProxy, serviceScript, type Host } from "../fixture/host.ts";

const PKG_VERSION = (JSON.parse(readFileSync(resolve(import.meta.dir, "../../package.json"), "utf8")) as { version: string }).version;
const API = "/api/v1";
const ENV = "/usr/bin/env";

let bm: BinManager;
const hosts = hostPool();
const newHost = hosts.make;

beforeAll(async () => {
  bm = await startBinManager();
});

afterAll(async () => {
  await bm?.stop();
  hosts.cleanup();
});

beforeEach(() => bm.clearRequests());

/** The nodeName bin-proxy asked the keepalive about: the visible result of which settings won. */
const keepaliveNode = (): string | undefined => bm.requests.find((r) => r.path === `${API}/keepalive`)?.query.nodeName;

/**
 * A config file as the old script's hosts have it: every setting exported, in the syntax variants
 * that occur (double, single and no quotes, `${VAR}` and `$VAR` of a plain variable defined above,
 * comments, `; export` on the same line).
 */
function oldStyleConfig(host: Host, nodeName: string): string {
  const text = [
    "# bin-proxy configuration",
    `ROOT="${host.root}"`,
    "",
    `export BIN_MANAGER_API="${bm.api}"`,
    'export BIN_DIR="${ROOT}/bin"',
    "export BIN_MANIFESTS=${ROOT}/etc/bin-manifests.json   # where the manifest lives",
    `export LOG_FILE='${host.logFile}'`,
    'LOCK_DIR="$ROOT/lock"; export LOCK_DIR',
    'export BIN_PROXY_STATE_DIR="${ROOT}/state"',
    `export NODE_NAME="${nodeName}"`,
    'export SUPERVISORCTL=""',
    "",
  ].join("\n");
  const path = join(host.root, "etc", "old-style.conf");
  writeFileSync(path, text);
  return path;
}

/** A host whose binary `cron` is at v1 while the API names v2. */
function cronHost() {
  const host = newHost();
  const v1 = artifact(serviceScript({ tag: "cron-v1" }));
  host.writeBinary("cron", v1.bytes);
  host.writeManifest([{ serviceName: "", binaryName: "cron", version: v1.sha256, previousVersion: "", port: 0 }]);
  return { host, v1 };
}

describe("the crontab line and the config file", () => {
  const v2 = artifact(serviceScript({ tag: "cron-v2" }));
  // Three ways a host runs bin-proxy with the same file; each must do the same pass. The
  // environment is empty (env -i): nothing of the test runner's reaches bin-proxy.
  const ways: [string, (config: string) => string[]][] = [
    ["env -i, the config sourced by sh (the old crontab line)", (c) => ["-i", "/bin/sh", "-c", `. '${c}' && exec '${BIN_PROXY}'`]],
    ["env -i, the config read by bin-proxy through --config", (c) => ["-i", BIN_PROXY, "--config", c]],
    ["env -i, the config read by bin-proxy through BIN_PROXY_CONFIG", (c) => ["-i", `BIN_PROXY_CONFIG=${c}`, BIN_PROXY]],
  ];
  for (const [way, argv] of ways) {
    test(way, async () => {
      bm.setTarget("cron", v2);
      const { host } = cronHost();
      const config = oldStyleConfig(host, "cron-node");
      const r = await runBinProxy(argv(config), {}, { executable: ENV });
      expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
      expect(readFileSync(join(host.binDir, "cron"))).toEqual(Buffer.from(v2.bytes));
      expect(host.readManifest().binaries[0]!.version).toBe(v2.sha256);
      expect(keepaliveNode()).toBe("cron-node");
      expect(host.log()).toMatch(/ level=info bin=cron event=updated /);
      expect(existsSync(join(host.stateDir, "backups", "cron"))).toBe(true);
      // Every path came out of the file as sh reads it: nothing was created beside the configured directories.
      expect(readdirSync(host.root).sort()).toEqual(["bin", "etc", "lock", "log", "state"]);
    });
  }

  test("a setting the file does not export still applies when bin-proxy reads the file itself", async () => {
    const host = newHost();
    host.writeManifest([]);
    const config = join(host.root, "etc", "plain.conf");
    writeFileSync(config, `NODE_NAME=plain-node\n`);
    const env = host.env(bm.api);
    delete env.NODE_NAME;
    const r = await runBinProxy(["--dry-run", "--config", config], env);
    expect(r.code).toBe(0);
    expect(keepaliveNode()).toBe("plain-node");
  });
});

describe("precedence: flags > environment > file > defaults", () => {
  let host: Host;
  let fileA: string;
  let fileB: string;
  beforeAll(() => {
    host = newHost();
    host.writeManifest([]);
    fileA = join(host.root, "etc", "a.conf");
    fileB = join(host.root, "etc", "b.conf");
    writeFileSync(fileA, 'export NODE_NAME="node-from-a"\n');
    writeFileSync(fileB, 'export NODE_NAME="node-from-b"\n');
  });

  /** A read-only pass: the node name it reports shows which setting won. */
  async function nodeNameWith(env: Record<string, string | undefined>, args: string[] = []): Promise<string | undefined> {
    const full: Record<string, string> = {};
    for (const [k, v] of Object.entries({ ...host.env(bm.api), ...env })) if (v !== undefined) full[k] = v;
    bm.clearRequests();
    const r = await runBinProxy(["--dry-run", ...args], full);
    expect(r.code).toBe(0);
    return keepaliveNode();
  }

  test("the file over the default", async () => {
    expect(await nodeNameWith({ NODE_NAME: undefined, BIN_PROXY_CONFIG: fileA })).toBe("node-from-a");
  });
  test("the default when nothing sets it: the host name", async () => {
    expect(await nodeNameWith({ NODE_NAME: undefined })).toBe(hostname());
  });
  test("the environment over the file", async () => {
    expect(await nodeNameWith({ NODE_NAME: "node-from-env", BIN_PROXY_CONFIG: fileA })).toBe("node-from-env");
  });
  test("--config over BIN_PROXY_CONFIG", async () => {
    expect(await nodeNameWith({ NODE_NAME: undefined, BIN_PROXY_CONFIG: fileB }, ["--config", fileA])).toBe("node-from-a");
    expect(await nodeNameWith({ NODE_NAME: undefined, BIN_PROXY_CONFIG: fileB }, [`--config=${fileA}`])).toBe("node-from-a");
  });
  test("an empty environment value counts as unset: the file's value applies", async () => {
    const h = newHost();
    const app = artifact("#!/bin/sh\necho empty-env\n");
    bm.setTarget("empty-env", app);
    h.writeManifest([{ serviceName: "", binaryName: "empty-env", version: "", previousVersion: "", port: 0 }]);
    const env = h.env(bm.api, { BIN_DIR: "", NODE_NAME: "" });
    writeFileSync(env.BIN_PROXY_CONFIG!, `BIN_DIR=${h.binDir}\nNODE_NAME=node-from-file\n`);
    const r = await runBinProxy([], env);
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(readFileSync(join(h.binDir, "empty-env"))).toEqual(Buffer.from(app.bytes));
    expect(keepaliveNode()).toBe("node-from-file");
  });
  test('except SUPERVISORCTL: set to "" in the environment, it disables restarts over a bad path in the file', async () => {
    const file = join(host.root, "etc", "ctl.conf");
    writeFileSync(file, "SUPERVISORCTL=/nonexistent/supervisorctl\n");
    const env: Record<string, string> = { ...host.env(bm.api), BIN_PROXY_CONFIG: file };
    expect((await runBinProxy(["--dry-run"], { ...env, SUPERVISORCTL: "" })).code).toBe(0);
    const { SUPERVISORCTL: _unset, ...withoutCtl } = env;
    const r = await runBinProxy(["--dry-run"], withoutCtl);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("SUPERVISORCTL");
  });
});

describe("configuration errors: exit 2, the key named, nothing touched", () => {
  const bad: [string, string][] = [
    ["LOCK_TIMEOUT", "ten"],
    ["HTTP_TIMEOUT", "-1"],
    ["MAX_DOWNLOAD_BYTES", "4e9"],
    ["BIN_PROXY_RETRY_BACKOFF", "1h"],
    ["BIN_MANAGER_API", "ftp://bm.example/api"],
    ["DOWNLOAD_BASE_URL", "not a url"],
    ["BIN_DIR", "relative/bin"],
    ["LOCK_DIR", "run/locks"],
    ["SUPERVISORCTL", "/nonexistent/supervisorctl"],
    ["NODE_NAME", "two words"],
  ];
  for (const where of ["environment", "config file"] as const) {
    test(`a bad value in the ${where}`, async () => {
      const host = newHost();
      host.writeManifest([{ serviceName: "", binaryName: "x", version: "", previousVersion: "", port: 0 }]);
      bm.setTarget("x", artifact("x"));
      for (const [key, value] of bad) {
        const env = host.env(bm.api);
        if (where === "environment") {
          env[key] = value;
        } else {
          delete env[key];
          writeFileSync(env.BIN_PROXY_CONFIG!, `export ${key}="${value}"\n`);
        }
        const manifestBefore = readFileSync(host.manifest, "utf8");
        bm.clearRequests();
        const r = await runBinProxy([], env);
        expect({ key, code: r.code }).toEqual({ key, code: 2 });
        expect(r.stdout).toBe("");
        expect(r.stderr).toContain(key);
        expect(r.stderr).toContain("configuration error");
        expect(r.stderr).toContain(where === "environment" ? "(set in the environment)" : `(set in ${env.BIN_PROXY_CONFIG} line 1)`);
        expect(bm.requests).toEqual([]);
        expect(readFileSync(host.manifest, "utf8")).toBe(manifestBefore);
        expect(existsSync(join(host.binDir, "x"))).toBe(false);
        // The log file is named by the environment, so the failure is logged there too.
        const last = host.log().trimEnd().split("\n").at(-1) ?? "";
        expect(last).toContain(key);
      }
    });
  }

  test("a bad value is logged to the LOG_FILE the config file names, when only the file names it", async () => {
    const host = newHost();
    host.writeManifest([]);
    const env = host.env(bm.api);
    delete env.LOG_FILE;
    writeFileSync(env.BIN_PROXY_CONFIG!, `export LOG_FILE="${host.logFile}"\nexport LOCK_TIMEOUT="soon"\n`);
    const r = await runBinProxy([], env);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("LOCK_TIMEOUT");
    expect(host.log()).toContain("LOCK_TIMEOUT");
  });

  test("command substitution in the file is refused, naming the key and the line", async () => {
    const host = newHost();
    host.writeManifest([]);
    const env = host.env(bm.api);
    delete env.NODE_NAME;
    writeFileSync(env.BIN_PROXY_CONFIG!, '# line 1\nexport NODE_NAME="$(hostname -f)"\n');
    const r = await runBinProxy([], env);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("line 2");
    expect(r.stderr).toContain("NODE_NAME");
  });

  test("a missing --config FILE or BIN_PROXY_CONFIG file is exit 2, naming the file", async () => {
    const host = newHost();
    host.writeManifest([]);
    const missing = join(host.root, "etc", "no-such.conf");
    const viaFlag = await runBinProxy(["--config", missing], host.env(bm.api));
    expect(viaFlag.code).toBe(2);
    expect(viaFlag.stderr).toContain(missing);
    const viaEnv = await runBinProxy([], host.env(bm.api, { BIN_PROXY_CONFIG: missing }));
    expect(viaEnv.code).toBe(2);
    expect(viaEnv.stderr).toContain(missing);
    expect(bm.requests).toEqual([]);
  });
});

describe("config file mistakes", () => {
  /** A host whose binary `typo` is at v1 while the API names v2, with `config` as its config file. */
  function hostWithConfig(config: string) {
    const h = newHost();
    const v1 = artifact("#!/bin/sh\necho typo-v1\n");
    h.writeBinary("typo", v1.bytes);
    h.writeManifest([{ serviceName: "", binaryName: "typo", version: v1.sha256, previousVersion: "", port: 0 }]);
    const env = h.env(bm.api);
    writeFileSync(env.BIN_PROXY_CONFIG!, config);
    return { h, env, v1, configFile: env.BIN_PROXY_CONFIG! };
  }

  test("a likely typo of a setting and spaces around = are logged as config_warning with file, line and likely key; the pass goes on", async () => {
    const v2 = artifact("#!/bin/sh\necho typo-v2\n");
    bm.setTarget("typo", v2);
    const { h, env, configFile } = hostWithConfig("# site settings\nBIN_MANGER_API=http://bm.example/api/v1\nHTTP_TIMEOUT = 5\n");
    const r = await runBinProxy([], env);
    // Not on a terminal (cron): nothing on stderr, so cron does not mail it every minute.
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(readFileSync(join(h.binDir, "typo"))).toEqual(Buffer.from(v2.bytes));
    const warnings = h.log().split("\n").filter((l) => l.includes("event=config_warning"));
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toMatch(new RegExp(` level=warn event=config_warning file=${configFile} line=2 warning="BIN_MANGER_API is not a bin-proxy setting and is ignored: did you mean BIN_MANAGER_API\\?" pid=\\d+$`));
    expect(warnings[1]).toMatch(new RegExp(` level=warn event=config_warning file=${configFile} line=3 warning=".*spaces around.*HTTP_TIMEOUT=value" pid=\\d+$`));
    // --verbose (or a terminal) says it on stderr too; status, which logs nothing, always does.
    const verbose = await runBinProxy(["-v"], env);
    expect(verbose.code).toBe(0);
    expect(verbose.stderr).toContain(`event=config_warning file=${configFile} line=2`);
    // The warnings are not what the pass did: a pass that changed nothing still says so.
    expect(verbose.stderr).toMatch(/bin-proxy: pass done: 1 checked, 1 up to date, 0 updated/);
    const status = await runBinProxy(["status"], env);
    expect(status.stderr).toContain(`bin-proxy: config warning: ${configFile} line 2: BIN_MANGER_API is not a bin-proxy setting`);
  });

  test("an unquoted value with spaces is a configuration error naming the file and line; nothing is touched", async () => {
    const { h, env, v1, configFile } = hostWithConfig("SUPERVISORCTL=/usr/bin/supervisorctl -c /etc/supervisor/x.conf\n");
    bm.setTarget("typo", artifact("#!/bin/sh\necho typo-v3\n"));
    const manifestBefore = readFileSync(h.manifest, "utf8");
    delete env.SUPERVISORCTL;
    bm.clearRequests();
    const r = await runBinProxy([], env);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`configuration error: ${configFile} line 1: SUPERVISORCTL: unquoted space in the value`);
    expect(r.stderr).toContain("SUPERVISORCTL_CONFIG");
    expect(bm.requests).toEqual([]);
    expect(readFileSync(h.manifest, "utf8")).toBe(manifestBefore);
    expect(readFileSync(join(h.binDir, "typo"))).toEqual(Buffer.from(v1.bytes));
    expect(h.log()).toContain(`event=not_started error="configuration error: ${configFile} line 1: SUPERVISORCTL`);
  });

  test("a config file holding BIN_MANAGER_TOKEN that others can read gets a warning, without the token", async () => {
    const token = "tok-readable-by-others";
    const { h, env, configFile } = hostWithConfig(`BIN_MANAGER_TOKEN="${token}"\n`);
    bm.setTarget("typo", null);
    const warningsAfterRunWith = async (mode: number) => {
      chmodSync(configFile, mode);
      await runBinProxy(["--config", configFile], env);
      return h.log().split("\n").filter((l) => l.includes("event=config_warning"));
    };
    const readable = await warningsAfterRunWith(0o644);
    expect(readable).toHaveLength(1);
    expect(readable[0]).toContain(`file=${configFile} line=1 warning="holds BIN_MANAGER_TOKEN but is readable by everyone (mode 0644): chmod 600 ${configFile}"`);
    // 0600: the run adds no warning.
    expect(await warningsAfterRunWith(0o600)).toEqual(readable);
    expect(h.log()).not.toContain(token);
  });

  test("a manifest that is not JSON: exit 2, the error names the line and column, the file is untouched", async () => {
    const h = newHost();
    const text = '{\n  "binaries": [\n    {"binaryName": "a",}\n  ]\n}\n';
    writeFileSync(h.manifest, text);
    const r = await runBinProxy([], h.env(bm.api));
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("not valid JSON at line 3, column 24");
    expect(h.log()).toMatch(/event=manifest_invalid .*not valid JSON at line 3, column 24/);
    expect(readFileSync(h.manifest, "utf8")).toBe(text);
  });
});

describe("an unconfigured host", () => {
  test("no BIN_MANAGER_API anywhere and the default localhost API refusing: an error of the pass (exit 1), saying what to set", async () => {
    const host = newHost();
    host.writeManifest([]);
    // A port nothing listens on stands for the default http://localhost:8080 (which may be taken here).
    const { BIN_MANAGER_API: _api, ...env } = host.env(bm.api);
    const unset = await runBinProxy([], env);
    // The default URL itself is what an unconfigured host uses: nothing listens there in the tests' world, or it is not a bin-manager.
    expect(unset.code).toBe(1);
    expect(unset.stderr).toMatch(/level=error event=not_configured error="BIN_MANAGER_API is not set \(environment or config file\) and the default http:\/\/localhost:8080\/api\/v1 does not answer: .*; set BIN_MANAGER_API in \/etc\/bin-proxy\/config"/);
    expect(host.log()).toContain("event=not_configured");

    // The same refusing API, configured on purpose: a keepalive failure is a warning and stops nothing.
    const configured = await runBinProxy([], { ...env, BIN_MANAGER_API: "http://127.0.0.1:9/api/v1" });
    expect(configured).toMatchObject({ code: 0, stdout: "", stderr: "" });
    expect(host.log()).toContain("event=keepalive_failed");
  });
});

describe("where an error is logged when no LOG_FILE is configured", () => {
  test("a usage error and a configuration error go to the default /var/log/bin-proxy.log", async () => {
    // A private mount namespace puts a temp dir at /var/log, so the machine's own log is never touched.
    const unshare = Bun.which("unshare");
    if (!unshare) throw new Error("unshare (util-linux) is needed to give the test its own /var/log");
    const host = newHost();
    const varLog = join(host.root, "var-log");
    mkdirSync(varLog);
    const script = 'mount --bind "$VARLOG" /var/log && "$EXE" --frobnicate; echo "usage=$?"; HTTP_TIMEOUT=soon "$EXE"; echo "config=$?"';
    const proc = Bun.spawn([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script], {
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", VARLOG: varLog, EXE: BIN_PROXY, BIN_PROXY_CONFIG: join(host.root, "etc", "config") },
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    const [stdout, stderr] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    expect(stdout).toBe("usage=2\nconfig=2\n");
    expect(stderr).toContain('unknown option "--frobnicate"');
    const lines = readFileSync(join(varLog, "bin-proxy.log"), "utf8").trimEnd().split("\n");
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/ level=warn event=not_started error=".*--frobnicate/);
    expect(lines[1]).toMatch(/ level=warn event=not_started error=".*HTTP_TIMEOUT/);
  });
});

describe("command line", () => {
  const usageLines = ["bin-proxy [--once] [--dry-run] [--config FILE] [--verbose]", "bin-proxy status", "bin-proxy rollback NAME", "bin-proxy retry NAME", "bin-proxy --version | --help | help", "-v is --verbose"];

  test("--help and -h print the usage on stdout, exit 0, with no configuration at all", async () => {
    for (const flag of ["--help", "-h"]) {
      const r = await runBinProxy([flag], {});
      expect(r.code).toBe(0);
      expect(r.stderr).toBe("");
      for (const line of usageLines) expect(r.stdout).toContain(line);
    }
  });

  test("help, and --help after any command, print the usage and exit 0", async () => {
    for (const args of [["help"], ["status", "--help"], ["rollback", "--help"], ["retry", "--help"], ["rollback", "app", "-h"]]) {
      const r = await runBinProxy(args, {});
      expect({ args, code: r.code, stderr: r.stderr }).toEqual({ args, code: 0, stderr: "" });
      for (const line of usageLines) expect(r.stdout).toContain(line);
    }
  });

  test("-v is --verbose: the pass echoes its log lines to stderr", async () => {
    const h = newHost();
    h.writeManifest([{ serviceName: "", binaryName: "verbose", version: "", previousVersion: "", port: 0 }]);
    bm.setTarget("verbose", artifact("#!/bin/sh\necho verbose-v1\n"));
    const quiet = await runBinProxy([], h.env(bm.api));
    expect(quiet).toEqual({ code: 0, stdout: "", stderr: "" });
    const logged = h.log();
    bm.setTarget("verbose", artifact("#!/bin/sh\necho verbose-v2\n"));
    const verbose = await runBinProxy(["-v"], h.env(bm.api));
    expect(verbose.code).toBe(0);
    expect(verbose.stderr).toMatch(/ level=info bin=verbose event=updated /);
    expect(verbose.stderr).toBe(h.log().slice(logged.length));
  });

  test("a usage error is logged to the LOG_FILE of the config file the command line names", async () => {
    const h = newHost();
    const env = h.env(bm.api);
    delete env.LOG_FILE;
    delete env.BIN_PROXY_CONFIG;
    const config = join(h.root, "etc", "named.conf");
    writeFileSync(config, `LOG_FILE=${h.logFile}\n`);
    const r = await runBinProxy(["--frobnicate", "--config", config], env);
    expect(r.code).toBe(2);
    expect(h.log()).toMatch(/ level=warn event=not_started error=".*--frobnicate/);
  });

  test("--version prints the package version, exit 0", async () => {
    const r = await runBinProxy(["--version"], {});
    expect(r.code).toBe(0);
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(new RegExp(`^bin-proxy ${PKG_VERSION.replaceAll(".", "\\.")} \\(.*\\)\\n$`));
  });

  test("an unknown flag, a stray argument, an unknown command, --config without FILE: exit 2, said on stderr, logged", async () => {
    const host = newHost();
    host.writeManifest([]);
    const cases: [string[], string][] = [
      [["--frobnicate"], "--frobnicate"],
      [["--dry-run", "extra"], "extra"],
      [["frobnicate"], "frobnicate"],
      [["--config"], "--config"],
      [["status", "--dry-run"], "--dry-run"],
    ];
    for (const [args, named] of cases) {
      const r = await runBinProxy(args, host.env(bm.api));
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect(r.stdout).toBe("");
      expect(r.stderr.split("\n")[0]).toContain(named);
      expect(r.stderr).toContain("usage:");
      expect(host.log().trimEnd().split("\n").at(-1)).toContain(named);
    }
    expect(bm.requests).toEqual([]);
  });
});
