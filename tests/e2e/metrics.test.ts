// End-to-end tests of the metrics file (SPEC §11) with the compiled executable, the fake bin-manager, a real supervisord and a real
// node_exporter reading the file: what each kind of run leaves in it (a pass killed with kill -9 and broken configurations included),
// counters that never go back, promtool's verdict on every file, what `status` shows of the last pass, of an uncommitted attempt and
// of trusted keys (and that it writes nothing), and the --verbose summary line. Within each describe the tests run in order, each
// starting from what the previous left.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseExposition, type Sample } from "../../lib/metrics.ts";
import { metricsStatePath, passLogPath } from "../../lib/metricsstate.ts";
import { artifact, startBinManager, status, type Artifact, type BinManager } from "../fixture/bin-manager.ts";
import { BIN_PROXY, hostPool, runBinProxy, serviceScript } from "../fixture/host.ts";
import { STATUS_SCHEMA, validate } from "../fixture/jsonschema.ts";
import { makeKeyPair, writeTrustedKeys } from "../fixture/minisign.ts";
import { promtoolCheckMetrics, startNodeExporter, type NodeExporter } from "../fixture/node-exporter.ts";
import { processAlive, startSupervisor, type Supervisor } from "../fixture/supervisor.ts";
import { gatedDownload, killPass, startPass, until, type Run, type Started } from "./invariants.ts";

const API = "/api/v1";
const short = (a: Artifact) => a.sha256.slice(0, 12);
const SIGNATURES_OFF = "signatures not checked (no trusted keys file)";

let bm: BinManager;
let sup: Supervisor;
let exporter: NodeExporter;
/** node_exporter's textfile directory: only app's metrics file is in it (two hosts' files would repeat each other's series). */
let textfileDir: string;
const tempDirs: string[] = [];
const hosts = hostPool();

/** The host followed through every kind of run: its binary app is supervised, and not installed yet. */
const app = hosts.make();
const appPath = join(app.binDir, "app");
const v1 = artifact(serviceScript({ tag: "app-v1" }));
const v2 = artifact(serviceScript({ tag: "app-v2" }));
const broken = artifact(serviceScript({ exitCode: 1, tag: "app-v3-broken" }));
const appMetrics = () => join(textfileDir, "bin_proxy.prom");

/** A host whose program is slow to start (startsecs=2), so that a pass can be killed during the restart. */
const att = hosts.make();
const attPath = att.writeBinary("att", v1.bytes);
const attV2 = artifact(serviceScript({ tag: "att-v2" }));
const attMetrics = join(att.root, "bin_proxy.prom");

beforeAll(async () => {
  textfileDir = mkdtempSync(join(tmpdir(), "bin-proxy-metrics-textfile-"));
  const supDir = mkdtempSync(join(tmpdir(), "bin-proxy-metrics-supervisor-"));
  tempDirs.push(textfileDir, supDir);
  bm = await startBinManager();
  // app's command does not exist yet: supervisord gives it up (FATAL) until the first install restarts it.
  sup = await startSupervisor(supDir, [{ name: "app", command: appPath }, { name: "att", command: attPath, startsecs: 2 }]);
  exporter = await startNodeExporter(textfileDir);
  app.writeManifest([{ serviceName: "app", binaryName: "app", version: "", previousVersion: "", port: 0 }]);
  att.writeManifest([{ serviceName: "att", binaryName: "att", version: v1.sha256, previousVersion: "", port: 0 }]);
}, 60_000);

afterAll(async () => {
  await exporter?.stop();
  await sup?.stop();
  await bm?.stop();
  hosts.cleanup();
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
}, 60_000);

const appEnv = (extra: Record<string, string> = {}) => app.env(bm.api, { SUPERVISORCTL: sup.ctl, BIN_PROXY_METRICS_FILE: appMetrics(), ...extra });
const attEnv = () => att.env(bm.api, { SUPERVISORCTL: sup.ctl, BIN_PROXY_METRICS_FILE: attMetrics });
const context = (r: { code: number; stdout: string; stderr: string }) => `exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}\nlog:\n${app.log()}`;

/** Runs bin-proxy under umask 077, as a root cron job may: the metrics file must still come out 0644, for node_exporter's user. */
const run = (args: string[], env: Record<string, string> = appEnv()) => runBinProxy(["-c", 'umask 077 && exec "$0" "$@"', BIN_PROXY, ...args], env, { executable: "/bin/sh" });

// ---- reading a metrics file ----

interface Metrics {
  text: string;
  samples: Sample[];
  /** Every sample of a counter family, by series (name and labels). */
  counters: Map<string, number>;
}

