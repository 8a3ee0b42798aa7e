// End-to-end tests of one pass: the compiled dist/bin-proxy against the fake bin-manager, a real supervisord and temp hosts.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import {
  apiError,
  artifact,
  garbage,
  json,
  legacy,
  slow,
  startBinManager,
  status,
  truncated,
  type Artifact,
  type BinManager,
  type Behaviour,
  type RecordedRequest,
} from "../fixture/bin-manager.ts";
import { freePort, hostPool, runBinProxy, serviceScript, spawnBinProxy, type Host, type ManifestEntry } from "../fixture/host.ts";
import { mountOver } from "../fixture/mount.ts";
import { processAlive, startSupervisor, type Supervisor } from "../fixture/supervisor.ts";

const PKG_VERSION = (JSON.parse(readFileSync(resolve(import.meta.dir, "../../package.json"), "utf8")) as { version: string }).version;
const API = "/api/v1";
const MANIFEST_LOCK = ".bin-proxy-manifest.lock";
const short = (sha: string) => sha.slice(0, 12);
const bytesOf = (art: Artifact) => Buffer.from(art.bytes);
// supervisord and its restarts take seconds: these tests do not depend on the runner's default timeout.
const SUPERVISED_MS = 60_000;

// ---------------------------------------------------------------------------------------------
// The log: every line must be logfmt as SPEC §8 shows it, so reading the log checks its format.

interface LogRecord {
  line: string;
  time: string;
  level: string;
  event: string;
  fields: Record<string, string>;
}

