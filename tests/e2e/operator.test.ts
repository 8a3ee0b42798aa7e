// End-to-end tests of the operator's commands: status (table and JSON), rollback NAME and retry NAME,
// with the compiled executable, the fake bin-manager and a real supervisord. Within each describe the
// tests run in order, each starting from what the previous left.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { artifact, startBinManager, type Artifact, type BinManager } from "../fixture/bin-manager.ts";
import { freePort, hostPool, runBinProxy, serviceScript, spawnBinProxy, type Host } from "../fixture/host.ts";
import { startSupervisor, type Supervisor } from "../fixture/supervisor.ts";
import { STATUS_SCHEMA, validate } from "../fixture/jsonschema.ts";

const API = "/api/v1";
const short = (sha: string) => sha.slice(0, 12);

/**
 * A service that listens on port and answers every connection with its tag, so a test can tell which
 * version runs. A client that hangs up first (the health check does) must not crash it.
 */
function taggedService(port: number, tag: string): string {
  const js = `require("node:net").createServer((s) => { s.on("error", () => {}); s.end("${tag}"); }).listen(${port}, "127.0.0.1")`;
  return `#!/bin/sh\n# test service ${tag}\nexec node -e '${js}'\n`;
}

/** What the service on port answers. */
function served(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    const socket = connect({ host: "127.0.0.1", port });
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => (text += chunk));
    socket.on("end", () => resolve(text));
    socket.on("error", reject);
  });
}

/** Mode, size, mtime and content of every file under the host root, but the files in except. */
function snapshot(host: Host, except: string[] = []): Record<string, string> {
  const out: Record<string, string> = {};
  for (const rel of host.listFiles()) {
    if (except.includes(rel)) continue;
    const path = join(host.root, rel);
    const st = statSync(path);
    out[rel] = `${(st.mode & 0o7777).toString(8)} ${st.size} ${st.mtimeMs} ${new Bun.CryptoHasher("sha256").update(readFileSync(path)).digest("hex")}`;
  }
  return out;
}
const LOG = "log/bin-proxy.log";

let bm: BinManager;
let sup: Supervisor;
let supDir: string;
const hosts = hostPool();
const newHost = hosts.make;

// The status host: one binary in each state a row can show.
let statusHost: Host;
let webPort: number;
let web: Artifact;
const down = artifact(serviceScript({ exitCode: 1, tag: "down" }));
const tool = artifact("tool v1\n");
const cli = artifact("cli v1\n");
const gone = artifact("gone v1\n");
const other = artifact("another version\n");
const older = artifact("an older version\n");

// The rollback host: one supervised service with a port health check.
let appHost: Host;
let appPort: number;
let appPath: string;
let v1: Artifact;
let v2: Artifact;
let v3: Artifact;

// A service slow to start (startsecs=3), so a pass can run while a rollback restarts it.
let slowHost: Host;
let slowPath: string;
const slow1 = artifact(serviceScript({ tag: "slow-v1" }));
const slow2 = artifact(serviceScript({ tag: "slow-v2" }));

beforeAll(async () => {
  bm = await startBinManager();
  statusHost = newHost();
  appHost = newHost();
  slowHost = newHost();
  slowPath = slowHost.writeBinary("slow", slow1.bytes);
  webPort = await freePort();
  appPort = await freePort();
  web = artifact(taggedService(webPort, "web-v1"));
  v1 = artifact(taggedService(appPort, "app-v1"));
  v2 = artifact(taggedService(appPort, "app-v2"));
  v3 = artifact(taggedService(appPort, "app-v3"));
  const webPath = statusHost.writeBinary("web", web.bytes);
  const downPath = statusHost.writeBinary("down", down.bytes);
  appPath = appHost.writeBinary("app", v1.bytes);
  supDir = mkdtempSync(join(tmpdir(), "bin-proxy-operator-supervisor-"));
  sup = await startSupervisor(supDir, [
    { name: "web", command: webPath },
    { name: "down", command: downPath },
    { name: "app", command: appPath },
    { name: "slow", command: slowPath, startsecs: 3 },
  ]);
});