const seriesKey = (s: Sample) => `${s.name}${JSON.stringify(Object.entries(s.labels).sort())}`;
const bySeries = (samples: Sample[]) => [...samples].sort((a, b) => seriesKey(a).localeCompare(seriesKey(b)));

/** The file's text, after promtool has accepted it. */
async function checked(text: string): Promise<Metrics> {
  const verdict = await promtoolCheckMetrics(text);
  expect(verdict.ok, `promtool check metrics: ${verdict.output}\n${text}`).toBe(true);
  const samples = parseExposition(text);
  const counterFamilies = new Set([...text.matchAll(/^# TYPE (\S+) counter$/gm)].map((m) => m[1]!));
  return { text, samples, counters: new Map(samples.filter((s) => counterFamilies.has(s.name)).map((s) => [seriesKey(s), s.value])) };
}

/** Each of app's metrics files, in the order its runs left them. */
const history: Metrics[] = [];

/** app's metrics file now: 0644, promtool-clean, alone in its directory (no temp file left), and no counter lower than in the file before. */
async function appMetricsNow(): Promise<Metrics> {
  expect(statSync(appMetrics()).mode & 0o777).toBe(0o644);
  expect(readdirSync(textfileDir)).toEqual(["bin_proxy.prom"]);
  const m = await checked(readFileSync(appMetrics(), "utf8"));
  for (const [series, value] of history.at(-1)?.counters ?? []) expect(m.counters.get(series), `${series} went back or vanished:\n${m.text}`).toBeGreaterThanOrEqual(value);
  history.push(m);
  return m;
}

/** The value of the one sample of name whose labels include labels; undefined when there is none. */
function valueOf(m: Metrics, name: string, labels: Record<string, string> = {}): number | undefined {
  const found = m.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  expect(found.length, `${name} ${JSON.stringify(labels)} appears ${found.length} times`).toBeLessThanOrEqual(1);
  return found[0]?.value;
}

/** Everything the file says of one binary. */
function binaryFacts(m: Metrics, name: string) {
  const n = { name };
  const info = m.samples.find((s) => s.name === "bin_proxy_binary_info" && s.labels.name === name);
  return {
    installed: info?.labels.installed,
    target: info?.labels.target,
    targetVersion: info?.labels.target_version,
    upToDate: valueOf(m, "bin_proxy_binary_up_to_date", n),
    held: valueOf(m, "bin_proxy_binary_held", n),
    holdFailures: valueOf(m, "bin_proxy_binary_hold_failures", n),
    uncommitted: valueOf(m, "bin_proxy_binary_attempt_uncommitted", n),
    updates: valueOf(m, "bin_proxy_updates_total", n),
    failures: valueOf(m, "bin_proxy_update_failures_total", n),
    rollbacks: valueOf(m, "bin_proxy_rollbacks_total", n),
    downloadedBytes: valueOf(m, "bin_proxy_downloaded_bytes_total", n),
  };
}

/** What the file says of the runs. */
function runFacts(m: Metrics) {
  return {
    configOk: valueOf(m, "bin_proxy_config_ok"),
    signaturesRequired: valueOf(m, "bin_proxy_signatures_required"),
    lastRunKind: m.samples.filter((s) => s.name === "bin_proxy_last_run_kind" && s.value === 1).map((s) => s.labels.kind),
    lastRunExit: valueOf(m, "bin_proxy_last_run_exit_code"),
    lastPassExit: valueOf(m, "bin_proxy_last_pass_exit_code"),
    runs: Object.fromEntries(m.samples.filter((s) => s.name === "bin_proxy_runs_total").map((s) => [s.labels.kind!, s.value])),
  };
}

const runs = (counts: Partial<Record<"pass" | "rollback" | "retry" | "config-error", number>>) => ({ pass: 0, rollback: 0, retry: 0, "config-error": 0, ...counts });
const msOf = (seconds: number | undefined) => Math.round(seconds! * 1000);

/** The last pass as `status --json` must show it: the file's figures, in milliseconds. */
function lastPassOf(m: Metrics) {
  return {
    at: new Date(msOf(valueOf(m, "bin_proxy_last_pass_timestamp_seconds"))).toISOString(),
    exitCode: valueOf(m, "bin_proxy_last_pass_exit_code"),
    durationMs: msOf(valueOf(m, "bin_proxy_last_pass_duration_seconds")),
  };
}

/** Asserts that the time series name says a run ended between from and to (ms since the epoch). */
function expectEndedBetween(m: Metrics, name: string, from: number, to: number): void {
  const at = msOf(valueOf(m, name));
  expect(at).toBeGreaterThanOrEqual(from);
  expect(at).toBeLessThanOrEqual(to);
}

/** A pass with app's environment, its wall-clock window kept to check the times the file records. */
async function timedRun(args: string[], env = appEnv()) {
  const from = Date.now();
  const r = await run(args, env);
  return { ...r, from, to: Date.now() };
}

/** node_exporter's samples of bin-proxy, scraped over HTTP now; it must have read the file without error. */
async function scraped(): Promise<Sample[]> {
  const text = await exporter.scrape();
  const samples = parseExposition(text);
  expect(samples.find((s) => s.name === "node_textfile_scrape_error")?.value, text).toBe(0);
  return samples.filter((s) => s.name.startsWith("bin_proxy_"));
}

const appSnapshot = () => metricsStatePath(app.stateDir);
const appPassLog = () => passLogPath(app.stateDir);
/** A file's content, inode and mtime (null: no file), to show that a run did not write it. */
const fileNow = (path: string) => (existsSync(path) ? [readFileSync(path, "utf8"), statSync(path).ino, statSync(path).mtimeMs] : null);

/** app's metrics file and metrics state as they are now (content, mtime, what is beside them), to show that a run wrote neither. */
function metricsWritten(): unknown[] {
  return [fileNow(appMetrics()), readdirSync(textfileDir), fileNow(appSnapshot()), fileNow(appPassLog()), readdirSync(app.stateDir).sort()];
}

/**
 * `status` and `status --json` on app now: the table's last line and the JSON's lastPass are the file's last pass, the JSON
 * validates against the schema, and neither writes anything (the metrics file and its state are unchanged). Returns the JSON.
 */
async function expectStatus(m: Metrics, code: number): Promise<{ binaries: Record<string, unknown>[]; lastPass: unknown; signaturesRequired: boolean }> {
  const before = metricsWritten();
  const table = await run(["status"]);
  expect(table.code, context(table)).toBe(code);
  const last = lastPassOf(m);
  expect(table.stdout.trimEnd().split("\n").at(-1)).toBe(`last pass ${last.at}, exit ${last.exitCode}, ${last.durationMs} ms; ${SIGNATURES_OFF}`);
  const json = await run(["status", "--json"]);
  expect(json.code, context(json)).toBe(code);
  const doc = JSON.parse(json.stdout) as Awaited<ReturnType<typeof expectStatus>>;
  expect(validate(STATUS_SCHEMA, doc)).toEqual([]);
  expect(doc.lastPass).toEqual(last);
  expect(doc.signaturesRequired).toBe(false);
  expect(metricsWritten()).toEqual(before);
  return doc;
}

describe("app's metrics file after every kind of run, scraped by node_exporter", () => {
  test("a first install: the file appears (0644 under umask 077), names the build, counts one update and its bytes", async () => {
    // Before any pass, status says none is recorded yet: not that the metrics file is not set.
    expect((await run(["status"])).stdout.trimEnd().split("\n").at(-1)).toBe(`last pass not recorded yet; ${SIGNATURES_OFF}`);
    bm.setTarget("app", v1, "v1.0");
    const r = await timedRun([]);
    expect(r.code, context(r)).toBe(0);
    expect(r.stdout + r.stderr).toBe("");
    expect(await sup.waitFor("app", ["RUNNING"])).toBe("RUNNING");
    const m = await appMetricsNow();
    expect(binaryFacts(m, "app")).toEqual({
      installed: short(v1), target: short(v1), targetVersion: "v1.0", upToDate: 1, held: 0, holdFailures: 0, uncommitted: 0,
      updates: 1, failures: 0, rollbacks: 0, downloadedBytes: v1.bytes.length,
    });
    expect(runFacts(m)).toEqual({ configOk: 1, signaturesRequired: 0, lastRunKind: ["pass"], lastRunExit: 0, lastPassExit: 0, runs: runs({ pass: 1 }) });
    expectEndedBetween(m, "bin_proxy_last_pass_timestamp_seconds", r.from, r.to);
    expect(valueOf(m, "bin_proxy_last_success_timestamp_seconds")).toBe(valueOf(m, "bin_proxy_last_pass_timestamp_seconds"));
    expect(valueOf(m, "bin_proxy_last_run_timestamp_seconds")).toBe(valueOf(m, "bin_proxy_last_pass_timestamp_seconds"));
    expect(msOf(valueOf(m, "bin_proxy_last_pass_duration_seconds"))).toBeLessThanOrEqual(r.to - r.from);

    const build = m.samples.filter((s) => s.name === "bin_proxy_build_info");
    expect(build.map((s) => s.value)).toEqual([1]);
    const version = await runBinProxy(["--version"], appEnv());
    expect(version.stdout).toStartWith(`bin-proxy ${build[0]!.labels.version} (commit ${build[0]!.labels.commit}, `);
  }, 60_000);

  test("status shows that pass as the file records it, writes nothing, and its JSON validates", async () => {
    const doc = await expectStatus(history.at(-1)!, 0);
    expect(doc.binaries.map((b) => [b.name, b.onDisk, b.supervisor, b.hold, b.attempt, b.attention])).toEqual([["app", v1.sha256, "RUNNING", null, null, null]]);
  }, 60_000);

  test("a no-op pass prints nothing and counts nothing but the pass; --verbose and -v print exactly the summary line; --dry-run writes nothing", async () => {
    const before = history.at(-1)!;
    const snapshot = fileNow(appSnapshot());
    const quiet = await timedRun([]);
    expect(quiet).toMatchObject({ code: 0, stdout: "", stderr: "" });
    let m = await appMetricsNow();
    expect(binaryFacts(m, "app")).toEqual(binaryFacts(before, "app"));
    expect(runFacts(m)).toMatchObject({ configOk: 1, lastPassExit: 0, runs: runs({ pass: 2 }) });
    expectEndedBetween(m, "bin_proxy_last_success_timestamp_seconds", quiet.from, quiet.to);

    for (const [flag, passes] of [["--verbose", 3], ["-v", 4]] as const) {
      const r = await timedRun([flag]);
      expect(r.code, context(r)).toBe(0);
      expect(r.stdout).toBe("");
      const line = /^bin-proxy: pass done: 1 checked, 1 up to date, 0 updated, 0 held, 0 busy, 0 failed, took_ms=(\d+)\n$/.exec(r.stderr);
      expect(line, r.stderr).not.toBeNull();
      m = await appMetricsNow();
      expect(runFacts(m).runs).toEqual(runs({ pass: passes }));
      // The summary is said before the metrics are written: its time is within the pass's recorded duration.
      expect(Number(line![1])).toBeLessThanOrEqual(msOf(valueOf(m, "bin_proxy_last_pass_duration_seconds")));
    }
    expect(binaryFacts(m, "app")).toEqual(binaryFacts(before, "app"));
    // Each of the three is one line of the pass log; the snapshot is as the update left it, and status reads the log.
    expect(fileNow(appSnapshot())).toEqual(snapshot);
    expect(readFileSync(appPassLog(), "utf8").trimEnd().split("\n").map((line) => JSON.parse(line).passes)).toEqual([2, 3, 4]);
    await expectStatus(m, 0);

    // A dry run's verdicts are on stdout, and no summary line counts what it did not do.
    const written = metricsWritten();
    for (const args of [["--dry-run"], ["--dry-run", "--verbose"]]) expect(await run(args)).toEqual({ code: 0, stdout: "app: up-to-date\n", stderr: "" });
    expect(metricsWritten()).toEqual(written);
  }, 60_000);

  test("an update to v2: counted with its bytes, and node_exporter serves the file's series as they are", async () => {
    bm.setTarget("app", v2, "v2.0");
    const r = await run([]);
    expect(r, context(r)).toEqual({ code: 0, stdout: "", stderr: "" });
    const m = await appMetricsNow();
    expect(binaryFacts(m, "app")).toEqual({
      installed: short(v2), target: short(v2), targetVersion: "v2.0", upToDate: 1, held: 0, holdFailures: 0, uncommitted: 0,
      updates: 2, failures: 0, rollbacks: 0, downloadedBytes: v1.bytes.length + v2.bytes.length,
    });
    const series = await scraped();
    expect(bySeries(series)).toEqual(bySeries(m.samples));
    expect(series.find((s) => s.name === "bin_proxy_updates_total")).toEqual({ name: "bin_proxy_updates_total", labels: { name: "app" }, value: 2 });
    // A counted update is a new snapshot, which holds the logged passes: the log is gone.
    expect(JSON.parse(readFileSync(appSnapshot(), "utf8")).runs.pass).toBe(5);
    expect(existsSync(appPassLog())).toBe(false);
  }, 60_000);

  test("a pass killed (kill -9) in the middle of a slow download leaves the previous file whole, as node_exporter reads it", async () => {
    const previous = history.at(-1)!;
    bm.setTarget("app", broken, "v3.0");
    const gate = gatedDownload(bm, "app", broken.bytes, 16);
    const p = startPass(app, bm.api, { SUPERVISORCTL: sup.ctl, BIN_PROXY_METRICS_FILE: appMetrics() });
    try {
      await until(() => gate.downloading(p.pid, join(app.binDir, `.app.${broken.sha256}.part`)), () => "the pass to be downloading v3");
      expect((await killPass(p)).code).toBe(137);
    } finally {
      await killPass(p);
      gate.open();
      bm.override("GET", `${API}/download/app`, null);
    }
    const m = await appMetricsNow();
    expect(m.text).toBe(previous.text);
    expect(bySeries(await scraped())).toEqual(bySeries(m.samples));

    // Had it died in the middle of writing the file, it would have left half of it in its temp file beside it: node_exporter
    // reads only *.prom, and the next run removes it (the failed update's file below is alone in its directory).
    writeFileSync(join(textfileDir, `.bin_proxy.prom.${p.pid}.tmp`), m.text.slice(0, m.text.length / 2));
    expect(bySeries(await scraped())).toEqual(bySeries(m.samples));
  }, 60_000);

  test("a failed update (v3 exits at once): rolled back to v2 and held; the failure and the rollback counted; scraped so", async () => {
    const previous = history.at(-1)!;
    const r = await timedRun([]);
    expect(r.code, context(r)).toBe(1);
    expect(r.stderr).toContain("event=update_failed");
    expect(await sup.waitFor("app", ["RUNNING"])).toBe("RUNNING");
    const m = await appMetricsNow();
    // The failed update's download counts too: bytes transferred, whatever became of them.
    expect(binaryFacts(m, "app")).toEqual({ installed: short(v2), target: short(broken), targetVersion: "v3.0", upToDate: 0, held: 1, holdFailures: 1, uncommitted: 0, updates: 2, failures: 1, rollbacks: 1, downloadedBytes: binaryFacts(previous, "app").downloadedBytes! + broken.bytes.length });
    expect(runFacts(m)).toMatchObject({ configOk: 1, lastRunKind: ["pass"], lastPassExit: 1, runs: runs({ pass: 6 }) });
    expectEndedBetween(m, "bin_proxy_last_pass_timestamp_seconds", r.from, r.to);
    expect(valueOf(m, "bin_proxy_last_success_timestamp_seconds")).toBe(valueOf(previous, "bin_proxy_last_success_timestamp_seconds"));

    const series = await scraped();
    expect(bySeries(series)).toEqual(bySeries(m.samples));
    expect(series.find((s) => s.name === "bin_proxy_binary_held")).toEqual({ name: "bin_proxy_binary_held", labels: { name: "app" }, value: 1 });

    const doc = await expectStatus(m, 0);
    expect(doc.binaries[0]!.hold).toMatchObject({ version: broken.sha256, failures: 1, active: true });
  }, 60_000);

  test("the next pass while v3 is held: exit 0, nothing downloaded, still held, nothing counted but the pass", async () => {
    const previous = history.at(-1)!;
    bm.clearRequests();
    const r = await timedRun([]);
    expect(r, context(r)).toMatchObject({ code: 0, stdout: "", stderr: "" });
    expect(bm.count("GET", `${API}/download/app`)).toBe(0);
    const m = await appMetricsNow();
    expect(binaryFacts(m, "app")).toEqual(binaryFacts(previous, "app"));
    expect(runFacts(m)).toMatchObject({ configOk: 1, lastPassExit: 0, runs: runs({ pass: 7 }) });
    expectEndedBetween(m, "bin_proxy_last_success_timestamp_seconds", r.from, r.to);
  }, 60_000);

  test("rollback app: back on v1, the rollback counted, v2 held; the last pass stays the one before", async () => {
    const previous = history.at(-1)!;
    const r = await timedRun(["rollback", "app"]);
    expect(r.code, context(r)).toBe(0);
    expect(r.stdout).toStartWith(`app: rolled back to ${short(v1)};`);
    const m = await appMetricsNow();
    // The target stays the last one a pass learnt (a rollback asks no API for it).
    expect(binaryFacts(m, "app")).toEqual({ ...binaryFacts(previous, "app"), installed: short(v1), upToDate: 0, held: 1, holdFailures: 0, rollbacks: 2 });
    expect(runFacts(m)).toEqual({ configOk: 1, signaturesRequired: 0, lastRunKind: ["rollback"], lastRunExit: 0, lastPassExit: 0, runs: runs({ pass: 7, rollback: 1 }) });
    expectEndedBetween(m, "bin_proxy_last_run_timestamp_seconds", r.from, r.to);
    expect(lastPassOf(m)).toEqual(lastPassOf(previous));
    await expectStatus(m, 0);
  }, 60_000);

  test("retry app: the hold gone from the file, nothing else counted but the run", async () => {
    const previous = history.at(-1)!;
    const r = await run(["retry", "app"]);
    expect(r.code, context(r)).toBe(0);
    const m = await appMetricsNow();
    expect(binaryFacts(m, "app")).toEqual({ ...binaryFacts(previous, "app"), held: 0 });
    expect(runFacts(m)).toMatchObject({ configOk: 1, lastRunKind: ["retry"], lastRunExit: 0, runs: runs({ pass: 7, rollback: 1, retry: 1 }) });
  }, 60_000);

  test("a configuration error in the environment (LOCK_TIMEOUT=abc): exit 2, bin_proxy_config_ok 0 scraped, every count and fact kept", async () => {
    const previous = history.at(-1)!;
    const r = await timedRun([], appEnv({ LOCK_TIMEOUT: "abc" }));
    expect(r.code, context(r)).toBe(2);
    expect(r.stderr).toContain("LOCK_TIMEOUT");
    const m = await appMetricsNow();
    expect(binaryFacts(m, "app")).toEqual(binaryFacts(previous, "app"));
    expect(runFacts(m)).toEqual({ configOk: 0, signaturesRequired: 0, lastRunKind: ["config-error"], lastRunExit: 2, lastPassExit: 2, runs: runs({ pass: 7, rollback: 1, retry: 1, "config-error": 1 }) });
    expectEndedBetween(m, "bin_proxy_last_pass_timestamp_seconds", r.from, r.to);
    expect(valueOf(m, "bin_proxy_last_success_timestamp_seconds")).toBe(valueOf(previous, "bin_proxy_last_success_timestamp_seconds"));

    const series = await scraped();
    expect(bySeries(series)).toEqual(bySeries(m.samples));
    expect(series.find((s) => s.name === "bin_proxy_config_ok")?.value).toBe(0);
    await expectStatus(m, 0);
  }, 60_000);

  test("status and --dry-run write nothing, even when the configuration is broken (they are no pass: exit 2, the file as it was)", async () => {
    const written = metricsWritten();
    for (const args of [["status"], ["status", "--json"], ["--dry-run"]]) {
      const r = await run(args, appEnv({ LOCK_TIMEOUT: "abc" }));
      expect(r.code, context(r)).toBe(2);
      expect(r.stderr).toContain("LOCK_TIMEOUT");
      expect(metricsWritten(), args.join(" ")).toEqual(written);
    }
  }, 60_000);

  test("a configuration error in the config file, which also names the metrics file: written there all the same", async () => {
    const previous = history.at(-1)!;
    const config = join(app.root, "etc", "config");
    const original = readFileSync(config, "utf8");
    const { BIN_PROXY_METRICS_FILE: _fromFile, ...env } = appEnv();
    writeFileSync(config, `${original}BIN_PROXY_METRICS_FILE="${appMetrics()}"\nLOCK_TIMEOUT=abc\n`);
    let r;
    try {
      r = await run([], env);
    } finally {
      writeFileSync(config, original);
    }
    expect(r.code, context(r)).toBe(2);
    expect(r.stderr).toContain(`LOCK_TIMEOUT must be a whole number >= 1, got "abc" (set in ${config} line 3)`);
    const m = await appMetricsNow();
    expect(binaryFacts(m, "app")).toEqual(binaryFacts(previous, "app"));
    expect(runFacts(m)).toMatchObject({ configOk: 0, lastPassExit: 2, runs: runs({ pass: 7, rollback: 1, retry: 1, "config-error": 2 }) });
  }, 60_000);

  test("an invalid manifest: exit 2, config_ok 0, counts kept, the manifest left as it is; status exits 2 and writes nothing; retry and rollback say config_ok 0 too", async () => {
    const previous = history.at(-1)!;
    const manifest = readFileSync(app.manifest, "utf8");
    writeFileSync(app.manifest, manifest.slice(0, 40));
    try {
      const r = await run([]);
      expect(r.code, context(r)).toBe(2);
      expect(r.stderr).toContain(app.manifest);
      expect(readFileSync(app.manifest, "utf8")).toBe(manifest.slice(0, 40));
      const m = await appMetricsNow();
      expect(binaryFacts(m, "app")).toEqual(binaryFacts(previous, "app"));
      expect(runFacts(m)).toMatchObject({ configOk: 0, lastRunKind: ["config-error"], lastPassExit: 2, runs: runs({ pass: 7, rollback: 1, retry: 1, "config-error": 3 }) });
      const st = await run(["status", "--json"]);
      expect(st.code).toBe(2);
      expect(readFileSync(appMetrics(), "utf8")).toBe(m.text);

      // An operator command stopped by the same manifest is a configuration error too: it must not turn config_ok back to 1.
      for (const [command, errors] of [["retry", 4], ["rollback", 5]] as const) {
        const op = await run([command, "app"]);
        expect(op.code, context(op)).toBe(2);
        const after = await appMetricsNow();
        expect(binaryFacts(after, "app")).toEqual(binaryFacts(previous, "app"));
        expect(runFacts(after)).toMatchObject({ configOk: 0, lastRunKind: ["config-error"], lastRunExit: 2, lastPassExit: 2, runs: runs({ pass: 7, rollback: 1, retry: 1, "config-error": errors }) });
      }
    } finally {
      writeFileSync(app.manifest, manifest);
    }
  }, 60_000);

  test("the next good pass after them: v2 installed, config_ok 1 again, the counters going on from where they were", async () => {
    const previous = history.at(-1)!;
    bm.setTarget("app", v2, "v2.0");
    const r = await timedRun([]);
    expect(r, context(r)).toMatchObject({ code: 0, stdout: "", stderr: "" });
    const m = await appMetricsNow();
    expect(binaryFacts(m, "app")).toEqual({
      ...binaryFacts(previous, "app"), installed: short(v2), target: short(v2), targetVersion: "v2.0", upToDate: 1, updates: 3,
      downloadedBytes: binaryFacts(previous, "app").downloadedBytes! + v2.bytes.length,
    });
    expect(runFacts(m)).toEqual({ configOk: 1, signaturesRequired: 0, lastRunKind: ["pass"], lastRunExit: 0, lastPassExit: 0, runs: runs({ pass: 8, rollback: 1, retry: 1, "config-error": 5 }) });
    expectEndedBetween(m, "bin_proxy_last_success_timestamp_seconds", r.from, r.to);
    expect(bySeries(await scraped())).toEqual(bySeries(m.samples));
    await expectStatus(m, 0);
  }, 60_000);

  test("an API that cannot name the target (HTTP 500): a failed pass, but no update failed, and the last known target is kept", async () => {
    const previous = history.at(-1)!;
    bm.override("GET", `${API}/bins/app`, status(500));
    let r;
    try {
      r = await run([]);
    } finally {
      bm.override("GET", `${API}/bins/app`, null);
    }
    expect(r.code, context(r)).toBe(1);
    expect(r.stderr).toContain("event=target_unavailable");
    const m = await appMetricsNow();
    expect(binaryFacts(m, "app")).toEqual(binaryFacts(previous, "app"));
    expect(runFacts(m)).toMatchObject({ configOk: 1, lastPassExit: 1, runs: runs({ pass: 9, rollback: 1, retry: 1, "config-error": 5 }) });
  }, 60_000);
});

/** Polls until the pass is in the restart of att (its old process gone, the new one STARTING); fails when the pass ended first. */
async function inRestart(p: Started, oldPid: number): Promise<void> {
  let ended: Run | null = null;
  void p.done.then((r) => (ended = r));
  const deadline = Date.now() + 30_000;
  while (ended === null && !(!processAlive(oldPid) && (await sup.status("att")) === "STARTING")) {
    if (Date.now() > deadline) throw new Error("timed out waiting for the restart of att");
    await Bun.sleep(20);
  }
  if (ended) throw new Error(`the pass ended (exit ${(ended as Run).code}) before the restart:\n${(ended as Run).stderr}`);
}

describe("an uncommitted attempt (a pass killed during a restart)", () => {
  test("the killed pass leaves the file as it was; status --json shows the attempt (schema-valid) and writes nothing", async () => {
    bm.setTarget("att", v1);
    expect(await runBinProxy([], attEnv())).toEqual({ code: 0, stdout: "", stderr: "" });
    const before = readFileSync(attMetrics, "utf8");
    expect(binaryFacts(await checked(before), "att")).toMatchObject({ installed: short(v1), upToDate: 1, uncommitted: 0, updates: 0 });

    bm.setTarget("att", attV2, "v2.0");
    const oldPid = await sup.pid("att");
    const p = startPass(att, bm.api, { SUPERVISORCTL: sup.ctl, BIN_PROXY_METRICS_FILE: attMetrics });
    try {
      await inRestart(p, oldPid);
      expect((await killPass(p)).code).toBe(137);
    } finally {
      await killPass(p);
    }
    expect(readFileSync(attMetrics, "utf8")).toBe(before);
    expect(existsSync(join(att.stateDir, "journal", "att.attempt.json"))).toBe(true);

    const st = await runBinProxy(["status", "--json"], attEnv());
    expect(st.code, st.stderr).toBe(1);
    const doc = JSON.parse(st.stdout) as { binaries: { attempt: unknown; attention: string | null }[] };
    expect(validate(STATUS_SCHEMA, doc)).toEqual([]);
    expect(doc.binaries[0]!.attempt).toMatchObject({ target: attV2.sha256 });
    expect(doc.binaries[0]!.attention).not.toBeNull();
    expect(readFileSync(attMetrics, "utf8")).toBe(before);
  }, 60_000);

  test("retry att records the attempt as uncommitted; the next pass commits it, and the file says so", async () => {
    const r = await runBinProxy(["retry", "att"], attEnv());
    expect(r.code, r.stderr).toBe(0);
    const retried = await checked(readFileSync(attMetrics, "utf8"));
    expect(binaryFacts(retried, "att")).toMatchObject({ installed: short(v1), uncommitted: 1, updates: 0 });
    expect(runFacts(retried)).toMatchObject({ lastRunKind: ["retry"], runs: runs({ pass: 1, retry: 1 }) });

    // The killed pass's supervisorctl went on with the restart: let it finish before the next pass restarts att again.
    await sup.waitFor("att", ["RUNNING"]);
    const again = await runBinProxy([], attEnv());
    expect(again.code, again.stderr).toBe(0);
    const m = await checked(readFileSync(attMetrics, "utf8"));
    expect(binaryFacts(m, "att")).toMatchObject({ installed: short(attV2), target: short(attV2), targetVersion: "v2.0", upToDate: 1, uncommitted: 0, updates: 1 });
    expect(statSync(attMetrics).mode & 0o777).toBe(0o644);
  }, 90_000);
});

describe("signatures required (att, now on its target)", () => {
  test("with trusted keys: the file says signatures are required, and so do status and status --json", async () => {
    const env = { ...attEnv(), BIN_PROXY_TRUSTED_KEYS: writeTrustedKeys(join(att.root, "etc", "trusted-keys"), makeKeyPair(att.root)) };
    // att is on the API's target already: nothing to download, so nothing needs a signature.
    expect(await runBinProxy([], env)).toEqual({ code: 0, stdout: "", stderr: "" });
    const m = await checked(readFileSync(attMetrics, "utf8"));
    expect(runFacts(m)).toMatchObject({ configOk: 1, signaturesRequired: 1, lastPassExit: 0 });
    const last = lastPassOf(m);
    const table = await runBinProxy(["status"], env);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout.trimEnd().split("\n").at(-1)).toBe(`last pass ${last.at}, exit 0, ${last.durationMs} ms; signatures required`);
    const json = await runBinProxy(["status", "--json"], env);
    const doc = JSON.parse(json.stdout) as { lastPass: unknown; signaturesRequired: boolean };
    expect(validate(STATUS_SCHEMA, doc)).toEqual([]);
    expect(doc).toMatchObject({ lastPass: last, signaturesRequired: true });
    expect(readFileSync(attMetrics, "utf8")).toBe(m.text);
  }, 60_000);
});

describe("a metrics file that cannot be written", () => {
  test("is a warning of the pass, never its failure: exit 0, the binary still updated, metrics_not_written logged", async () => {
    const host = hosts.make();
    const v1 = artifact(serviceScript({ tag: "unwritable-v1" }));
    bm.setTarget("unwritable", v1);
    host.writeManifest([{ serviceName: "", binaryName: "unwritable", version: "", previousVersion: "", port: 0 }]);
    const missingDir = join(host.root, "no-such-dir", "bin_proxy.prom");
    const r = await runBinProxy([], host.env(bm.api, { BIN_PROXY_METRICS_FILE: missingDir }));
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(readFileSync(join(host.binDir, "unwritable"))).toEqual(Buffer.from(v1.bytes));
    expect(host.log()).toMatch(/level=warn event=metrics_not_written file=\S+no-such-dir\/bin_proxy.prom error=/);
    expect(existsSync(join(host.root, "no-such-dir"))).toBe(false);
  }, 60_000);
});

describe("a config file that cannot be used at all", () => {
  test("unreadable, or not shell it can parse: the metrics file the environment names says config_ok 0, counts kept", async () => {
    const host = hosts.make();
    const metrics = join(host.root, "bin_proxy.prom");
    host.writeManifest([]);
    const env = host.env(bm.api, { BIN_PROXY_METRICS_FILE: metrics });
    expect(await runBinProxy([], env)).toEqual({ code: 0, stdout: "", stderr: "" });
    const config = join(host.root, "etc", "config");
    for (const [what, broken, cause] of [
      ["an unquoted space", () => writeFileSync(config, "SUPERVISORCTL=/usr/bin/supervisorctl -c /etc/s.conf\n"), "unquoted space"],
      ["a directory where the file should be", () => (rmSync(config), mkdirSync(config)), "cannot read config file"],
    ] as const) {
      broken();
      const r = await runBinProxy([], env);
      expect(r.code, what).toBe(2);
      expect(r.stderr, what).toContain(cause);
      const m = await checked(readFileSync(metrics, "utf8"));
      expect(runFacts(m), what).toMatchObject({ configOk: 0, lastPassExit: 2 });
      expect(valueOf(m, "bin_proxy_runs_total", { kind: "pass" }), what).toBe(1);
    }
    expect(valueOf(await checked(readFileSync(metrics, "utf8")), "bin_proxy_runs_total", { kind: "config-error" })).toBe(2);
  }, 60_000);
});