const LOG_HEAD = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) level=(info|warn|error) (?:bin=("(?:[^"\\]|\\.)*"|[^\s"]+) )?event=([a-z_]+)(.*)$/;
const LOG_PAIR = /^ ([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^\s"]+)/;

/** Parses one log line, throwing when it is not logfmt: ISO time, level, optional bin, event, then key=value pairs. */
function parseLogLine(line: string): LogRecord {
  const head = LOG_HEAD.exec(line);
  if (!head) throw new Error(`not a logfmt line as SPEC §8 shows it: ${line}`);
  const [, time = "", level = "", bin, event = ""] = head;
  const fields: Record<string, string> = {};
  if (bin !== undefined) fields.bin = bin.startsWith('"') ? (JSON.parse(bin) as string) : bin;
  let rest = head[5] ?? "";
  while (rest !== "") {
    const pair = LOG_PAIR.exec(rest);
    if (!pair) throw new Error(`not logfmt after ${JSON.stringify(line.slice(0, line.length - rest.length))}: ${line}`);
    const [whole, key = "", value = ""] = pair;
    fields[key] = value.startsWith('"') ? (JSON.parse(value) as string) : value;
    rest = rest.slice(whole.length);
  }
  return { line, time, level, event, fields };
}

const parseLog = (text: string): LogRecord[] => text.split("\n").filter((l) => l !== "").map(parseLogLine);
const logOf = (host: Host): LogRecord[] => parseLog(host.log());
const eventsOf = (host: Host, event: string): LogRecord[] => logOf(host).filter((r) => r.event === event);

// ---------------------------------------------------------------------------------------------
// The world every test shares: one fake bin-manager and one supervisord whose programs are the
// managed binaries of their own hosts (one host per program, so manifests never mix).

let bm: BinManager;
let sup: Supervisor;
let supDir: string;
const hosts = hostPool();
const newHost = hosts.make;

interface Service {
  name: string;
  host: Host;
  path: string;
  v1: Artifact;
  port: number;
}

const services = new Map<string, Service>();
const service = (name: string): Service => services.get(name)!;

/** A manifest entry as the old script kept them. */
function entry(name: string, fields: Partial<ManifestEntry> = {}): ManifestEntry {
  return { serviceName: "", binaryName: name, version: "", previousVersion: "", port: 0, ...fields };
}

/** "METHOD path" of every request the API received since the test began. */
const calls = (): string[] => bm.requests.map((r) => `${r.method} ${r.path}`);
const requestsTo = (method: string, path: string): RecordedRequest[] => bm.requests.filter((r) => r.method === method && r.path === path);
const progressOf = (name: string) => requestsTo("POST", `${API}/bins/${name}/progress`).map((r) => r.body as Record<string, unknown>);
const downloadsOf = (name: string) => bm.requests.filter((r) => r.path === `${API}/download/${name}` || r.path === `${API}/releases/latest/${name}/download`);

/** Lock files a pass leaves behind: none, apart from the manifest's own lock, which is never removed. */
const locksLeft = (host: Host) => readdirSync(host.lockDir).filter((f) => f !== MANIFEST_LOCK).sort();

/** Mode, size, mtime and content of every file under the host root, to prove a run changed nothing. */
function snapshot(host: Host): Record<string, string> {
  const out: Record<string, string> = {};
  for (const rel of host.listFiles()) {
    const path = join(host.root, rel);
    const st = statSync(path);
    out[rel] = `${(st.mode & 0o7777).toString(8)} ${st.size} ${st.mtimeMs} ${new Bun.CryptoHasher("sha256").update(readFileSync(path)).digest("hex")}`;
  }
  return out;
}

/** Runs one pass on host and returns what it did; the environment is the host's, with extra on top. */
function pass(host: Host, extra: Record<string, string> = {}, args: string[] = []) {
  return runBinProxy(args, host.env(bm.api, extra));
}

beforeAll(async () => {
  bm = await startBinManager();
  supDir = mkdtempSync(join(tmpdir(), "bin-proxy-e2e-supervisor-"));
  const portServicePort = await freePort();
  const specs: { name: string; port?: number; mode?: number }[] = [
    { name: "upd", mode: 0o750 }, // update, then no-op
    { name: "rf" }, // restart failure
    { name: "ph", port: portServicePort }, // port health failure
    { name: "noctl" }, // SUPERVISORCTL=""
    { name: "ctlconf" }, // SUPERVISORCTL_CONFIG
    { name: "fin" }, // finishing an interrupted update
    { name: "adp" }, // adopting what is on disk
  ];
  for (const spec of specs) {
    const host = newHost();
    const content = serviceScript({ tag: `${spec.name}-v1`, ...(spec.port ? { port: spec.port } : {}) });
    const path = host.writeBinary(spec.name, content, spec.mode);
    services.set(spec.name, { name: spec.name, host, path, v1: artifact(content), port: spec.port ?? 0 });
  }
  sup = await startSupervisor(supDir, [...services.values()].map((s) => ({ name: s.name, command: s.path })));
}, SUPERVISED_MS);

afterAll(async () => {
  await sup?.stop();
  await bm?.stop();
  hosts.cleanup();
  if (supDir) rmSync(supDir, { recursive: true, force: true });
}, SUPERVISED_MS);

beforeEach(() => bm.clearRequests());

describe("with a supervised service", () => {
  test("update: downloads, verifies, swaps atomically, restarts, reports; prints nothing", async () => {
    const s = service("upd");
    const v2 = artifact(serviceScript({ tag: "upd-v2" }));
    bm.setTarget("upd", v2, "2.0.0");
    s.host.writeManifest([entry("upd", { serviceName: "upd", version: s.v1.sha256 })]);
    expect(await sup.status("upd")).toBe("RUNNING");
    const pidBefore = await sup.pid("upd");

    const r = await pass(s.host, { SUPERVISORCTL: sup.ctl });
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });

    expect(readFileSync(s.path)).toEqual(bytesOf(v2));
    expect(statSync(s.path).mode & 0o7777).toBe(0o750); // the current binary's mode is kept
    expect(await sup.status("upd")).toBe("RUNNING");
    const pidAfter = await sup.pid("upd");
    expect(pidAfter).not.toBe(pidBefore);
    expect(processAlive(pidBefore)).toBe(false);

    const m = s.host.readManifest().binaries[0]!;
    expect(m.version).toBe(v2.sha256);
    expect(m.previousVersion).toBe(s.v1.sha256);
    expect(m.hold).toBeUndefined();
    // The old binary is backed up under the state dir; nothing but the binary stays in BIN_DIR.
    expect(readFileSync(join(s.host.stateDir, "backups", "upd", s.v1.sha256))).toEqual(bytesOf(s.v1));
    expect(readdirSync(s.host.binDir)).toEqual(["upd"]);
    expect(locksLeft(s.host)).toEqual([]);

    expect(progressOf("upd").map((p) => p.status)).toEqual(["in_progress", "success"]);
    expect(requestsTo("POST", `${API}/bins/upd`).map((q) => q.body)).toEqual([{ nodeName: "test-node", binName: "upd", sha256: v2.sha256, version: "2.0.0" }]);
    const updated = eventsOf(s.host, "updated");
    expect(updated).toHaveLength(1);
    expect(updated[0]!.fields).toMatchObject({ bin: "upd", from: short(s.v1.sha256), to: short(v2.sha256) });
  }, SUPERVISED_MS);

  test("no-op: same hash, so no download, no restart, no rewrite, nothing printed", async () => {
    const s = service("upd");
    const v2 = artifact(serviceScript({ tag: "upd-v2" }));
    expect(readFileSync(s.path)).toEqual(bytesOf(v2)); // left by the update test
    const pidBefore = await sup.pid("upd");
    const before = snapshot(s.host);
    const logBefore = s.host.log();

    const r = await pass(s.host, { SUPERVISORCTL: sup.ctl });
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    // The node is known and its info unchanged: one GET each, and nothing else at all.
    expect(calls()).toEqual([`GET ${API}/keepalive`, `GET ${API}/bins/upd`]);
    expect(await sup.pid("upd")).toBe(pidBefore);
    const after = snapshot(s.host);
    expect(after["etc/bin-manifests.json"]).toBe(before["etc/bin-manifests.json"]!);
    expect(after["bin/upd"]).toBe(before["bin/upd"]!);
    expect(s.host.log()).toBe(logBefore);

    const once = await pass(s.host, { SUPERVISORCTL: sup.ctl }, ["--once"]);
    expect(once).toEqual({ code: 0, stdout: "", stderr: "" });
  }, SUPERVISED_MS);

  test("restart failure: rolled back to the byte-identical old binary, RUNNING again, reported failed, exit 1", async () => {
    const s = service("rf");
    const broken = artifact(serviceScript({ exitCode: 1, tag: "rf-v2-broken" }));
    bm.setTarget("rf", broken);
    s.host.writeManifest([entry("rf", { serviceName: "rf", version: s.v1.sha256 })]);
    expect(await sup.status("rf")).toBe("RUNNING");
    const pidBefore = await sup.pid("rf");
    const manifestBefore = s.host.readManifest().binaries[0]!;
    const t0 = Date.now();

    const r = await pass(s.host, { SUPERVISORCTL: sup.ctl, BIN_PROXY_RETRY_BACKOFF: "1000" });
    const t1 = Date.now();
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");

    expect(readFileSync(s.path)).toEqual(bytesOf(s.v1));
    expect(await sup.status("rf")).toBe("RUNNING");
    const pidAfter = await sup.pid("rf");
    expect(pidAfter).not.toBe(pidBefore); // the restored binary was started again
    expect(processAlive(pidAfter)).toBe(true);

    const m = s.host.readManifest().binaries[0]!;
    expect(m.version).toBe(manifestBefore.version!);
    expect(m.previousVersion).toBe("");
    // The failed target is held: BIN_PROXY_RETRY_BACKOFF seconds after this first failure.
    const hold = m.hold as { version: string; failures: number; until: string };
    expect(hold.version).toBe(broken.sha256);
    expect(hold.failures).toBe(1);
    expect(Date.parse(hold.until)).toBeGreaterThanOrEqual(t0 + 1000_000 - 1000);
    expect(Date.parse(hold.until)).toBeLessThanOrEqual(t1 + 1000_000);

    const reports = progressOf("rf");
    expect(reports.map((p) => p.status)).toEqual(["in_progress", "failed"]);
    expect(reports.at(-1)).toMatchObject({ nodeName: "test-node", binName: "rf", targetHash: broken.sha256 });
    expect(requestsTo("POST", `${API}/bins/rf`)).toEqual([]);

    // The cause is logged (and said on stderr) in words: which phase, which program, what state.
    const failed = eventsOf(s.host, "update_failed");
    expect(failed).toHaveLength(1);
    expect(failed[0]!.level).toBe("error");
    expect(failed[0]!.fields).toMatchObject({ bin: "rf", phase: "restart", target: short(broken.sha256) });
    expect(failed[0]!.fields.error).toMatch(/rf/);
    expect(failed[0]!.fields.error).toMatch(/spawn error|FATAL|BACKOFF|EXITED/);
    expect(r.stderr).toContain(failed[0]!.line);
    expect(eventsOf(s.host, "rolled_back")[0]!.fields).toMatchObject({ bin: "rf", to: short(s.v1.sha256) });
    expect(readdirSync(s.host.binDir)).toEqual(["rf"]);
    expect(locksLeft(s.host)).toEqual([]);

    // Within the backoff the next pass does not try the same target again: held is not a failure.
    bm.clearRequests();
    const again = await pass(s.host, { SUPERVISORCTL: sup.ctl });
    expect(again).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(downloadsOf("rf")).toEqual([]);
    expect(await sup.pid("rf")).toBe(pidAfter);
    expect(eventsOf(s.host, "held")).toHaveLength(1);
  }, SUPERVISED_MS);

  test("port health check failure: the new binary runs but does not listen, so it is rolled back", async () => {
    const s = service("ph");
    const deaf = artifact(serviceScript({ tag: "ph-v2-deaf" })); // runs forever, never listens
    bm.setTarget("ph", deaf);
    s.host.writeManifest([entry("ph", { serviceName: "ph", version: s.v1.sha256, port: s.port })]);
    expect(await sup.status("ph")).toBe("RUNNING");

    const r = await pass(s.host, { SUPERVISORCTL: sup.ctl, BIN_PROXY_HEALTH_TIMEOUT: "5" });
    expect(r.code).toBe(1);

    expect(readFileSync(s.path)).toEqual(bytesOf(s.v1));
    expect(await sup.status("ph")).toBe("RUNNING");
    // The restored service listens again.
    const conn = await Bun.connect({ hostname: "127.0.0.1", port: s.port, socket: { data() {} } });
    conn.end();

    const failed = eventsOf(s.host, "update_failed");
    expect(failed).toHaveLength(1);
    expect(failed[0]!.fields).toMatchObject({ bin: "ph", phase: "restart" });
    expect(failed[0]!.fields.error).toContain(`127.0.0.1:${s.port}`);
    expect(s.host.readManifest().binaries[0]!.version).toBe(s.v1.sha256);
    expect(progressOf("ph").map((p) => p.status)).toEqual(["in_progress", "failed"]);
    expect(requestsTo("POST", `${API}/bins/ph`)).toEqual([]);
  }, SUPERVISED_MS);

  test('SUPERVISORCTL="" installs the update without restarting anything', async () => {
    const s = service("noctl");
    const v2 = artifact(serviceScript({ tag: "noctl-v2" }));
    bm.setTarget("noctl", v2);
    s.host.writeManifest([entry("noctl", { serviceName: "noctl", version: s.v1.sha256 })]);
    const pidBefore = await sup.pid("noctl");

    const r = await pass(s.host, { SUPERVISORCTL: "" });
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(readFileSync(s.path)).toEqual(bytesOf(v2));
    expect(await sup.pid("noctl")).toBe(pidBefore);
    expect(s.host.readManifest().binaries[0]!.version).toBe(v2.sha256);
    expect(progressOf("noctl").map((p) => p.status)).toEqual(["in_progress", "success"]);
    // The operator is told the service still runs the old code (SPEC §6, issue: not restarted is said, not hidden).
    expect(eventsOf(s.host, "updated")[0]!.fields.not_restarted).toBe("SUPERVISORCTL is empty: noctl still runs the old binary until it is restarted");
  }, SUPERVISED_MS);

  test("SUPERVISORCTL_CONFIG is passed to supervisorctl as -c: the plain supervisorctl restarts the service of that supervisord", async () => {
    const s = service("ctlconf");
    const v2 = artifact(serviceScript({ tag: "ctlconf-v2" }));
    bm.setTarget("ctlconf", v2);
    s.host.writeManifest([entry("ctlconf", { serviceName: "ctlconf", version: s.v1.sha256 })]);
    const pidBefore = await sup.pid("ctlconf");

    const plain = Bun.which("supervisorctl") ?? "/usr/bin/supervisorctl";
    const r = await pass(s.host, { SUPERVISORCTL: plain, SUPERVISORCTL_CONFIG: sup.conf });
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(readFileSync(s.path)).toEqual(bytesOf(v2));
    expect(await sup.pid("ctlconf")).not.toBe(pidBefore);
    expect(await sup.status("ctlconf")).toBe("RUNNING");
    expect(s.host.readManifest().binaries[0]!.version).toBe(v2.sha256);
  }, SUPERVISED_MS);

  test("target on disk but the manifest names the old version: a pass died after the swap, so restart and report", async () => {
    const s = service("fin");
    const v2 = artifact(serviceScript({ tag: "fin-v2" }));
    bm.setTarget("fin", v2, "2.0.0");
    // What an interrupted pass leaves: the backup of v1, v2 swapped in, the manifest still on v1.
    mkdirSync(join(s.host.stateDir, "backups", "fin"), { recursive: true });
    copyFileSync(s.path, join(s.host.stateDir, "backups", "fin", s.v1.sha256));
    writeFileSync(s.path, v2.bytes);
    s.host.writeManifest([entry("fin", { serviceName: "fin", version: s.v1.sha256 })]);
    const pidBefore = await sup.pid("fin");

    const r = await pass(s.host, { SUPERVISORCTL: sup.ctl });
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(downloadsOf("fin")).toEqual([]);
    expect(await sup.status("fin")).toBe("RUNNING");
    expect(await sup.pid("fin")).not.toBe(pidBefore);
    const m = s.host.readManifest().binaries[0]!;
    expect(m.version).toBe(v2.sha256);
    expect(m.previousVersion).toBe(s.v1.sha256);
    expect(progressOf("fin").map((p) => p.status)).toEqual(["success"]);
    expect(requestsTo("POST", `${API}/bins/fin`).map((q) => q.body)).toEqual([{ nodeName: "test-node", binName: "fin", sha256: v2.sha256, version: "2.0.0" }]);
    expect(readFileSync(join(s.host.stateDir, "backups", "fin", s.v1.sha256))).toEqual(bytesOf(s.v1));
  }, SUPERVISED_MS);

  test("target on disk and an empty manifest version: adopted, recorded and reported, nothing restarted", async () => {
    const s = service("adp");
    bm.setTarget("adp", s.v1);
    s.host.writeManifest([entry("adp", { serviceName: "adp" })]);
    const pidBefore = await sup.pid("adp");

    const r = await pass(s.host, { SUPERVISORCTL: sup.ctl });
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(await sup.pid("adp")).toBe(pidBefore);
    expect(s.host.readManifest().binaries[0]!.version).toBe(s.v1.sha256);
    // Every installed version reaches the API (SPEC §12), an adopted one too; no progress, nothing was downloaded.
    expect(calls().filter((c) => c.includes("/bins/adp"))).toEqual([`GET ${API}/bins/adp`, `POST ${API}/bins/adp`]);
    expect(requestsTo("POST", `${API}/bins/adp`).map((q) => q.body)).toEqual([{ nodeName: "test-node", binName: "adp", sha256: s.v1.sha256, version: s.v1.sha256.slice(0, 12) }]);
    expect(eventsOf(s.host, "adopted")).toHaveLength(1);
  }, SUPERVISED_MS);
});

