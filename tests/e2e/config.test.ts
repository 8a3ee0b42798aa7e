// End-to-end tests of configuration and the command line: the crontab line, the config file sourced or read, precedence, errors.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
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
  test('an empty environment value is set: SUPERVISORCTL="" overrides a bad path in the file', async () => {
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
  const usageLines = ["bin-proxy [--once] [--dry-run] [--config FILE] [--verbose]", "bin-proxy status", "bin-proxy rollback NAME", "bin-proxy retry NAME", "bin-proxy --version | --help"];

  test("--help and -h print the usage on stdout, exit 0, with no configuration at all", async () => {
    for (const flag of ["--help", "-h"]) {
      const r = await runBinProxy([flag], {});
      expect(r.code).toBe(0);
      expect(r.stderr).toBe("");
      for (const line of usageLines) expect(r.stdout).toContain(line);
    }
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