afterAll(async () => {
  await sup?.stop();
  await bm?.stop();
  hosts.cleanup();
  if (supDir) rmSync(supDir, { recursive: true, force: true });
});

beforeEach(() => bm.clearRequests());

const run = (host: Host, args: string[], extra: Record<string, string> = {}) => runBinProxy(args, host.env(bm.api, { SUPERVISORCTL: sup.ctl, ...extra }));

describe("status", () => {
  const HEADER = ["NAME", "SERVICE", "ON-DISK", "VERSION", "PREVIOUS", "SUPERVISOR", "LOCK", "HOLD"];
  const holdUntil = new Date(Date.now() + 3600_000).toISOString();
  const expiredAt = new Date(Date.now() - 60_000).toISOString();

  beforeAll(() => {
    statusHost.writeBinary("tool", tool.bytes);
    statusHost.writeBinary("cli", cli.bytes);
    // A lock as the old script writes it: the Unix time and a newline, no holder record.
    writeFileSync(join(statusHost.lockDir, `tool-${other.sha256}.lock`), `${Math.floor(Date.now() / 1000) - 5}\n`);
    statusHost.writeManifest([
      { serviceName: "web", binaryName: "web", version: web.sha256, previousVersion: "", port: webPort },
      // With a hold kept beside its own: a rollback never lifts a hold still in force.
      {
        serviceName: "", binaryName: "tool", version: tool.sha256, previousVersion: "", port: 0,
        hold: { version: other.sha256, failures: 2, until: holdUntil }, otherHolds: [{ version: older.sha256, failures: 3, until: holdUntil }],
      },
      { serviceName: "", binaryName: "gone", version: gone.sha256, previousVersion: "", port: 0 },
      { serviceName: "down", binaryName: "down", version: down.sha256, previousVersion: "", port: 0 },
      { serviceName: "", binaryName: "cli", version: cli.sha256, previousVersion: older.sha256, port: 0, hold: { version: other.sha256, failures: 1, until: expiredAt } },
      { serviceName: "", binaryName: "bad/name", version: "", previousVersion: "", port: 0 },
    ]);
  });

  test("a table, one row per binary, columns aligned; offline, writes nothing; exit 1 as some need attention", async () => {
    const before = snapshot(statusHost);
    const r = await run(statusHost, ["status"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(1);
    expect(bm.requests).toEqual([]);
    expect(snapshot(statusHost)).toEqual(before);

    const lines = r.stdout.split("\n");
    const blank = lines.indexOf("");
    const table = lines.slice(0, blank);
    const rows = table.map((line) => line.split(/ {2,}/));
    expect(rows[0]).toEqual(HEADER);
    const bin = statusHost.binDir;
    expect(rows.slice(1, 4)).toEqual([
      ["web", "web", short(web.sha256), short(web.sha256), "-", "RUNNING", "-", "-"],
      ["tool", "-", short(tool.sha256), short(tool.sha256), "-", "-", expect.stringMatching(new RegExp(`^${short(other.sha256)} by unknown \\(not recorded by bin-proxy\\), \\d+s$`)), `${short(other.sha256)} held until ${holdUntil} (2 failures); ${short(older.sha256)} held until ${holdUntil} (3 failures)`],
      ["gone", "-", "missing", short(gone.sha256), "-", "-", "-", "-"],
    ]);
    expect(rows.slice(4)).toEqual([
      ["down", "down", short(down.sha256), short(down.sha256), "-", "FATAL", "-", "-"],
      ["cli", "-", short(cli.sha256), short(cli.sha256), short(older.sha256), "-", "-", `${short(other.sha256)} expired ${expiredAt} (1 failure)`],
    ]);
    const lockAge = Number(/, (\d+)s$/.exec(rows[2]![6]!)![1]);
    expect(lockAge).toBeGreaterThanOrEqual(5);
    expect(lockAge).toBeLessThan(120);
    // Every column starts at the same offset in every row.
    for (const [i, name] of HEADER.entries()) {
      const start = table[0]!.indexOf(name);
      for (const [j, line] of table.entries()) expect(line.slice(start).startsWith(rows[j]![i]!)).toBe(true);
    }
    expect(lines.slice(blank + 1)).toEqual([
      `gone: ${join(bin, "gone")} is missing`,
      "down: service down is FATAL",
      `"bad/name": entry rejected: binaries[5]: not a plain name (allowed: A-Z a-z 0-9 . _ -)`,
      "",
      "last pass not recorded (BIN_PROXY_METRICS_FILE is not set); signatures not checked (no trusted keys file)",
      "",
    ]);
  });

  test("--json gives the same data", async () => {
    const before = snapshot(statusHost);
    const r = await run(statusHost, ["status", "--json"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(1);
    expect(bm.requests).toEqual([]);
    expect(snapshot(statusHost)).toEqual(before);
    const bin = statusHost.binDir;
    const row = (name: string, fields: object) => ({
      name, service: "", path: join(bin, name), onDisk: null, diskError: null, version: null, versionName: null, previousVersion: null,
      supervisor: null, locks: [], hold: null, otherHolds: [], attempt: null, signedAt: null, partial: null, attention: null, ...fields,
    });
    const report = JSON.parse(r.stdout);
    expect(report).toEqual({
      binaries: [
        row("web", { service: "web", onDisk: web.sha256, version: web.sha256, supervisor: "RUNNING" }),
        row("tool", {
          onDisk: tool.sha256, version: tool.sha256,
          locks: [{ version: other.sha256, ageSec: expect.any(Number), holder: "unknown (not recorded by bin-proxy)", stale: false }],
          hold: { version: other.sha256, failures: 2, until: holdUntil, active: true },
          otherHolds: [{ version: older.sha256, failures: 3, until: holdUntil, active: true }],
        }),
        row("gone", { version: gone.sha256, attention: `${join(bin, "gone")} is missing` }),
        row("down", { service: "down", onDisk: down.sha256, version: down.sha256, supervisor: "FATAL", attention: "service down is FATAL" }),
        row("cli", { onDisk: cli.sha256, version: cli.sha256, previousVersion: older.sha256, hold: { version: other.sha256, failures: 1, until: expiredAt, active: false } }),
      ],
      rejected: [{ label: `"bad/name"`, reason: "binaries[5]: not a plain name (allowed: A-Z a-z 0-9 . _ -)" }],
      lastPass: null,
      signaturesRequired: false,
      restartsDisabled: false,
    });
    expect(report.binaries[1].locks[0].ageSec).toBeGreaterThanOrEqual(5);
    expect(report.binaries[1].locks[0].ageSec).toBeLessThan(120);
    // otherHolds, a null hold and an expired one, against the documented schema.
    expect(validate(STATUS_SCHEMA, report)).toEqual([]);
  });

  test("a metrics state it cannot read: the last line says so (not that no pass ran), and the rest is shown as ever", async () => {
    const stateDir = mkdtempSync(join(statusHost.root, "garbage-state-"));
    writeFileSync(join(stateDir, "metrics-state.json"), "\0not json");
    const r = await run(statusHost, ["status"], { BIN_PROXY_STATE_DIR: stateDir, BIN_PROXY_METRICS_FILE: join(statusHost.root, "bin_proxy.prom") });
    expect(r.code).toBe(1); // "gone" is still missing
    expect(r.stdout.trimEnd().split("\n").at(-1)).toMatch(new RegExp(`^last pass unknown: cannot read the metrics state in ${stateDir}: not valid JSON: .*; signatures not checked \\(no trusted keys file\\)$`));
    expect(readdirSync(stateDir)).toEqual(["metrics-state.json"]);
  });

  test('SUPERVISORCTL="" shows "-" for the supervisor; a host with no lock or state directory yet gets none', async () => {
    const lockDir = join(statusHost.root, "no-lock-dir");
    const stateDir = join(statusHost.root, "no-state-dir");
    const r = await run(statusHost, ["status", "--json"], { SUPERVISORCTL: "", LOCK_DIR: lockDir, BIN_PROXY_STATE_DIR: stateDir });
    expect(r.code).toBe(1); // "gone" is still missing
    const report = JSON.parse(r.stdout);
    expect(report.binaries.map((b: { supervisor: string | null }) => b.supervisor)).toEqual([null, null, null, null, null]);
    expect(report.binaries.map((b: { locks: unknown[] }) => b.locks)).toEqual([[], [], [], [], []]);
    expect(existsSync(lockDir)).toBe(false);
    expect(existsSync(stateDir)).toBe(false);
    expect(report.restartsDisabled).toBe(true);
    const text = await run(statusHost, ["status"], { SUPERVISORCTL: "" });
    expect(text.stdout.split("\n")[1]!.split(/ {2,}/)[5]).toBe("-");
    // Each supervised binary says its service is not restarted, so an operator does not take "updated" for "running".
    expect(text.stdout).toContain("web: not restarted by bin-proxy (SUPERVISORCTL is empty): web runs whatever binary it last started\n");
    expect(text.stdout).toContain("down: not restarted by bin-proxy");
    expect(text.stdout).not.toContain("tool: not restarted");
  });

  test("an invalid manifest is exit 2, said on stderr, nothing written", async () => {
    const host = newHost();
    writeFileSync(host.manifest, "{ not json");
    const before = snapshot(host);
    const r = await run(host, ["status"]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain(`bin-proxy: manifest ${host.manifest} is invalid: not valid JSON`);
    expect(snapshot(host)).toEqual(before);
    expect(bm.requests).toEqual([]);
  });
});

describe("rollback and retry", () => {
  const calls = () => bm.requests.map((q) => `${q.method} ${q.path}`);
  const bodies = (path: string) => bm.requests.filter((q) => q.method === "POST" && q.path === path).map((q) => q.body);
  const downloads = () => bm.count("GET", `${API}/download/app`) + bm.count("GET", `${API}/releases/latest/app/download`);
  const entryOf = () => appHost.readManifest().binaries[0]!;
  const backups = () => readdirSync(join(appHost.stateDir, "backups", "app")).sort();
  const versionLocks = () => readdirSync(appHost.lockDir).filter((f) => f.startsWith("app-"));
  const rollbackHold = (sha: string) => ({ version: sha, failures: 0, until: null });

  async function expectRunning(tag: string): Promise<void> {
    expect(await sup.status("app")).toBe("RUNNING");
    expect(await served(appPort)).toBe(tag);
  }

  beforeAll(() => {
    appHost.writeManifest([{ serviceName: "app", binaryName: "app", version: v1.sha256, previousVersion: "", port: appPort }]);
  });

  test("rollback of a healthy update restores the old bytes and service, reports it, and holds the version it left", async () => {
    bm.setTarget("app", v2, "2.0.0");
    expect((await run(appHost, [])).code).toBe(0);
    await expectRunning("app-v2");
    expect(backups()).toEqual([v1.sha256]);
    const pidBefore = await sup.pid("app");
    bm.clearRequests();

    const r = await run(appHost, ["rollback", "app"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`app: rolled back to ${short(v1.sha256)}; the version it left is held until the API names another (bin-proxy retry app lifts the hold)\n`);
    expect(readFileSync(appPath)).toEqual(Buffer.from(v1.bytes));
    await expectRunning("app-v1");
    expect(await sup.pid("app")).not.toBe(pidBefore);
    expect(entryOf()).toMatchObject({ version: v1.sha256, previousVersion: v2.sha256, hold: rollbackHold(v2.sha256) });
    // One previous version is kept: the one rolled back from.
    expect(backups()).toEqual([v2.sha256]);
    expect(readdirSync(appHost.binDir)).toEqual(["app"]);
    expect(versionLocks()).toEqual([]);

    // Reported as an update is, and nothing is asked of the API or downloaded.
    expect(calls()).toEqual([`POST ${API}/bins/app/progress`, `POST ${API}/bins/app/progress`, `POST ${API}/bins/app`]);
    expect(bodies(`${API}/bins/app/progress`)).toEqual(
      ["in_progress", "success"].map((status) => ({ nodeName: "test-node", binName: "app", targetHash: v1.sha256, processingTime: expect.any(Number), status })),
    );
    expect(bodies(`${API}/bins/app`)).toEqual([{ nodeName: "test-node", binName: "app", sha256: v1.sha256, version: short(v1.sha256) }]);
    expect(appHost.log()).toMatch(new RegExp(`level=info bin=app event=reverted from=${short(v2.sha256)} to=${short(v1.sha256)} version=${short(v1.sha256)} held=${short(v2.sha256)} took_ms=\\d+ pid=\\d+\\n`));
  });

  test("the next pass does not re-upgrade: the version rolled back from is held; status shows it, exit 0", async () => {
    const pidBefore = await sup.pid("app");
    const r = await run(appHost, []);
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(downloads()).toBe(0);
    expect(readFileSync(appPath)).toEqual(Buffer.from(v1.bytes));
    expect(await sup.pid("app")).toBe(pidBefore);
    await expectRunning("app-v1");

    const dry = await run(appHost, ["--dry-run"]);
    expect(dry.stdout).toBe("app: held until the API names another version\n");

    bm.clearRequests();
    const status = await run(appHost, ["status"]);
    expect(status.code).toBe(0);
    expect(status.stdout.split("\n").map((line) => line.split(/ {2,}/))).toEqual([
      ["NAME", "SERVICE", "ON-DISK", "VERSION", "PREVIOUS", "SUPERVISOR", "LOCK", "HOLD"],
      ["app", "app", short(v1.sha256), short(v1.sha256), short(v2.sha256), "RUNNING", "-", `${short(v2.sha256)} held until the API names another version`],
      [""],
      ["last pass not recorded (BIN_PROXY_METRICS_FILE is not set); signatures not checked (no trusted keys file)"],
      [""],
    ]);
    expect(bm.requests).toEqual([]);
  });

  test("status takes an unchanged file's hash from the cache without reading it, and re-hashes a changed one", async () => {
    // Were the file read, status would show its real hash; the cache's record is what it shows.
    const cachePath = join(appHost.stateDir, "hash-cache.json");
    const cache = JSON.parse(readFileSync(cachePath, "utf8"));
    expect(cache[appPath].sha256).toBe(v1.sha256);
    const fake = "f".repeat(64);
    cache[appPath].sha256 = fake;
    writeFileSync(cachePath, JSON.stringify(cache));
    const onDisk = async () => JSON.parse((await run(appHost, ["status", "--json"])).stdout).binaries[0].onDisk;
    expect(await onDisk()).toBe(fake);
    const st = statSync(appPath);
    utimesSync(appPath, st.atime, new Date(st.mtimeMs + 1000));
    expect(await onDisk()).toBe(v1.sha256);
    expect(JSON.parse(readFileSync(cachePath, "utf8"))[appPath].sha256).toBe(fake); // status saved nothing
  });

  test("retry NAME lifts the hold, so the next pass upgrades again", async () => {
    const r = await run(appHost, ["retry", "app"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`app: hold on ${short(v2.sha256)} cleared; the next pass tries the API's target again\n`);
    expect(entryOf().hold).toBeUndefined();
    expect(bm.requests).toEqual([]);
    expect(appHost.log()).toMatch(new RegExp(`level=info bin=app event=hold_cleared version=${short(v2.sha256)} failures=0 pid=\\d+\\n`));

    expect((await run(appHost, [])).code).toBe(0);
    expect(downloads()).toBe(1);
    await expectRunning("app-v2");
    expect(entryOf()).toMatchObject({ version: v2.sha256, previousVersion: v1.sha256 });
  });

  test("retry NAME without a hold is fine and says so; the manifest is not rewritten", async () => {
    const before = snapshot(appHost, [LOG]);
    const r = await run(appHost, ["retry", "app"]);
    expect(r).toEqual({ code: 0, stdout: "app: no hold to clear; the next pass follows the API as usual\n", stderr: "" });
    expect(snapshot(appHost, [LOG])).toEqual(before);
  });

  test("after a rollback, a third version named by the API is installed at once", async () => {
    expect((await run(appHost, ["rollback", "app"])).code).toBe(0);
    await expectRunning("app-v1");
    expect(entryOf().hold).toEqual(rollbackHold(v2.sha256));

    bm.setTarget("app", v3, "3.0.0");
    const r = await run(appHost, []);
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    await expectRunning("app-v3");
    const m = entryOf();
    expect(m).toMatchObject({ version: v3.sha256, previousVersion: v1.sha256 });
    expect(m.hold).toBeUndefined();
    expect(backups()).toEqual([v1.sha256]);
  });

  /** Runs a command that must fail and change nothing on the host but its log. */
  async function refused(args: string[], message: string): Promise<void> {
    const before = snapshot(appHost, [LOG]);
    const pidBefore = await sup.pid("app");
    bm.clearRequests();
    const r = await run(appHost, args);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain(message);
    expect(snapshot(appHost, [LOG])).toEqual(before);
    expect(await sup.pid("app")).toBe(pidBefore);
    expect(bm.requests).toEqual([]);
  }

  test("rollback and retry of a NAME that is not managed: exit 1, said why, nothing touched", async () => {
    for (const command of ["rollback", "retry"]) {
      await refused([command, "nosuch"], `event=${command}_refused reason="nosuch is not managed: ${appHost.manifest} has no binaryName \\"nosuch\\""`);
    }
    await refused(["rollback", "app.bak"], "app.bak is not managed");
  });

  test("rollback and retry with an invalid manifest: exit 2, said why, the file left as it is", async () => {
    const manifest = readFileSync(appHost.manifest, "utf8");
    try {
      writeFileSync(appHost.manifest, manifest.replace('"binaries"', '"binaries": 7, "x"'));
      const before = snapshot(appHost, [LOG]);
      for (const command of ["rollback", "retry"]) {
        const r = await run(appHost, [command, "app"]);
        expect(r.code).toBe(2);
        expect(r.stderr).toContain(`event=manifest_invalid manifest=${appHost.manifest}`);
      }
      expect(snapshot(appHost, [LOG])).toEqual(before);
      expect(bm.requests).toEqual([]);
    } finally {
      writeFileSync(appHost.manifest, manifest);
    }
  });

  test("rollback without a backup of previousVersion, or without a previousVersion: exit 1, nothing touched", async () => {
    const backup = join(appHost.stateDir, "backups", "app", v1.sha256);
    const aside = join(appHost.root, "backup-aside");
    renameSync(backup, aside);
    try {
      await refused(["rollback", "app"], `no backup of app's previous version ${short(v1.sha256)}: ${backup} does not exist`);
    } finally {
      renameSync(aside, backup);
    }
    const manifest = readFileSync(appHost.manifest, "utf8");
    try {
      writeFileSync(appHost.manifest, manifest.replace(`"previousVersion": "${v1.sha256}"`, `"previousVersion": ""`));
      await refused(["rollback", "app"], "app has no previousVersion in the manifest: there is nothing to roll back to");
    } finally {
      writeFileSync(appHost.manifest, manifest);
    }
  });

  test("rollback while another run holds the lock of the version it installs: exit 1, nothing touched, the lock left alone", async () => {
    const lock = join(appHost.lockDir, `app-${v1.sha256}.lock`);
    writeFileSync(lock, `${Math.floor(Date.now() / 1000)}\n`);
    try {
      await refused(["rollback", "app"], `another run holds the lock of ${short(v1.sha256)}`);
      expect(existsSync(lock)).toBe(true);
    } finally {
      rmSync(lock);
    }
  });

  test("a backup that does not hash to previousVersion is refused after taking the lock, before anything changes", async () => {
    const backup = join(appHost.stateDir, "backups", "app", v1.sha256);
    const good = readFileSync(backup);
    writeFileSync(backup, "damaged\n");
    try {
      const before = snapshot(appHost, [LOG]);
      const pidBefore = await sup.pid("app");
      const r = await run(appHost, ["rollback", "app"]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr).toContain(`backup ${backup} is damaged: its SHA-256 is ${short(artifact("damaged\n").sha256)}, not ${short(v1.sha256)}; refusing to install it`);
      expect(r.stderr).toContain("event=rollback_failed");
      // The damaged backup stays for the operator to look at; nothing else changed, nothing is left behind.
      expect(snapshot(appHost, [LOG])).toEqual(before);
      expect(await sup.pid("app")).toBe(pidBefore);
      await expectRunning("app-v3");
      expect(versionLocks()).toEqual([]);
      expect(calls()).toEqual([`POST ${API}/bins/app/progress`, `POST ${API}/bins/app/progress`]);
      expect(bodies(`${API}/bins/app/progress`).map((b) => (b as { status: string }).status)).toEqual(["in_progress", "failed"]);
    } finally {
      writeFileSync(backup, good);
    }
  });

  test("a previous version that does not start: put back as it was, RUNNING on the current version, no hold, exit 1", async () => {
    const broken = artifact(serviceScript({ exitCode: 1, tag: "app-broken" }));
    writeFileSync(join(appHost.stateDir, "backups", "app", broken.sha256), broken.bytes);
    const manifest = readFileSync(appHost.manifest, "utf8").replace(`"previousVersion": "${v1.sha256}"`, `"previousVersion": "${broken.sha256}"`);
    writeFileSync(appHost.manifest, manifest);

    const r = await run(appHost, ["rollback", "app"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("event=update_failed phase=restart");
    expect(r.stderr).toContain("event=rollback_failed");
    expect(readFileSync(appPath)).toEqual(Buffer.from(v3.bytes));
    await expectRunning("app-v3");
    expect(readFileSync(appHost.manifest, "utf8")).toBe(manifest);
    expect(versionLocks()).toEqual([]);
    expect(readdirSync(appHost.binDir)).toEqual(["app"]);
    expect(bodies(`${API}/bins/app/progress`).map((b) => (b as { status: string }).status)).toEqual(["in_progress", "failed"]);
    expect(bodies(`${API}/bins/app`)).toEqual([]);
  });
});

test("a pass that starts while a rollback restarts the service leaves it alone: the version left was held before the swap", async () => {
  const env = slowHost.env(bm.api, { SUPERVISORCTL: sup.ctl });
  slowHost.writeManifest([{ serviceName: "slow", binaryName: "slow", version: slow1.sha256, previousVersion: "", port: 0 }]);
  bm.setTarget("slow", slow2);
  expect((await runBinProxy([], env)).code).toBe(0);
  expect(readFileSync(slowPath)).toEqual(Buffer.from(slow2.bytes));

  const rollback = spawnBinProxy(["rollback", "slow"], env);
  const rollbackOut = Promise.all([new Response(rollback.stdout).text(), new Response(rollback.stderr).text(), rollback.exited]);
  const deadline = Date.now() + 30_000;
  // Once the old binary is back on disk, the rollback restarts the service, which takes 3 s.
  while (!readFileSync(slowPath).equals(Buffer.from(slow1.bytes))) {
    if (Date.now() > deadline) throw new Error(`the rollback did not swap: ${(await rollbackOut).join("\n")}`);
    await Bun.sleep(20);
  }
  bm.clearRequests();
  const pass = await runBinProxy([], env);
  // The rollback was still at work (its lock still there) when the pass ended: they overlapped.
  expect(existsSync(join(slowHost.lockDir, `slow-${slow1.sha256}.lock`))).toBe(true);
  expect(pass).toEqual({ code: 0, stdout: "", stderr: "" });
  expect(bm.count("GET", `${API}/download/slow`)).toBe(0);

  const [stdout, stderr, code] = await rollbackOut;
  expect({ code, stdout }).toEqual({ code: 0, stdout: `slow: rolled back to ${short(slow1.sha256)}; the version it left is held until the API names another (bin-proxy retry slow lifts the hold)\n` });
  expect(stderr).toContain("event=reverted");
  expect(readFileSync(slowPath)).toEqual(Buffer.from(slow1.bytes));
  expect(await sup.status("slow")).toBe("RUNNING");
  expect(slowHost.readManifest().binaries[0]).toMatchObject({ version: slow1.sha256, previousVersion: slow2.sha256, hold: { version: slow2.sha256, failures: 0, until: null } });
});