describe("downloads", () => {
  const cases: [string, (bytes: Uint8Array) => Behaviour | Uint8Array][] = [
    ["wrong bytes", () => new TextEncoder().encode("#!/bin/sh\necho evil\n")],
    ["HTTP 500", () => status(500)],
    ["a body cut short", (bytes) => truncated(bytes)],
  ];
  for (const [what, primary] of cases) {
    test(`${what} on the primary URL, good bytes on the fallback: updated, quietly`, async () => {
      const host = newHost();
      const v1 = artifact(serviceScript({ tag: "fb-v1" }));
      const v2 = artifact(serviceScript({ tag: "fb-v2" }));
      const path = host.writeBinary("fb", v1.bytes);
      host.writeManifest([entry("fb", { version: v1.sha256 })]);
      bm.setTarget("fb", v2);
      bm.setPrimary("fb", primary(v2.bytes));
      try {
        const r = await pass(host);
        expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
      } finally {
        bm.setPrimary("fb", null);
      }
      expect(readFileSync(path)).toEqual(bytesOf(v2));
      expect(downloadsOf("fb").map((q) => q.path)).toEqual([`${API}/download/fb`, `${API}/releases/latest/fb/download`]);
      const attempt = eventsOf(host, "download_attempt_failed");
      expect(attempt).toHaveLength(1);
      expect(attempt[0]!.fields.reason).not.toBe("");
      if (what === "wrong bytes") expect(attempt[0]!.fields.reason).toContain("does not match");
      expect(readdirSync(host.binDir)).toEqual(["fb"]);
      expect(host.readManifest().binaries[0]!.version).toBe(v2.sha256);
    });
  }

  test("both URLs bad: exit 1, binary untouched, no file left, held; a new target is tried at once", async () => {
    const host = newHost();
    const v1 = artifact(serviceScript({ tag: "bb-v1" }));
    const v2 = artifact(serviceScript({ tag: "bb-v2" }));
    const path = host.writeBinary("bb", v1.bytes);
    host.writeManifest([entry("bb", { version: v1.sha256 })]);
    bm.setTarget("bb", v2);
    bm.setPrimary("bb", new TextEncoder().encode("not it"));
    bm.setFallback("bb", garbage());
    try {
      const r = await pass(host);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      const failed = eventsOf(host, "update_failed");
      expect(failed).toHaveLength(1);
      expect(failed[0]!.fields).toMatchObject({ bin: "bb", phase: "download" });
      expect(failed[0]!.fields.error).toContain(short(v2.sha256));
      expect(r.stderr).toContain(failed[0]!.line);
      expect(readFileSync(path)).toEqual(bytesOf(v1));
      expect(readdirSync(host.binDir)).toEqual(["bb"]);
      expect(locksLeft(host)).toEqual([]);
      const m = host.readManifest().binaries[0]!;
      expect(m.version).toBe(v1.sha256);
      expect((m.hold as { version: string }).version).toBe(v2.sha256);
      expect(progressOf("bb").map((p) => p.status)).toEqual(["in_progress", "failed"]);
      expect(requestsTo("POST", `${API}/bins/bb`)).toEqual([]);

      bm.clearRequests();
      expect(await pass(host)).toEqual({ code: 0, stdout: "", stderr: "" });
      expect(downloadsOf("bb")).toEqual([]);
    } finally {
      bm.setPrimary("bb", null);
      bm.setFallback("bb", null);
    }

    const v3 = artifact(serviceScript({ tag: "bb-v3" }));
    bm.setTarget("bb", v3);
    expect(await pass(host)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(readFileSync(path)).toEqual(bytesOf(v3));
    const m = host.readManifest().binaries[0]!;
    expect(m.version).toBe(v3.sha256);
    expect(m.hold).toBeUndefined();
  });

  test("first install: no binary yet, installed 0755, no backup, previousVersion empty", async () => {
    const host = newHost();
    const v1 = artifact(serviceScript({ tag: "fresh-v1" }));
    bm.setTarget("fresh", v1);
    host.writeManifest([entry("fresh")]);
    expect(await pass(host)).toEqual({ code: 0, stdout: "", stderr: "" });
    const path = join(host.binDir, "fresh");
    expect(readFileSync(path)).toEqual(bytesOf(v1));
    const st = statSync(path);
    expect(st.mode & 0o7777).toBe(0o755);
    expect([st.uid, st.gid]).toEqual([0, 0]);
    const m = host.readManifest().binaries[0]!;
    expect([m.version, m.previousVersion]).toEqual([v1.sha256, ""]);
    expect(existsSync(join(host.stateDir, "backups", "fresh"))).toBe(false);
    expect(eventsOf(host, "updated")[0]!.fields).toMatchObject({ bin: "fresh", from: "none", to: short(v1.sha256) });
  });

  test("a bin-manager answering a top-level sha256 without the envelope", async () => {
    const host = newHost();
    const v1 = artifact(serviceScript({ tag: "leg-v1" }));
    const v2 = artifact(serviceScript({ tag: "leg-v2" }));
    const path = host.writeBinary("leg", v1.bytes);
    host.writeManifest([entry("leg", { version: v1.sha256 })]);
    bm.setTarget("leg", v2);
    bm.override("GET", `${API}/bins/leg`, legacy(v2.sha256, "7.0.1"));
    try {
      expect(await pass(host)).toEqual({ code: 0, stdout: "", stderr: "" });
    } finally {
      bm.override("GET", `${API}/bins/leg`, null);
    }
    expect(readFileSync(path)).toEqual(bytesOf(v2));
    expect(requestsTo("POST", `${API}/bins/leg`).map((q) => (q.body as { version: string }).version)).toEqual(["7.0.1"]);
  });

  test("a bad answer for one binary fails that one (exit 1) and the next is still updated; a keepalive failure stops nothing", async () => {
    const host = newHost();
    const v1 = artifact(serviceScript({ tag: "bad-v1" }));
    const good = artifact(serviceScript({ tag: "good-v2" }));
    const badPath = host.writeBinary("bad", v1.bytes);
    host.writeManifest([entry("bad", { version: v1.sha256 }), entry("good")]);
    bm.setTarget("bad", artifact("unused"));
    bm.setTarget("good", good);
    const answers: [string, Behaviour, RegExp][] = [
      ["HTTP 500", status(500), /HTTP 500/],
      ["garbage", garbage(), /not JSON/],
      ["code != 0", apiError(3, "binary retired"), /code 3: binary retired/],
      ["a hash that is a path", json({ code: 0, message: "ok", data: { sha256: "../../etc/passwd", version: "x" } }), /64 hex/],
      ["a short hash", json({ code: 0, message: "ok", data: { sha256: "ab".repeat(31), version: "x" } }), /64 hex/],
    ];
    bm.override("GET", `${API}/keepalive`, status(503));
    try {
      for (const [what, answer, reason] of answers) {
        bm.override("GET", `${API}/bins/bad`, answer);
        rmSync(join(host.binDir, "good"), { force: true });
        const r = await pass(host);
        expect({ what, code: r.code }).toEqual({ what, code: 1 });
        const why = eventsOf(host, "target_unavailable").at(-1)!;
        expect(why.fields.bin).toBe("bad");
        expect(why.fields.error).toMatch(reason);
        expect(r.stderr).toContain(why.line);
        expect(readFileSync(badPath)).toEqual(bytesOf(v1));
        expect(readFileSync(join(host.binDir, "good"))).toEqual(bytesOf(good));
      }
    } finally {
      bm.override("GET", `${API}/bins/bad`, null);
      bm.override("GET", `${API}/keepalive`, null);
    }
    expect(downloadsOf("bad")).toEqual([]);
    expect(eventsOf(host, "keepalive_failed").length).toBe(answers.length);
    expect(eventsOf(host, "keepalive_failed")[0]!.level).toBe("warn");
  });

  test("DOWNLOAD_BASE_URL is where the primary download comes from", async () => {
    const host = newHost();
    const v1 = artifact(serviceScript({ tag: "mirror-v1" }));
    bm.setTarget("mir", v1);
    bm.override("GET", "/mirror/bins/mir", () => new Response(v1.bytes.slice()));
    host.writeManifest([entry("mir")]);
    try {
      expect(await pass(host, { DOWNLOAD_BASE_URL: `${bm.origin}/mirror/bins` })).toEqual({ code: 0, stdout: "", stderr: "" });
    } finally {
      bm.override("GET", "/mirror/bins/mir", null);
    }
    expect(readFileSync(join(host.binDir, "mir"))).toEqual(bytesOf(v1));
    expect(calls().filter((c) => c.includes("mir") && !c.includes("/api/v1/bins/"))).toEqual(["GET /mirror/bins/mir"]);
  });

  test.each([
    ["a disk filesystem (O_DIRECT)", false],
    ["ramfs, which refuses O_DIRECT (written through the page cache)", true],
  ])("a binary of several write blocks and an odd tail lands exactly on %s", async (_, onRamfs) => {
    const host = newHost();
    const unmountBinDir = onRamfs ? mountOver(host.binDir, ["-t", "ramfs", "-o", "mode=0755", "ramfs"]) : () => {};
    // 9 MiB + 4097 bytes: two full 4 MiB blocks, then a tail that is not a multiple of 4 KiB.
    const bytes = new Uint8Array(9 * 1024 * 1024 + 4097);
    for (let i = 0; i < bytes.length; i += 65536) crypto.getRandomValues(bytes.subarray(i, Math.min(bytes.length, i + 65536)));
    const big = artifact(bytes);
    bm.setTarget("big", big);
    host.writeManifest([entry("big")]);
    try {
      expect(await pass(host)).toEqual({ code: 0, stdout: "", stderr: "" });
      expect(Buffer.compare(readFileSync(join(host.binDir, "big")), Buffer.from(bytes))).toBe(0);
      expect(host.readManifest().binaries[0]!.version).toBe(big.sha256);
      expect(readdirSync(host.binDir)).toEqual(["big"]);
    } finally {
      unmountBinDir();
    }
  });
});

describe("wire format (SPEC §5)", () => {
  test("every request of an update: paths, query and body fields exactly, token on each, never logged", async () => {
    const host = newHost();
    const token = "tok-3f9a1c77e2d04b5d";
    const v1 = artifact(serviceScript({ tag: "wire-v1" }));
    const v2 = artifact(serviceScript({ tag: "wire-v2" }));
    host.writeBinary("wire", v1.bytes);
    host.writeManifest([entry("wire", { version: v1.sha256 })]);
    bm.setTarget("wire", v2, "v2.4.6");
    const env = { NODE_NAME: "wire-node", BIN_MANAGER_TOKEN: token };

    const r = await pass(host, env);
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(calls()).toEqual([
      `GET ${API}/keepalive`,
      `POST ${API}/keepalive`,
      `GET ${API}/bins/wire`,
      `POST ${API}/bins/wire/progress`,
      `GET ${API}/download/wire`,
      `POST ${API}/bins/wire/progress`,
      `POST ${API}/bins/wire`,
    ]);
    const [getAlive, postAlive, getBin, started, download, finished, installed] = bm.requests;
    const cpuArch = Bun.spawnSync(["uname", "-m"]).stdout.toString().trim();
    const osRelease = Bun.spawnSync(["/bin/sh", "-c", '. /etc/os-release && printf %s "$PRETTY_NAME"']).stdout.toString();
    const nodeInfo = { cpuArch, osRelease, nodeName: "wire-node", binProxyVersion: PKG_VERSION };

    expect(getAlive!.query).toEqual({ nodeName: "wire-node" });
    expect(getAlive!.body).toBeUndefined();
    expect(postAlive!.query).toEqual({});
    expect(postAlive!.body).toEqual(nodeInfo);
    // Who asks (SPEC §10): the node and its architecture; the download is addressed by its content.
    expect(getBin!.query).toEqual({ nodeName: "wire-node", cpuArch });
    expect(getBin!.body).toBeUndefined();
    expect(download!.query).toEqual({ sha256: v2.sha256 });
    expect(download!.body).toBeUndefined();
    expect(started!.body).toEqual({ nodeName: "wire-node", binName: "wire", targetHash: v2.sha256, processingTime: expect.any(Number), status: "in_progress" });
    expect(finished!.body).toEqual({ nodeName: "wire-node", binName: "wire", targetHash: v2.sha256, processingTime: expect.any(Number), status: "success" });
    for (const p of [started, finished]) {
      const seconds = (p!.body as { processingTime: number }).processingTime;
      expect(Number.isInteger(seconds) && seconds >= 0).toBe(true);
    }
    expect(installed!.body).toEqual({ nodeName: "wire-node", binName: "wire", sha256: v2.sha256, version: "v2.4.6" });
    for (const q of bm.requests) {
      expect(q.headers.authorization).toBe(`Bearer ${token}`);
      if (q.method === "POST") expect(q.headers["content-type"]).toBe("application/json");
    }
    expect(host.readManifest().nodeInfo).toEqual(nodeInfo);
    expect(host.log()).not.toContain(token);
    // The API's release name is kept beside the hash, for log lines and status.
    expect(host.readManifest().binaries[0]!.versionName).toBe("v2.4.6");
    expect(host.log()).toMatch(/ event=updated from=\S+ to=\S+ version=v2.4.6 /);
    const status = await runBinProxy(["status"], host.env(bm.api, env));
    expect(status.stdout.split("\n")[1]!.split(/ {2,}/)[3]).toBe(`${short(v2.sha256)} (v2.4.6)`);

    // Known and unchanged: no POST keepalive. Node info changed (a new bin-proxy version, say): POST again.
    bm.clearRequests();
    expect(await pass(host, env)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(calls()).toEqual([`GET ${API}/keepalive`, `GET ${API}/bins/wire`]);
    const doc = host.readManifest();
    host.writeManifest(doc.binaries, { nodeInfo: { ...nodeInfo, binProxyVersion: "0.0.1" } });
    bm.clearRequests();
    expect(await pass(host, env)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(calls()).toEqual([`GET ${API}/keepalive`, `POST ${API}/keepalive`, `GET ${API}/bins/wire`]);
    expect(bm.requests[1]!.body).toEqual(nodeInfo);
    expect(host.readManifest().nodeInfo).toEqual(nodeInfo);
  });
});

describe("locks", () => {
  const now = () => Math.floor(Date.now() / 1000);

  /** A host with binary NAME at v1 and the API naming v2. */
  function lockHost(name: string) {
    const host = newHost();
    const v1 = artifact(serviceScript({ tag: `${name}-v1` }));
    const v2 = artifact(serviceScript({ tag: `${name}-v2` }));
    const path = host.writeBinary(name, v1.bytes);
    host.writeManifest([entry(name, { version: v1.sha256 })]);
    bm.setTarget(name, v2);
    return { host, v1, v2, path, lock: join(host.lockDir, `${name}-${v2.sha256}.lock`) };
  }

  test("a fresh lock (another run is on it): busy, exit 0, nothing touched", async () => {
    const { host, v1, path, lock } = lockHost("lkf");
    writeFileSync(lock, `${now() - 5}\n`);
    const before = snapshot(host);
    const r = await pass(host);
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(readFileSync(path)).toEqual(bytesOf(v1));
    expect(downloadsOf("lkf")).toEqual([]);
    expect(progressOf("lkf")).toEqual([]);
    const lockRel = `lock/${basename(lock)}`;
    expect(snapshot(host)[lockRel]).toBe(before[lockRel]!);
    expect(host.readManifest().binaries[0]).toEqual(entry("lkf", { version: v1.sha256 }));
    expect(eventsOf(host, "busy")).toHaveLength(1);
  });

  test("a symlink planted at the lock's path: --dry-run says the pass would fail on it, as the pass does; nothing is followed", async () => {
    const { host, v1, path, lock } = lockHost("lks");
    const decoy = join(host.root, "decoy");
    const decoyText = `${now() - 5}\n`;
    writeFileSync(decoy, decoyText);
    symlinkSync(decoy, lock);
    const dry = await pass(host, {}, ["--dry-run"]);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(/^lks: would fail: its lock cannot be used: .*ELOOP/);
    const r = await pass(host);
    expect(r.code).toBe(1);
    expect(eventsOf(host, "update_failed")[0]!.fields).toMatchObject({ bin: "lks", phase: "lock" });
    expect(readFileSync(path)).toEqual(bytesOf(v1));
    expect(readFileSync(decoy, "utf8")).toBe(decoyText); // never written through the link
    expect(downloadsOf("lks")).toEqual([]);
  });

  test("a fresh lock whose bin-proxy holder still runs is busy; one whose recorded holder is gone is taken over", async () => {
    const { host, v2, path, lock } = lockHost("lkh");
    const time = now() - 5;
    writeFileSync(lock, `${time}\n`);
    const holder = join(host.lockDir, `.lkh-${v2.sha256}.lock.holder`);
    const ino = statSync(lock).ino;
    const selfStat = readFileSync("/proc/self/stat", "utf8");
    const selfStart = selfStat.slice(selfStat.lastIndexOf(")") + 2).split(" ")[19];
    writeFileSync(holder, `${process.pid} ${selfStart} ${ino} ${time}\n`);
    expect(await pass(host)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(eventsOf(host, "busy")).toHaveLength(1);
    expect(downloadsOf("lkh")).toEqual([]);

    const gone = Bun.spawn(["true"]);
    await gone.exited;
    writeFileSync(holder, `${gone.pid} 1 ${ino} ${time}\n`);
    expect(await pass(host)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(readFileSync(path)).toEqual(bytesOf(v2));
    expect(eventsOf(host, "lock_taken_over")[0]!.fields.reason).toContain(`holder pid ${gone.pid} no longer exists`);
    expect(locksLeft(host)).toEqual([]);
  });

  test("a stale lock (older than LOCK_TIMEOUT) is taken over and the update proceeds", async () => {
    const { host, v2, path, lock } = lockHost("lks");
    writeFileSync(lock, `${now() - 601}\n`);
    expect(await pass(host, { LOCK_TIMEOUT: "600" })).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(readFileSync(path)).toEqual(bytesOf(v2));
    expect(eventsOf(host, "lock_taken_over")[0]!.fields.reason).toMatch(/^stale: \d+s old$/);
    expect(locksLeft(host)).toEqual([]);
  });

  test("locks of other versions are removed with their partial files; name-extra-… and other binaries' are kept", async () => {
    const { host, v2, path } = lockHost("lko");
    const old = artifact("an older target");
    const otherVersion = `lko-${old.sha256}.lock`;
    const kept = [`lko-extra-${old.sha256}.lock`, "lko-extra.lock", `lkox-${old.sha256}.lock`, `lko-${old.sha256.toUpperCase()}.lock`];
    for (const f of [otherVersion, ...kept]) writeFileSync(join(host.lockDir, f), `${now()}\n`);
    const partial = join(host.binDir, `.lko.${old.sha256}.part`);
    writeFileSync(partial, "half a download");
    const before = snapshot(host);

    expect(await pass(host)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(readFileSync(path)).toEqual(bytesOf(v2));
    expect(existsSync(partial)).toBe(false);
    expect(locksLeft(host)).toEqual([...kept].sort());
    const after = snapshot(host);
    for (const f of kept) expect(after[`lock/${f}`]).toBe(before[`lock/${f}`]!);
    expect(eventsOf(host, "obsolete_version_dropped")[0]!.fields).toMatchObject({ bin: "lko", version: short(old.sha256) });
  });

  test("a long download: old-format lock with a holder record, a 0600 partial, in_progress every 10 s; a newer target ends it", async () => {
    const host = newHost();
    const v1 = artifact(serviceScript({ tag: "long-v1" }));
    const slowTarget = artifact(new Uint8Array(200_000).fill(7));
    const newer = artifact(serviceScript({ tag: "long-v3" }));
    const path = host.writeBinary("long", v1.bytes);
    host.writeManifest([entry("long", { version: v1.sha256 })]);
    bm.setTarget("long", slowTarget);
    bm.setPrimary("long", slow(slowTarget.bytes, 2000)); // 100 s: it will be ended long before
    const lock = join(host.lockDir, `long-${slowTarget.sha256}.lock`);
    const holder = join(host.lockDir, `.long-${slowTarget.sha256}.lock.holder`);
    const partial = join(host.binDir, `.long.${slowTarget.sha256}.part`);
    const env = host.env(bm.api);
    const first = spawnBinProxy([], env);
    try {
      const deadline = Date.now() + 30_000;
      while (!(existsSync(partial) && existsSync(holder) && progressOf("long").length >= 2)) {
        if (Date.now() > deadline) throw new Error(`the slow download did not get going: ${host.log()}`);
        await Bun.sleep(100);
      }
      const taken = Number(readFileSync(lock, "utf8").match(/^(\d+)\n$/)![1]);
      expect(Math.abs(taken - now())).toBeLessThan(120);
      expect(Number(readFileSync(holder, "utf8").split(" ")[0])).toBe(first.pid);
      expect(statSync(partial).mode & 0o777).toBe(0o600);
      const reports = progressOf("long");
      expect(reports.every((p) => p.status === "in_progress")).toBe(true);
      expect(reports[1]!.processingTime as number).toBeGreaterThanOrEqual(10);

      // The API moves on: the next run takes the new version's lock and ends the old download.
      bm.setPrimary("long", null);
      bm.setTarget("long", newer);
      const second = await runBinProxy([], env);
      expect(second).toEqual({ code: 0, stdout: "", stderr: "" });
      const ended = await Promise.race([first.exited, Bun.sleep(15_000).then(() => "still running")]);
      expect(ended).not.toBe("still running");
      expect(ended).not.toBe(0);
      expect(readFileSync(path)).toEqual(bytesOf(newer));
      expect(existsSync(partial)).toBe(false);
      expect(readdirSync(host.binDir)).toEqual(["long"]);
      expect(locksLeft(host)).toEqual([]);
      expect(host.readManifest().binaries[0]!.version).toBe(newer.sha256);
    } finally {
      bm.setPrimary("long", null);
      try {
        process.kill(-first.pid, "SIGKILL");
      } catch {
        // ended, as it should have
      }
    }
  }, 90_000);
});

describe("manifest and settings", () => {
  test("--dry-run says what a pass would do and writes nothing, sends no POST", async () => {
    const host = newHost();
    const same = artifact(serviceScript({ tag: "dry-same" }));
    const v1 = artifact(serviceScript({ tag: "dry-v1" }));
    const v2 = artifact(serviceScript({ tag: "dry-v2" }));
    const v3 = artifact(serviceScript({ tag: "dry-v3" }));
    host.writeBinary("dsame", same.bytes);
    host.writeBinary("dupd", v1.bytes);
    host.writeBinary("dbusy", v1.bytes);
    host.writeBinary("dgone", v1.bytes);
    host.writeBinary("dstale", v1.bytes);
    host.writeBinary("dheld", v1.bytes);
    const until = new Date(Date.now() + 3600_000).toISOString();
    host.writeManifest([
      entry("dsame", { version: same.sha256 }),
      entry("dupd", { version: v1.sha256 }),
      entry("dbusy", { version: v1.sha256 }),
      entry("dgone", { version: v1.sha256 }),
      entry("dstale", { version: v1.sha256 }),
      entry("dnew"),
      entry("dheld", { version: v1.sha256, hold: { version: v3.sha256, failures: 2, until } }),
    ]);
    bm.setTarget("dsame", same);
    bm.setTarget("dupd", v2);
    bm.setTarget("dbusy", v2);
    bm.setTarget("dnew", v3);
    bm.setTarget("dheld", v3);
    bm.setTarget("dgone", v2);
    bm.setTarget("dstale", v2);
    const now = Math.floor(Date.now() / 1000);
    writeFileSync(join(host.lockDir, `dbusy-${v2.sha256}.lock`), `${now}\n`);
    // A fresh lock whose recorded holder has exited: a pass would take it over, so a dry run must not say busy.
    const gone = join(host.lockDir, `dgone-${v2.sha256}.lock`);
    writeFileSync(gone, `${now}\n`);
    const exited = Bun.spawn(["true"]);
    await exited.exited;
    writeFileSync(join(host.lockDir, `.dgone-${v2.sha256}.lock.holder`), `${exited.pid} 1 ${statSync(gone).ino} ${now}\n`);
    writeFileSync(join(host.lockDir, `dstale-${v2.sha256}.lock`), `${now - 700}\n`);
    const before = snapshot(host);

    // A keepalive failure gives the pass something to log: in a dry run that goes to stderr, never to LOG_FILE.
    bm.override("GET", `${API}/keepalive`, status(503));
    let r;
    try {
      r = await pass(host, { NODE_NAME: "dry-node" }, ["--dry-run"]);
    } finally {
      bm.override("GET", `${API}/keepalive`, null);
    }
    expect(r.code).toBe(0);
    expect(parseLog(r.stderr).map((l) => l.event)).toEqual(["keepalive_failed"]);
    expect(r.stdout).toBe(
      [
        "dsame: up-to-date",
        `dupd: would update ${short(v1.sha256)} -> ${short(v2.sha256)}`,
        "dbusy: busy",
        `dgone: would update ${short(v1.sha256)} -> ${short(v2.sha256)} (taking over its dead holder's lock)`,
        `dstale: would update ${short(v1.sha256)} -> ${short(v2.sha256)} (taking over its stale lock)`,
        `dnew: would install ${short(v3.sha256)}`,
        `dheld: held until ${until}`,
        "",
      ].join("\n"),
    );
    expect(snapshot(host)).toEqual(before);
    expect(readdirSync(host.stateDir)).toEqual([]);
    expect(existsSync(host.logFile)).toBe(false);
    expect(bm.requests.every((q) => q.method === "GET")).toBe(true);
    expect(calls().filter((c) => c.includes("download"))).toEqual([]);
  });

  test("an invalid or missing manifest is exit 2, said why, and left untouched", async () => {
    const host = newHost();
    host.writeBinary("x", "#!/bin/sh\n");
    bm.setTarget("x", artifact("x2"));
    const bad: [string, string, RegExp][] = [
      ["not JSON", '{"binaries": [', /JSON/],
      ["binaries not an array", '{"binaries": {"x": 1}}', /binaries/],
      ["a version that is not a hash", JSON.stringify({ binaries: [entry("x", { version: "v1.2" })] }), /version/],
      ["a port out of range", JSON.stringify({ binaries: [entry("x", { port: 70000 })] }), /port/],
      ["a name twice", JSON.stringify({ binaries: [entry("x"), entry("x")] }), /twice/],
    ];
    for (const [what, text, reason] of bad) {
      writeFileSync(host.manifest, text);
      const before = snapshot(host);
      bm.clearRequests();
      const r = await pass(host);
      expect({ what, code: r.code }).toEqual({ what, code: 2 });
      expect(r.stdout).toBe("");
      const line = eventsOf(host, "manifest_invalid").at(-1)!;
      expect(line.fields.error).toMatch(reason);
      expect(line.fields.manifest).toBe(host.manifest);
      expect(r.stderr).toContain(line.line);
      expect(readFileSync(host.manifest, "utf8")).toBe(text);
      const after = snapshot(host);
      expect(after["etc/bin-manifests.json"]).toBe(before["etc/bin-manifests.json"]!);
      expect(after["bin/x"]).toBe(before["bin/x"]!);
      expect(bm.requests).toEqual([]);
    }
    rmSync(host.manifest);
    const r = await pass(host);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(host.manifest);
    expect(existsSync(host.manifest)).toBe(false);
  });

  test("an entry whose name is not a plain name is rejected (exit 1); the good entries proceed", async () => {
    const host = newHost();
    const good = artifact(serviceScript({ tag: "named-good" }));
    bm.setTarget("named", good);
    const binaries = [
      entry("../evil"),
      entry("named"),
      entry("svcbad", { serviceName: "x;reboot" }),
      entry(".."),
      entry("sp ace"),
    ];
    host.writeManifest(binaries, { owner: "ops" });
    const r = await pass(host);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    expect(readFileSync(join(host.binDir, "named"))).toEqual(bytesOf(good));
    const rejected = eventsOf(host, "entry_rejected");
    expect(rejected.map((e) => JSON.parse(e.fields.bin!))).toEqual(["../evil", "svcbad", "..", "sp ace"]);
    for (const e of rejected) {
      expect(e.level).toBe("error");
      expect(e.fields.reason).toContain("not a plain name");
      expect(r.stderr).toContain(e.line);
    }
    // Only the good entry reached the API; nothing was written outside BIN_DIR; the rejected entries stay as written.
    expect(calls().filter((c) => c.startsWith(`GET ${API}/bins/`))).toEqual([`GET ${API}/bins/named`]);
    expect(readdirSync(host.binDir)).toEqual(["named"]);
    expect(existsSync(join(host.root, "evil"))).toBe(false);
    const m = host.readManifest();
    expect(m.binaries.filter((b) => b.binaryName !== "named")).toEqual(binaries.filter((b) => b.binaryName !== "named"));
    expect(m.binaries[1]!.version).toBe(good.sha256);
  });

  test("unknown manifest fields, key order and entry order survive a rewrite, as does the file's mode", async () => {
    const host = newHost();
    const k1 = artifact(serviceScript({ tag: "keep1" }));
    const k2 = artifact(serviceScript({ tag: "keep2" }));
    const v1 = artifact(serviceScript({ tag: "uf-v1" }));
    const v2 = artifact(serviceScript({ tag: "uf-v2" }));
    host.writeBinary("keep1", k1.bytes);
    host.writeBinary("keep2", k2.bytes);
    host.writeBinary("uf", v1.bytes);
    bm.setTarget("keep1", k1);
    bm.setTarget("keep2", k2);
    bm.setTarget("uf", v2);
    const original = {
      schema: "ops/7",
      binaries: [
        { binaryName: "keep1", serviceName: "", version: k1.sha256, previousVersion: "", port: 0, owner: "team-a" },
        { comment: "the one that changes", binaryName: "uf", serviceName: "uf", version: v1.sha256, previousVersion: "", port: 0, tags: ["a", "b"], limits: { cpu: 2 } },
        { binaryName: "keep2", port: 0, serviceName: "", version: k2.sha256, previousVersion: "", notes: null },
      ],
      nodeInfo: { rack: "r12", cpuArch: "", osRelease: "", nodeName: "", binProxyVersion: "" },
      zzLast: { nested: [1, { deep: true }] },
    };
    writeFileSync(host.manifest, JSON.stringify(original, null, 4) + "\n");
    chmodSync(host.manifest, 0o640);

    expect(await pass(host)).toEqual({ code: 0, stdout: "", stderr: "" });
    const expected = structuredClone(original);
    expected.binaries[1]!.version = v2.sha256;
    expected.binaries[1]!.previousVersion = v1.sha256;
    const written = host.readManifest();
    Object.assign(expected.nodeInfo, { cpuArch: written.nodeInfo!.cpuArch, osRelease: written.nodeInfo!.osRelease, nodeName: "test-node", binProxyVersion: PKG_VERSION });
    expect(written.nodeInfo!.cpuArch).not.toBe("");
    // Same keys in the same order everywhere: compare the serialisations, not just the values.
    expect(JSON.stringify(written)).toBe(JSON.stringify(expected));
    expect(statSync(host.manifest).mode & 0o7777).toBe(0o640);
  });

  test("--verbose echoes every log line to stderr; each line is logfmt as SPEC §8 shows it", async () => {
    const host = newHost();
    const v1 = artifact(serviceScript({ tag: "vb-v1" }));
    const v2 = artifact(serviceScript({ tag: "vb-v2" }));
    host.writeBinary("vb", v1.bytes);
    host.writeManifest([entry("vb", { version: v1.sha256 })]);
    bm.setTarget("vb", v2);
    const r = await pass(host, {}, ["--verbose"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr).not.toBe("");
    expect(r.stderr).toBe(host.log());
    const updated = parseLog(r.stderr).filter((l) => l.event === "updated");
    expect(updated).toHaveLength(1);
    // The shape of SPEC §8's example, field for field.
    expect(updated[0]!.line).toMatch(
      new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z level=info bin=vb event=updated from=${short(v1.sha256)} to=${short(v2.sha256)} version=${short(v2.sha256)} took_ms=\\d+ pid=\\d+$`),
    );
    const times = parseLog(r.stderr).map((l) => Date.parse(l.time));
    expect(times.every((t, i) => !Number.isNaN(t) && (i === 0 || t >= times[i - 1]!))).toBe(true);
  });

  test("every log line written by this file's passes is logfmt", () => {
    // logOf throws on the first line that is not; every host of this file is read here.
    let lines = 0;
    for (const host of hosts.all) lines += logOf(host).length;
    expect(lines).toBeGreaterThan(20);
  });
});
