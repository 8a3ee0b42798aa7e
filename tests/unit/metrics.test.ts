// The metrics file (SPEC §11): each kind of run rendered, checked by promtool, counters monotonic across runs, atomic writes, served by a real node_exporter.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { appendFileSync, chmodSync, existsSync, symlinkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Sha256 } from "../../lib/hash.ts";
import { parseExposition, recordConfigError, recordRun, renderMetrics, stateFromMetrics, type Sample } from "../../lib/metrics.ts";
import {
  applyRun, canLogPass, emptyState, MAX_LOGGED_PASSES, metricsStatePath, passLogPath, readLastPass, readPassLog, readSavedState, type BinaryMetrics, type RunMetrics,
} from "../../lib/metricsstate.ts";
import { COMMIT, VERSION } from "../../lib/version.ts";
import { promtoolCheckMetrics, promtoolCheckRules, startNodeExporter, type NodeExporter } from "../fixture/node-exporter.ts";

const B = "b2".repeat(32) as Sha256;
const C = "c3".repeat(32) as Sha256;
const D = "d4".repeat(32) as Sha256;
const T0 = new Date("2026-11-25T10:00:00Z");
const minutes = (n: number) => new Date(T0.getTime() + n * 60_000);

const app = (over: Partial<BinaryMetrics> = {}): BinaryMetrics => ({ name: "app", installed: B, target: B, held: false, holdFailures: 0, uncommitted: false, ...over });
const pass = (at: Date, binaries: BinaryMetrics[] | null, over: Partial<RunMetrics> = {}): RunMetrics => ({
  kind: "pass", startedAt: at, durationMs: 1500, exitCode: 0, signaturesRequired: true, binaries, ...over,
});

/** The value of the one sample of name with labels (a subset); undefined when there is none. */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (found.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} has ${found.length} samples`);
  return found[0]?.value;
}
const info = (samples: Sample[], name: string) => samples.find((s) => s.name === "bin_proxy_binary_info" && s.labels.name === name)?.labels;

const counterValues = (samples: Sample[]) => samples.filter((s) => s.name.endsWith("_total")).map((s) => [`${s.name}${JSON.stringify(s.labels)}`, s.value] as const);

// Made at load time: the describe blocks below set up their hosts while the tests are collected.
const dir = mkdtempSync(join(tmpdir(), "bin-proxy-metrics-"));
let exporter: NodeExporter;
beforeAll(async () => {
  mkdirSync(join(dir, "textfile"));
  exporter = await startNodeExporter(join(dir, "textfile"));
});
afterAll(async () => {
  await exporter?.stop();
  rmSync(dir, { recursive: true, force: true });
});

let seq = 0;
function freshHost() {
  const root = join(dir, `host-${++seq}`);
  const stateDir = join(root, "state");
  mkdirSync(stateDir, { recursive: true });
  return { root, stateDir, metricsFile: join(root, "bin_proxy.prom") };
}

/** Records run, asserts it reported nothing and promtool accepts the file, and returns the file's samples. */
async function record(metricsFile: string, stateDir: string | null, run: RunMetrics): Promise<Sample[]> {
  expect(recordRun(metricsFile, stateDir, run)).toBeNull();
  const text = readFileSync(metricsFile, "utf8");
  const check = await promtoolCheckMetrics(text);
  expect(check.output).toBe("");
  expect(check.ok).toBe(true);
  return parseExposition(text);
}

describe("one host's runs, in order, on one state dir", () => {
  const host = freshHost();
  const seen: Sample[][] = [];
  const run = async (r: RunMetrics) => {
    const samples = await record(host.metricsFile, host.stateDir, r);
    seen.push(samples);
    return samples;
  };

  test("a first install: the binary is up to date, one update and its bytes counted, the pass a success", async () => {
    const s = await run(pass(minutes(0), [app({ targetVersion: "1.4.0", event: { updated: true, downloadedBytes: 4096 } })]));
    expect(value(s, "bin_proxy_build_info", { version: VERSION, commit: COMMIT })).toBe(1);
    expect(value(s, "bin_proxy_config_ok")).toBe(1);
    expect(value(s, "bin_proxy_signatures_required")).toBe(1);
    expect(info(s, "app")).toEqual({ name: "app", installed: B.slice(0, 12), target: B.slice(0, 12), target_version: "1.4.0" });
    expect(value(s, "bin_proxy_binary_up_to_date", { name: "app" })).toBe(1);
    expect(value(s, "bin_proxy_updates_total", { name: "app" })).toBe(1);
    expect(value(s, "bin_proxy_downloaded_bytes_total", { name: "app" })).toBe(4096);
    expect(value(s, "bin_proxy_update_failures_total", { name: "app" })).toBe(0);
    const end = (minutes(0).getTime() + 1500) / 1000;
    expect(value(s, "bin_proxy_last_pass_timestamp_seconds")).toBe(end);
    expect(value(s, "bin_proxy_last_success_timestamp_seconds")).toBe(end);
    expect(value(s, "bin_proxy_last_pass_duration_seconds")).toBe(1.5);
    expect(value(s, "bin_proxy_last_pass_exit_code")).toBe(0);
    expect(value(s, "bin_proxy_last_run_kind", { kind: "pass" })).toBe(1);
    expect(value(s, "bin_proxy_runs_total", { kind: "pass" })).toBe(1);
    expect(statSync(host.metricsFile).mode & 0o7777).toBe(0o644);
  });

  test("a no-op: nothing counted but the run; the success time moves on", async () => {
    const s = await run(pass(minutes(1), [app()], { durationMs: 40 }));
    expect(value(s, "bin_proxy_updates_total", { name: "app" })).toBe(1);
    expect(value(s, "bin_proxy_downloaded_bytes_total", { name: "app" })).toBe(4096);
    expect(value(s, "bin_proxy_last_success_timestamp_seconds")).toBe((minutes(1).getTime() + 40) / 1000);
    expect(value(s, "bin_proxy_runs_total", { kind: "pass" })).toBe(2);
    // The release name stays with its target when a pass does not repeat it.
    expect(info(s, "app")?.target_version).toBe("1.4.0");
  });

  test("an update: the new installed version, a second update counted", async () => {
    const s = await run(pass(minutes(2), [app({ installed: C, target: C, targetVersion: "1.5.0", event: { updated: true, downloadedBytes: 8192 } })]));
    expect(info(s, "app")).toMatchObject({ installed: C.slice(0, 12), target: C.slice(0, 12), target_version: "1.5.0" });
    expect(value(s, "bin_proxy_updates_total", { name: "app" })).toBe(2);
    expect(value(s, "bin_proxy_downloaded_bytes_total", { name: "app" })).toBe(4096 + 8192);
  });

  test("a failed update, held: not up to date, held with its failure count, a failure and an automatic rollback counted, exit 1", async () => {
    const failedAt = minutes(3);
    const s = await run(pass(failedAt, [app({ installed: C, target: D, held: true, holdFailures: 1, event: { failed: true, rolledBack: true, downloadedBytes: 100 } })], { exitCode: 1 }));
    expect(info(s, "app")).toMatchObject({ installed: C.slice(0, 12), target: D.slice(0, 12), target_version: "" });
    expect(value(s, "bin_proxy_binary_up_to_date", { name: "app" })).toBe(0);
    expect(value(s, "bin_proxy_binary_held", { name: "app" })).toBe(1);
    expect(value(s, "bin_proxy_binary_hold_failures", { name: "app" })).toBe(1);
    expect(value(s, "bin_proxy_update_failures_total", { name: "app" })).toBe(1);
    expect(value(s, "bin_proxy_rollbacks_total", { name: "app" })).toBe(1);
    expect(value(s, "bin_proxy_last_pass_exit_code")).toBe(1);
    // The last success is still the update's pass.
    expect(value(s, "bin_proxy_last_success_timestamp_seconds")).toBe((minutes(2).getTime() + 1500) / 1000);
    expect((await exporter.scrape()).length).toBeGreaterThan(0);
  });

  test("`retry` learns no target: the last known one and the verdict stay; the last pass stays the failed one", async () => {
    const s = await run({ kind: "retry", startedAt: minutes(4), durationMs: 12, exitCode: 0, signaturesRequired: null, binaries: [app({ installed: C, target: null, held: true, holdFailures: 1 })] });
    expect(info(s, "app")?.target).toBe(D.slice(0, 12));
    expect(value(s, "bin_proxy_binary_up_to_date", { name: "app" })).toBe(0);
    expect(value(s, "bin_proxy_signatures_required")).toBe(1);
    expect(value(s, "bin_proxy_last_run_kind", { kind: "retry" })).toBe(1);
    expect(value(s, "bin_proxy_last_pass_exit_code")).toBe(1);
    expect(value(s, "bin_proxy_runs_total", { kind: "retry" })).toBe(1);
  });

  test("`rollback`: back to the previous version, held by the operator (no failures), one more rollback", async () => {
    const s = await run({ kind: "rollback", startedAt: minutes(5), durationMs: 900, exitCode: 0, signaturesRequired: true, binaries: [app({ installed: B, target: undefined, held: true, holdFailures: 0, event: { rolledBack: true } })] });
    expect(info(s, "app")).toMatchObject({ installed: B.slice(0, 12), target: D.slice(0, 12) });
    expect(value(s, "bin_proxy_rollbacks_total", { name: "app" })).toBe(2);
    expect(value(s, "bin_proxy_binary_hold_failures", { name: "app" })).toBe(0);
    expect(value(s, "bin_proxy_last_run_exit_code")).toBe(0);
  });

  test("a configuration error knowing only the metrics file: config_ok 0, a failed pass, every count and fact kept", async () => {
    expect(recordConfigError(host.metricsFile, null, minutes(6), new Date(minutes(6).getTime() + 3))).toBeNull();
    const text = readFileSync(host.metricsFile, "utf8");
    expect((await promtoolCheckMetrics(text)).output).toBe("");
    const s = parseExposition(text);
    seen.push(s);
    expect(value(s, "bin_proxy_config_ok")).toBe(0);
    expect(value(s, "bin_proxy_last_pass_exit_code")).toBe(2);
    expect(value(s, "bin_proxy_last_run_kind", { kind: "config-error" })).toBe(1);
    expect(value(s, "bin_proxy_runs_total", { kind: "config-error" })).toBe(1);
    expect(value(s, "bin_proxy_rollbacks_total", { name: "app" })).toBe(2);
    expect(info(s, "app")).toMatchObject({ installed: B.slice(0, 12), target: D.slice(0, 12) });
  });

  test("the next pass, with the state dir again, counts the configuration error too (the larger of state and file)", async () => {
    const s = await run(pass(minutes(7), [app({ installed: B, target: D, held: true, holdFailures: 0 })]));
    expect(value(s, "bin_proxy_config_ok")).toBe(1);
    expect(value(s, "bin_proxy_runs_total", { kind: "config-error" })).toBe(1);
    expect(value(s, "bin_proxy_runs_total", { kind: "pass" })).toBe(5);
    expect(readLastPass(host.stateDir)).toEqual({ kind: "pass", at: new Date(minutes(7).getTime() + 1500).toISOString(), durationMs: 1500, exitCode: 0 });
  });

  test("a garbage state file: a warning naming it, and the counts go on from the last metrics file", async () => {
    writeFileSync(metricsStatePath(host.stateDir), '{"format":1,"runs":{"pass":-3}}');
    const warning = recordRun(host.metricsFile, host.stateDir, pass(minutes(8), [app({ installed: B, target: D, held: true, event: { failed: true } })], { exitCode: 1 }));
    expect(warning).toContain(metricsStatePath(host.stateDir));
    expect(warning).toContain("the last metrics file");
    const s = parseExposition(readFileSync(host.metricsFile, "utf8"));
    seen.push(s);
    expect(value(s, "bin_proxy_update_failures_total", { name: "app" })).toBe(2);
    expect(value(s, "bin_proxy_runs_total", { kind: "pass" })).toBe(6);
    // The state file is whole again.
    expect(recordRun(host.metricsFile, host.stateDir, pass(minutes(9), [app({ installed: B, target: D, held: true })], { exitCode: 0 }))).toBeNull();
    seen.push(parseExposition(readFileSync(host.metricsFile, "utf8")));
  });

  test("every counter only grew across all of the runs above", () => {
    expect(seen.length).toBe(10);
    for (let i = 1; i < seen.length; i++) {
      const before = new Map(counterValues(seen[i - 1]!));
      for (const [key, v] of counterValues(seen[i]!)) expect([key, v]).toEqual([key, Math.max(v, before.get(key) ?? 0)]);
      for (const key of before.keys()) expect(new Map(counterValues(seen[i]!)).has(key)).toBe(true);
    }
  });
});

describe("recordRun", () => {
  test("a garbage state file and no metrics file: counts start from zero, with a warning", () => {
    const host = freshHost();
    writeFileSync(metricsStatePath(host.stateDir), "\0garbage");
    const warning = recordRun(host.metricsFile, host.stateDir, pass(T0, [app({ event: { updated: true } })]));
    expect(warning).toMatch(/metrics state .*metrics-state\.json is unusable \(not valid JSON.*starting from the last metrics file \(from zero without one\)/);
    expect(value(parseExposition(readFileSync(host.metricsFile, "utf8")), "bin_proxy_updates_total", { name: "app" })).toBe(1);
    expect(readLastPass(host.stateDir)?.exitCode).toBe(0);
  });

  test("never throws: an unwritable metrics file is reported, and the state is still saved", () => {
    const host = freshHost();
    const missing = join(host.root, "no-such-dir", "bin_proxy.prom");
    expect(recordRun(missing, host.stateDir, pass(T0, [app()]))).toMatch(/cannot write .*no-such-dir\/bin_proxy\.prom: .*ENOENT/);
    expect(readLastPass(host.stateDir)).not.toBeNull();
  });

  test("no state dir yet (retry on a new host): the metrics file alone is written, nothing created", async () => {
    const host = freshHost();
    const stateDir = join(host.root, "never-made");
    await record(host.metricsFile, stateDir, { kind: "retry", startedAt: T0, durationMs: 5, exitCode: 1, signaturesRequired: false, binaries: [app({ installed: null, target: null })] });
    expect(existsSync(stateDir)).toBe(false);
  });

  test("a dead run's temp name that cannot be removed (a directory there) never stops the metrics file's write", () => {
    const host = freshHost();
    mkdirSync(join(host.root, ".bin_proxy.prom.999999999.tmp", "inside"), { recursive: true });
    expect(recordRun(host.metricsFile, host.stateDir, pass(T0, [app()]))).toBeNull();
    expect(value(parseExposition(readFileSync(host.metricsFile, "utf8")), "bin_proxy_runs_total", { kind: "pass" })).toBe(1);
  });

  test("the file is always 0644, whatever mode the one it replaces had; a dead run's temp file is removed", () => {
    const host = freshHost();
    writeFileSync(host.metricsFile, "old\n", { mode: 0o600 });
    chmodSync(host.metricsFile, 0o600);
    const orphan = join(host.root, ".bin_proxy.prom.999999999.tmp");
    writeFileSync(orphan, "half a file");
    expect(recordRun(host.metricsFile, host.stateDir, pass(T0, [app()]))).toBeNull();
    expect(statSync(host.metricsFile).mode & 0o7777).toBe(0o644);
    expect(existsSync(orphan)).toBe(false);
  });

  test("the state keeps the mode an operator gave it, whether its run counted something or only changed a fact", () => {
    const host = freshHost();
    recordRun(host.metricsFile, host.stateDir, pass(T0, [app()]));
    chmodSync(metricsStatePath(host.stateDir), 0o640);
    for (const [i, binary] of [app({ event: { updated: true } }), app({ held: true, holdFailures: 1 })].entries()) {
      const before = statSync(metricsStatePath(host.stateDir)).ino;
      expect(recordRun(host.metricsFile, host.stateDir, pass(minutes(i + 1), [binary]))).toBeNull();
      expect(statSync(metricsStatePath(host.stateDir)).ino).not.toBe(before); // a new snapshot each time
      expect(statSync(metricsStatePath(host.stateDir)).mode & 0o7777).toBe(0o640);
    }
  });

  test("a state that cannot be saved is reported; the metrics file is still written, and the next run counts on from it", () => {
    const host = freshHost();
    recordRun(host.metricsFile, host.stateDir, pass(T0, [app({ event: { updated: true } })]));
    rmSync(metricsStatePath(host.stateDir));
    mkdirSync(metricsStatePath(host.stateDir)); // a directory where the state goes: it can be neither read nor replaced
    const warning = recordRun(host.metricsFile, host.stateDir, pass(minutes(1), [app({ event: { updated: true } })]));
    expect(warning).toMatch(/metrics state .*metrics-state\.json is unusable .*not a regular file.*starting from the last metrics file .*; cannot save .*metrics-state\.json: .*EISDIR/);
    expect(value(parseExposition(readFileSync(host.metricsFile, "utf8")), "bin_proxy_updates_total", { name: "app" })).toBe(2);
    rmSync(metricsStatePath(host.stateDir), { recursive: true });
    expect(recordRun(host.metricsFile, host.stateDir, pass(minutes(2), [app({ event: { updated: true } })]))).toBeNull();
    expect(value(parseExposition(readFileSync(host.metricsFile, "utf8")), "bin_proxy_updates_total", { name: "app" })).toBe(3);
  });

  test("a metrics file no newer than the state is not read back: the state's counts stand", () => {
    const host = freshHost();
    recordRun(host.metricsFile, host.stateDir, pass(T0, [app({ event: { updated: true } })]));
    // A file that claims more, but older than the state: written before it, so the state holds all it says.
    writeFileSync(host.metricsFile, readFileSync(host.metricsFile, "utf8").replace(/^(bin_proxy_updates_total\{name="app"\}) 1$/m, "$1 99"));
    const stateTime = statSync(metricsStatePath(host.stateDir)).mtime;
    utimesSync(host.metricsFile, new Date(stateTime.getTime() - 60_000), new Date(stateTime.getTime() - 60_000));
    recordRun(host.metricsFile, host.stateDir, pass(minutes(1), [app()]));
    expect(value(parseExposition(readFileSync(host.metricsFile, "utf8")), "bin_proxy_updates_total", { name: "app" })).toBe(1);
    // Newer than the state (a run that could not save it): read back, and its larger count kept.
    writeFileSync(host.metricsFile, readFileSync(host.metricsFile, "utf8").replace(/^(bin_proxy_updates_total\{name="app"\}) 1$/m, "$1 99"));
    utimesSync(host.metricsFile, new Date(Date.now() + 60_000), new Date(Date.now() + 60_000));
    recordRun(host.metricsFile, host.stateDir, pass(minutes(2), [app()]));
    expect(value(parseExposition(readFileSync(host.metricsFile, "utf8")), "bin_proxy_updates_total", { name: "app" })).toBe(99);
  });

  test("a binary that left the manifest leaves the file, counters and all; an unreadable manifest keeps every binary", () => {
    const host = freshHost();
    const other = app({ name: "worker", event: { updated: true } });
    recordRun(host.metricsFile, host.stateDir, pass(T0, [app(), other]));
    recordRun(host.metricsFile, host.stateDir, pass(minutes(1), null, { kind: "config-error", exitCode: 2, signaturesRequired: null }));
    expect(info(parseExposition(readFileSync(host.metricsFile, "utf8")), "worker")).toBeDefined();
    recordRun(host.metricsFile, host.stateDir, pass(minutes(2), [app()]));
    const s = parseExposition(readFileSync(host.metricsFile, "utf8"));
    expect(s.filter((x) => x.labels.name === "worker")).toEqual([]);
    expect(info(s, "app")).toBeDefined();
  });
});

describe("the pass log: a pass that changed nothing is one appended line, not a new snapshot", () => {
  const logPath = (host: { stateDir: string }) => passLogPath(host.stateDir);
  const logLines = (host: { stateDir: string }) => (existsSync(logPath(host)) ? readFileSync(logPath(host), "utf8").split("\n").filter(Boolean) : []);
  const snapshotOf = (host: { stateDir: string }) => {
    const st = statSync(metricsStatePath(host.stateDir), { bigint: true });
    return [readFileSync(metricsStatePath(host.stateDir), "utf8"), st.ino, st.mtimeNs];
  };
  const passes = (host: { metricsFile: string }) => value(parseExposition(readFileSync(host.metricsFile, "utf8")), "bin_proxy_runs_total", { kind: "pass" });

  test("no-op passes append a line each and leave the snapshot as it is; the file, the next run and status read them", async () => {
    const host = freshHost();
    await record(host.metricsFile, host.stateDir, pass(T0, [app({ event: { updated: true, downloadedBytes: 7 } })]));
    const snapshot = snapshotOf(host);
    for (let i = 1; i <= 3; i++) {
      const s = await record(host.metricsFile, host.stateDir, pass(minutes(i), [app()], { durationMs: 100 + i, exitCode: i === 2 ? 1 : 0 }));
      expect(value(s, "bin_proxy_runs_total", { kind: "pass" })).toBe(1 + i);
      expect(value(s, "bin_proxy_last_pass_duration_seconds")).toBe((100 + i) / 1000);
      expect(value(s, "bin_proxy_updates_total", { name: "app" })).toBe(1);
    }
    expect(snapshotOf(host)).toEqual(snapshot);
    expect(logLines(host).map((l) => JSON.parse(l).passes)).toEqual([2, 3, 4]);
    expect(statSync(logPath(host)).mode & 0o777).toBe(0o600);
    expect(readLastPass(host.stateDir)).toEqual({ kind: "pass", at: new Date(minutes(3).getTime() + 103).toISOString(), durationMs: 103, exitCode: 0 });
    // The failed pass in between: the success time is the last pass that exited 0, kept across lines.
    const s = await record(host.metricsFile, host.stateDir, pass(minutes(4), [app({ event: { updated: true } })], { exitCode: 1 }));
    expect(value(s, "bin_proxy_last_success_timestamp_seconds")).toBe((minutes(3).getTime() + 103) / 1000);
    // Anything counted is a new snapshot holding the log's passes, and the log is gone.
    expect(existsSync(logPath(host))).toBe(false);
    expect(value(s, "bin_proxy_runs_total", { kind: "pass" })).toBe(5);
    expect(readLastPass(host.stateDir)?.at).toBe(new Date(minutes(4).getTime() + 1500).toISOString());
  });

  test("every run that counts or changes something else is a snapshot: the line would not bring the saved state to it", () => {
    const saved = (state: ReturnType<typeof emptyState>) => ({ state, newest: "", loggedPasses: 1, logAppendable: true });
    const before = applyRun(emptyState(), pass(T0, [app(), app({ name: "worker" })]));
    const noop = pass(minutes(1), [app(), app({ name: "worker" })]);
    expect(canLogPass(saved(before), applyRun(before, noop))).toBe(true);
    expect(canLogPass(saved(before), applyRun(before, { ...noop, exitCode: 1 }))).toBe(true);
    const others: RunMetrics[] = [
      ...[{ updated: true }, { failed: true }, { rolledBack: true }, { downloadedBytes: 1 }].map((event) => pass(minutes(1), [app({ event }), app({ name: "worker" })])),
      pass(minutes(1), [app({ held: true, holdFailures: 1 }), app({ name: "worker" })]),
      pass(minutes(1), [app({ uncommitted: true }), app({ name: "worker" })]),
      pass(minutes(1), [app({ target: C }), app({ name: "worker" })]),
      pass(minutes(1), [app({ installed: C }), app({ name: "worker" })]),
      pass(minutes(1), [app({ targetVersion: "2.0" }), app({ name: "worker" })]),
      pass(minutes(1), [app()]),
      pass(minutes(1), [app(), app({ name: "worker" })], { signaturesRequired: false }),
      ...(["rollback", "retry", "config-error"] as const).map((kind) => pass(minutes(1), [app(), app({ name: "worker" })], { kind })),
      pass(minutes(1), null, { kind: "config-error", exitCode: 2 }),
    ];
    for (const run of others) expect(canLogPass(saved(before), applyRun(before, run))).toBe(false);
    // Nor onto a log that cannot take a line, a full one, or with no snapshot.
    expect(canLogPass({ ...saved(before), logAppendable: false }, applyRun(before, noop))).toBe(false);
    expect(canLogPass({ ...saved(before), loggedPasses: MAX_LOGGED_PASSES }, applyRun(before, noop))).toBe(false);
    expect(canLogPass(null, applyRun(before, noop))).toBe(false);
  });

  test(`after ${MAX_LOGGED_PASSES} lines the next pass writes a snapshot, and the log starts again`, async () => {
    const host = freshHost();
    recordRun(host.metricsFile, host.stateDir, pass(T0, [app()]));
    for (let i = 1; i <= MAX_LOGGED_PASSES; i++) expect(recordRun(host.metricsFile, host.stateDir, pass(minutes(i), [app()]))).toBeNull();
    expect(logLines(host)).toHaveLength(MAX_LOGGED_PASSES);
    await record(host.metricsFile, host.stateDir, pass(minutes(MAX_LOGGED_PASSES + 1), [app()]));
    expect(existsSync(logPath(host))).toBe(false);
    expect(JSON.parse(readFileSync(metricsStatePath(host.stateDir), "utf8")).runs.pass).toBe(MAX_LOGGED_PASSES + 2);
    recordRun(host.metricsFile, host.stateDir, pass(minutes(MAX_LOGGED_PASSES + 2), [app()]));
    expect(logLines(host)).toHaveLength(1);
    expect(passes(host)).toBe(MAX_LOGGED_PASSES + 3);
  });

  for (const [what, tail] of [
    ["a line torn by a pass killed mid-append", '{"passes":99,"at":"2026-'],
    ["zeros a power cut left at the new length", "\0".repeat(90)],
    ["a line that is not ours", "garbage\n"],
  ] as const) {
    test(`${what}: not counted, no line appended after it, and the next record is a snapshot that removes the log`, async () => {
      const host = freshHost();
      recordRun(host.metricsFile, host.stateDir, pass(T0, [app({ event: { updated: true } })]));
      recordRun(host.metricsFile, host.stateDir, pass(minutes(1), [app()]));
      appendFileSync(logPath(host), tail);
      expect(readLastPass(host.stateDir)?.at).toBe(new Date(minutes(1).getTime() + 1500).toISOString());
      const s = await record(host.metricsFile, host.stateDir, pass(minutes(2), [app()]));
      expect(value(s, "bin_proxy_runs_total", { kind: "pass" })).toBe(3);
      expect(value(s, "bin_proxy_updates_total", { name: "app" })).toBe(1);
      expect(existsSync(logPath(host))).toBe(false);
      expect(JSON.parse(readFileSync(metricsStatePath(host.stateDir), "utf8")).runs.pass).toBe(3);
    });
  }

  test("a log the snapshot already holds (its run killed before removing it) is not counted twice", () => {
    const host = freshHost();
    recordRun(host.metricsFile, host.stateDir, pass(T0, [app()]));
    for (let i = 1; i <= 3; i++) recordRun(host.metricsFile, host.stateDir, pass(minutes(i), [app()]));
    const log = readFileSync(logPath(host));
    recordRun(host.metricsFile, host.stateDir, pass(minutes(4), [app({ event: { updated: true } })]));
    writeFileSync(logPath(host), log);
    expect(readLastPass(host.stateDir)?.at).toBe(new Date(minutes(4).getTime() + 1500).toISOString());
    recordRun(host.metricsFile, host.stateDir, pass(minutes(5), [app()]));
    expect(passes(host)).toBe(6);
  });

  test("a FIFO or a directory at the log's path is never read or written: the pass goes on, and the FIFO is removed", () => {
    const host = freshHost();
    recordRun(host.metricsFile, host.stateDir, pass(T0, [app()]));
    expect(Bun.spawnSync(["mkfifo", logPath(host)]).exitCode).toBe(0);
    expect(recordRun(host.metricsFile, host.stateDir, pass(minutes(1), [app()]))).toBeNull();
    expect(existsSync(logPath(host))).toBe(false);
    expect(passes(host)).toBe(2);
    mkdirSync(logPath(host));
    expect(recordRun(host.metricsFile, host.stateDir, pass(minutes(2), [app()]))).toMatch(/metrics-state\.json is saved, but the pass log it now holds cannot be removed: EISDIR.*metrics-passes\.log/);
    expect(passes(host)).toBe(3);
    expect(JSON.parse(readFileSync(metricsStatePath(host.stateDir), "utf8")).runs.pass).toBe(3);
  });

  test("a pass killed between creating the log and writing its line: the metrics file it wrote is read back, so its pass still counts", () => {
    const host = freshHost();
    recordRun(host.metricsFile, host.stateDir, pass(T0, [app({ event: { updated: true } })]));
    recordRun(host.metricsFile, host.stateDir, pass(minutes(1), [app()]));
    // What the killed pass leaves: its metrics file (2 passes), then an empty log, created after it.
    // The snapshot is a pass older than both (file times can share one 4 ms tick here).
    const earlier = new Date(statSync(metricsStatePath(host.stateDir)).mtime.getTime() - 60_000);
    utimesSync(metricsStatePath(host.stateDir), earlier, earlier);
    writeFileSync(logPath(host), "");
    recordRun(host.metricsFile, host.stateDir, pass(minutes(2), [app()]));
    expect(passes(host)).toBe(3);
  });

  test("a metrics file older than the log's last line is not read back: the state's counts stand", () => {
    const host = freshHost();
    recordRun(host.metricsFile, host.stateDir, pass(T0, [app({ event: { updated: true } })]));
    recordRun(host.metricsFile, host.stateDir, pass(minutes(1), [app()]));
    writeFileSync(host.metricsFile, readFileSync(host.metricsFile, "utf8").replace(/^(bin_proxy_updates_total\{name="app"\}) 1$/m, "$1 99"));
    const logTime = statSync(logPath(host)).mtime;
    utimesSync(host.metricsFile, new Date(logTime.getTime() - 60_000), new Date(logTime.getTime() - 60_000));
    recordRun(host.metricsFile, host.stateDir, pass(minutes(2), [app()]));
    expect(value(parseExposition(readFileSync(host.metricsFile, "utf8")), "bin_proxy_updates_total", { name: "app" })).toBe(1);
    expect(logLines(host)).toHaveLength(2);
  });

  test("a log line with the pass count of a later snapshot (a rollback killed before removing the log) does not hide that run", () => {
    const host = freshHost();
    recordRun(host.metricsFile, host.stateDir, pass(T0, [app()]));
    for (let i = 1; i <= 3; i++) recordRun(host.metricsFile, host.stateDir, pass(minutes(i), [app()]));
    const log = readFileSync(logPath(host));
    // The rollback counts no pass: its snapshot has the log's last pass count, 4.
    recordRun(host.metricsFile, host.stateDir, pass(minutes(4), [app({ event: { rolledBack: true } })], { kind: "rollback" }));
    writeFileSync(logPath(host), log);
    expect(readSavedState(host.stateDir)?.state.lastRun).toMatchObject({ kind: "rollback", at: new Date(minutes(4).getTime() + 1500).toISOString() });
    const s = parseExposition(readFileSync(host.metricsFile, "utf8"));
    expect(value(s, "bin_proxy_runs_total", { kind: "pass" })).toBe(4);
    expect(value(s, "bin_proxy_last_run_kind", { kind: "rollback" })).toBe(1);
  });

  test("a symlink, or a log larger than 60 lines could make, at the log's path is not read: the next record is a snapshot, which removes it", () => {
    const host = freshHost();
    const victim = join(host.root, "victim");
    writeFileSync(victim, "keep me\n");
    recordRun(host.metricsFile, host.stateDir, pass(T0, [app()]));
    symlinkSync(victim, logPath(host));
    expect(recordRun(host.metricsFile, host.stateDir, pass(minutes(1), [app()]))).toBeNull();
    expect(readFileSync(victim, "utf8")).toBe("keep me\n");
    expect(existsSync(logPath(host))).toBe(false);
    writeFileSync(logPath(host), `${JSON.stringify({ passes: 999, at: T0.toISOString(), durationMs: 1, exitCode: 0, lastSuccessAt: null })}\n`.repeat(1000));
    expect(recordRun(host.metricsFile, host.stateDir, pass(minutes(2), [app()]))).toBeNull();
    expect(existsSync(logPath(host))).toBe(false);
    expect(passes(host)).toBe(3);
  });

  test("a log that cannot be appended to (immutable): every pass is a snapshot instead, each saying why the log stays", () => {
    const host = freshHost();
    recordRun(host.metricsFile, host.stateDir, pass(T0, [app()]));
    recordRun(host.metricsFile, host.stateDir, pass(minutes(1), [app()]));
    expect(Bun.spawnSync(["chattr", "+i", logPath(host)]).exitCode).toBe(0);
    try {
      for (let i = 2; i <= 3; i++) {
        expect(recordRun(host.metricsFile, host.stateDir, pass(minutes(i), [app()]))).toMatch(/metrics-state\.json is saved, but the pass log it now holds cannot be removed: EPERM/);
        expect(JSON.parse(readFileSync(metricsStatePath(host.stateDir), "utf8")).runs.pass).toBe(i + 1);
        expect(passes(host)).toBe(i + 1);
      }
    } finally {
      Bun.spawnSync(["chattr", "-i", logPath(host)]);
    }
  });

  test("a record time or exit status this module would never write is refused as garbage", () => {
    const line = (over: object) => JSON.stringify({ passes: 2, at: T0.toISOString(), durationMs: 5, exitCode: 0, lastSuccessAt: null, ...over });
    expect(readPassLog(`${line({})}\n`).last).not.toBeNull();
    for (const bad of [{ at: "Jan 1 2026 \u001b[2J" }, { exitCode: 1e300 }, { exitCode: -1 }, { lastSuccessAt: `${T0.toISOString()}${" ".repeat(40)}` }]) {
      expect(readPassLog(`${line(bad)}\n`)).toMatchObject({ last: null, appendable: false });
    }
  });

  test("readPassLog: the last valid line counts; another line follows only a whole valid one", () => {
    const line = (passes: number) => JSON.stringify({ passes, at: minutes(passes).toISOString(), durationMs: 5, exitCode: 0, lastSuccessAt: null });
    expect(readPassLog("")).toEqual({ last: null, lines: 0, appendable: true });
    expect(readPassLog(`${line(1)}\n${line(2)}\n`)).toMatchObject({ last: { passes: 2 }, lines: 2, appendable: true });
    expect(readPassLog(`${line(1)}\n${line(2)}`)).toMatchObject({ last: { passes: 1 }, appendable: false });
    expect(readPassLog(`${line(1)}\n{"passes":-1}\n`)).toMatchObject({ last: { passes: 1 }, appendable: false });
    expect(readPassLog("\0\0\0")).toEqual({ last: null, lines: 0, appendable: false });
  });
});

test("binaries named like Object's own properties are counted as any other", () => {
  const host = freshHost();
  const names = ["__proto__", "constructor", "counters", "toString"];
  for (const [i, at] of [T0, minutes(1)].entries()) {
    recordRun(host.metricsFile, host.stateDir, pass(at, names.map((name) => app({ name, event: { updated: true, downloadedBytes: 10 + i } }))));
  }
  const samples = parseExposition(readFileSync(host.metricsFile, "utf8"));
  for (const name of names) {
    expect(value(samples, "bin_proxy_updates_total", { name })).toBe(2);
    expect(value(samples, "bin_proxy_downloaded_bytes_total", { name })).toBe(21);
  }
  expect(readLastPass(host.stateDir)?.at).toBe(new Date(minutes(1).getTime() + 1500).toISOString());
});

describe("renderMetrics", () => {
  test("label values are escaped, a release name is kept printable and short, and the text reads back as the same state", async () => {
    const state = applyRun(emptyState(), pass(T0, [app({ targetVersion: `v2 "beta"\\\n${"x".repeat(200)}` })]));
    const text = renderMetrics(state);
    expect((await promtoolCheckMetrics(text)).output).toBe("");
    const label = info(parseExposition(text), "app")!.target_version!;
    expect(label.startsWith('v2 "beta"\\?')).toBe(true);
    expect(label.length).toBe(64);
    expect(stateFromMetrics(parseExposition(text))).toEqual(state);
  });

  test("no hash is ever a counter's label; hashes appear only as 12-hex labels of bin_proxy_binary_info", () => {
    const state = applyRun(emptyState(), pass(T0, [app({ installed: C, target: D, event: { failed: true } })]));
    for (const s of parseExposition(renderMetrics(state))) {
      const hexLabels = Object.values(s.labels).filter((v) => /^[0-9a-f]{12,}$/.test(v));
      if (s.name === "bin_proxy_binary_info") expect(hexLabels.every((v) => v.length === 12)).toBe(true);
      else expect(hexLabels).toEqual([]);
    }
  });

  test("HELP texts are written as they are, so none holds a backslash or a line break", () => {
    const state = applyRun(emptyState(), pass(T0, [app({ target: D, held: true, holdFailures: 2, uncommitted: true })]));
    const helps = renderMetrics(state).split("\n").filter((line) => line.startsWith("# HELP "));
    expect(helps.length).toBeGreaterThan(15);
    expect(helps.filter((line) => line.includes("\\"))).toEqual([]);
  });

  test("promtool's check is real: it refuses a counter without _total and a torn line", async () => {
    expect((await promtoolCheckMetrics("# HELP x a\n# TYPE x counter\nx 1\n")).ok).toBe(false);
    expect((await promtoolCheckMetrics(renderMetrics(emptyState()).slice(0, -20))).ok).toBe(false);
  });
});

/** A separate process calling recordRun `runs` times on host, each pass with `binaries` binaries that each downloaded `i` bytes (run i). */
/** A process recording runs passes of binaries; counted: each downloads bytes and flips a hold (a snapshot each), else each is a no-op (a line of the pass log). */
function spawnRecorder(host: { metricsFile: string; stateDir: string }, runs: number, binaries: number, counted = true) {
  const script = `
    import { recordRun } from ${JSON.stringify(resolve(import.meta.dir, "../../lib/metrics.ts"))};
    const names = Array.from({ length: ${binaries} }, (_, i) => "binary-" + i);
    for (let i = 1; i <= ${runs}; i++) {
      const problem = recordRun(${JSON.stringify(host.metricsFile)}, ${JSON.stringify(host.stateDir)}, {
        kind: "pass", startedAt: new Date(), durationMs: i, exitCode: 0, signaturesRequired: true,
        binaries: names.map((name) => ${counted}
          ? { name, installed: null, target: null, held: i % 2 === 0, holdFailures: i, uncommitted: false, event: { downloadedBytes: i } }
          : { name, installed: null, target: null, held: false, holdFailures: 0, uncommitted: false }),
      });
      if (problem) throw new Error(problem);
    }`;
  const proc = Bun.spawn([process.execPath, "-e", script], { stdout: "ignore", stderr: "pipe" });
  const stderr = new Response(proc.stderr).text();
  return { proc, done: async () => [await proc.exited, await stderr] as const };
}

test("the file is replaced atomically: a reader polling it during many writes never sees a partial file", async () => {
  const host = freshHost();
  // Enough binaries that the file spans many pages: a write in place would be seen half done.
  const writer = spawnRecorder(host, 150, 300);
  let reads = 0;
  while (writer.proc.exitCode === null) {
    let text: string;
    try {
      text = readFileSync(host.metricsFile, "utf8");
    } catch {
      await Bun.sleep(0);
      continue; // not written yet
    }
    reads++;
    // binary-99 sorts last: the file's last line.
    expect(text).toMatch(/\nbin_proxy_downloaded_bytes_total\{name="binary-99"\} \d+\n$/);
    expect(text.match(/^bin_proxy_binary_info\{/gm)?.length).toBe(300);
    await Bun.sleep(0);
  }
  expect(await writer.done()).toEqual([0, ""]);
  expect(reads).toBeGreaterThan(20);
  expect((await promtoolCheckMetrics(readFileSync(host.metricsFile, "utf8"))).output).toBe("");
}, 60_000);

test("runs at the same time take turns: no count is lost or goes back", async () => {
  const host = freshHost();
  const writers = Array.from({ length: 4 }, () => spawnRecorder(host, 25, 1));
  for (const w of writers) expect(await w.done()).toEqual([0, ""]);
  const s = parseExposition(readFileSync(host.metricsFile, "utf8"));
  expect(value(s, "bin_proxy_runs_total", { kind: "pass" })).toBe(100);
  // Each writer's runs downloaded 1 + 2 + … + 25 bytes.
  expect(value(s, "bin_proxy_downloaded_bytes_total", { name: "binary-0" })).toBe(4 * ((25 * 26) / 2));
  // No-op passes at the same time: each a line of the pass log (a snapshot every MAX_LOGGED_PASSES), none lost or counted twice.
  const noops = Array.from({ length: 4 }, () => spawnRecorder(host, 40, 1, false));
  for (const w of noops) expect(await w.done()).toEqual([0, ""]);
  expect(value(parseExposition(readFileSync(host.metricsFile, "utf8")), "bin_proxy_runs_total", { kind: "pass" })).toBe(260);
  const log = readPassLog(readFileSync(passLogPath(host.stateDir), "utf8"));
  expect(log).toMatchObject({ last: { passes: 260 }, appendable: true });
  expect(log.lines).toBeLessThanOrEqual(MAX_LOGGED_PASSES);
  expect(JSON.parse(readFileSync(metricsStatePath(host.stateDir), "utf8")).runs.pass + log.lines).toBe(260);
}, 60_000);

test("node_exporter serves bin-proxy's series after an update, a held failure and a configuration error", async () => {
  const textfile = join(dir, "textfile", "bin_proxy.prom");
  const stateDir = join(dir, "exporter-state");
  mkdirSync(stateDir);
  const scraped = async () => parseExposition(await exporter.scrape());
  expect(recordRun(textfile, stateDir, pass(T0, [app({ installed: C, target: C, event: { updated: true, downloadedBytes: 10 } })]))).toBeNull();
  let s = await scraped();
  expect(value(s, "node_textfile_scrape_error")).toBe(0);
  expect(value(s, "bin_proxy_updates_total", { name: "app" })).toBe(1);
  expect(value(s, "bin_proxy_binary_up_to_date", { name: "app" })).toBe(1);

  expect(recordRun(textfile, stateDir, pass(minutes(1), [app({ installed: C, target: D, held: true, holdFailures: 1, event: { failed: true } })], { exitCode: 1 }))).toBeNull();
  s = await scraped();
  expect(value(s, "bin_proxy_binary_held", { name: "app" })).toBe(1);
  expect(value(s, "bin_proxy_update_failures_total", { name: "app" })).toBe(1);

  expect(recordConfigError(textfile, stateDir, minutes(2))).toBeNull();
  s = await scraped();
  expect(value(s, "node_textfile_scrape_error")).toBe(0);
  expect(value(s, "bin_proxy_config_ok")).toBe(0);
  expect(value(s, "bin_proxy_last_pass_exit_code")).toBe(2);
  expect(value(s, "bin_proxy_build_info", { version: VERSION, commit: COMMIT })).toBe(1);
});

describe("the README's alerting rules", () => {
  const rulesFile = resolve(import.meta.dir, "../fixture/alerts.rules.yml");
  test("are the fixture's, byte for byte", () => {
    const readme = readFileSync(resolve(import.meta.dir, "../../README.md"), "utf8");
    expect(readme.indexOf("\n## Monitoring\n")).toBeGreaterThan(0);
    const monitoring = readme.slice(readme.indexOf("\n## Monitoring\n"));
    const block = /\n```yaml\n([\s\S]*?)```\n/.exec(monitoring)?.[1];
    expect(block).toBe(readFileSync(rulesFile, "utf8"));
  });
  test("pass promtool check rules, and name only metrics the file has", async () => {
    const check = await promtoolCheckRules(rulesFile);
    expect(check.output).toContain("SUCCESS: 3 rules found");
    expect(check.ok).toBe(true);
    const rendered = new Set(parseExposition(renderMetrics(applyRun(emptyState(), pass(T0, [app()])))).map((s) => s.name));
    const used = readFileSync(rulesFile, "utf8").match(/bin_proxy_[a-z_]+/g) ?? [];
    expect(used.length).toBeGreaterThan(3);
    for (const name of used) expect([name, rendered.has(name)]).toEqual([name, true]);
  });
});
