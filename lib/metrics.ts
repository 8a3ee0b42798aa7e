// Owns the Prometheus textfile (SPEC §11): its text, reading back one an earlier run wrote, and recording a run into it and the state under one flock.
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { withExclusiveLock } from "./flock.ts";
import { readTextIfPresent, sweepOrphanTemps, writeFileAtomic } from "./fsx.ts";
import { errorText } from "./log.ts";
import {
  applyRun, canLogPass, count, emptyState, logPass, mergeStates, metricsStatePath, readSavedState, RUN_KINDS, saveSnapshot, SHORT_HEX, versionLabel,
  type BinaryState, type MetricsState, type RunKind, type RunMetrics, type RunRecord, type SavedState,
} from "./metricsstate.ts";
import { nameProblem } from "./manifest.ts";
import { COMMIT, VERSION } from "./version.ts";

/** Beside the state, never removed (a flock on a file that can vanish could be raced). */
const LOCK_FILE = ".metrics.lock";

// ---- the exposition text ----

type Labels = Record<string, string>;

const NEEDS_ESCAPE = /[\\"\n]/;
const escapeLabel = (v: string): string => (NEEDS_ESCAPE.test(v) ? v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n") : v);
const seconds = (ms: number): number => Math.round(ms) / 1000;

/** The families with one sample per binary: name, type, HELP, and the sample's value (null: none for that binary). */
const PER_BINARY: [name: string, type: "gauge" | "counter", help: string, value: (b: BinaryState) => number | null][] = [
  ["bin_proxy_binary_up_to_date", "gauge", "1 when the installed version is the API's target, 0 when not; absent until a pass has learnt the target.", (b) => (b.target === null ? null : Number(b.installed === b.target))],
  ["bin_proxy_binary_held", "gauge", "1 while a failed or rolled-back target is held (not retried before its backoff ends).", (b) => Number(b.held)],
  ["bin_proxy_binary_hold_failures", "gauge", "Consecutive failures of the held target.", (b) => b.holdFailures],
  ["bin_proxy_binary_attempt_uncommitted", "gauge", "1 when an update attempt is recorded and not committed (its pass was killed).", (b) => Number(b.uncommitted)],
  ["bin_proxy_updates_total", "counter", "Updates installed and committed.", (b) => b.counters.updates],
  ["bin_proxy_update_failures_total", "counter", "Updates that failed (download, verification, install, restart or health check).", (b) => b.counters.failures],
  ["bin_proxy_rollbacks_total", "counter", "Rollbacks, automatic or by `bin-proxy rollback`.", (b) => b.counters.rollbacks],
  ["bin_proxy_downloaded_bytes_total", "counter", "Bytes received by downloads, successful or not.", (b) => b.counters.downloadedBytes],
];

/**
 * The metrics file's text (pure): HELP and TYPE lines, then the samples, in the text exposition
 * format; a family without samples is left out. Written straight into one string: a pass renders it
 * once, in a process too short-lived for the JIT, where every object and call per sample counts.
 */
export function renderMetrics(state: MetricsState): string {
  // Names are plain (SPEC §4: the manifest, the state file and a metrics file read back admit no other), so need no escaping.
  const names = Object.keys(state.binaries).sort();
  let text = "";
  const family = (name: string, type: "gauge" | "counter", help: string, samples: string) => {
    if (samples !== "") text += `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${samples}`;
  };
  const gauge = (name: string, help: string, value: number | null) => family(name, "gauge", help, value === null ? "" : `${name} ${value}\n`);
  const byKind = (name: string, value: (kind: RunKind) => number) => {
    let samples = "";
    for (const kind of RUN_KINDS) samples += `${name}{kind="${kind}"} ${value(kind)}\n`;
    return samples;
  };
  const run = (prefix: string, what: string, r: RunRecord | null) => {
    gauge(`${prefix}_timestamp_seconds`, `When the last ${what} ended, in seconds since the epoch.`, r && seconds(Date.parse(r.at)));
    gauge(`${prefix}_duration_seconds`, `How long the last ${what} took.`, r && seconds(r.durationMs));
    gauge(`${prefix}_exit_code`, `Exit status of the last ${what}: 0 ok, 1 a binary failed, 2 usage or configuration error.`, r && r.exitCode);
  };
  family("bin_proxy_build_info", "gauge", "The bin-proxy build that wrote this file.", `bin_proxy_build_info{version="${escapeLabel(VERSION)}",commit="${escapeLabel(COMMIT)}"} 1\n`);
  gauge("bin_proxy_config_ok", "1 when the last run could read its configuration and manifest, 0 on a configuration error.", Number(state.lastRun?.kind !== "config-error"));
  gauge("bin_proxy_signatures_required", "1 when every target must be signed by a trusted key, 0 when targets are not signature-checked.", state.signaturesRequired === null ? null : Number(state.signaturesRequired));
  run("bin_proxy_last_run", "run of any kind", state.lastRun);
  const lastKind = state.lastRun?.kind;
  family("bin_proxy_last_run_kind", "gauge", "1 for the kind of the last run (pass, rollback, retry, config-error), 0 for the others.", lastKind ? byKind("bin_proxy_last_run_kind", (kind) => Number(lastKind === kind)) : "");
  run("bin_proxy_last_pass", "pass (a configuration error counts as a failed pass)", state.lastPass);
  gauge("bin_proxy_last_success_timestamp_seconds", "When the last pass that exited 0 ended, in seconds since the epoch; 0: never.", state.lastSuccessAt ? seconds(Date.parse(state.lastSuccessAt)) : 0);
  family("bin_proxy_runs_total", "counter", "Runs of bin-proxy, by kind.", byKind("bin_proxy_runs_total", (kind) => state.runs[kind]));
  let info = "";
  for (const name of names) {
    const b = state.binaries[name]!;
    info += `bin_proxy_binary_info{name="${name}",installed="${b.installed ?? ""}",target="${b.target ?? ""}",target_version="${escapeLabel(b.targetVersion)}"} 1\n`;
  }
  family("bin_proxy_binary_info", "gauge", "Installed and target version of each binary, as 12-hex short SHA-256 (\"\": none or not known yet), and the API's release name of the target.", info);
  for (const [metric, type, help, value] of PER_BINARY) {
    let samples = "";
    for (const name of names) {
      const v = value(state.binaries[name]!);
      if (v !== null) samples += `${metric}{name="${name}"} ${v}\n`;
    }
    family(metric, type, help, samples);
  }
  return text;
}

// ---- reading back what earlier runs left ----

export interface Sample {
  name: string;
  labels: Labels;
  value: number;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/;
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?/y;

/** The samples of an exposition text; lines it cannot read are skipped (the file may not be ours). */
export function parseExposition(text: string): Sample[] {
  return text.split("\n").flatMap((line) => {
    const m = line.startsWith("#") ? null : SAMPLE.exec(line.trim());
    if (!m) return [];
    const labels: Labels = {};
    const body = m[2] ?? "";
    LABEL.lastIndex = 0;
    while (LABEL.lastIndex < body.length) {
      const start = LABEL.lastIndex;
      const l = LABEL.exec(body);
      if (!l || LABEL.lastIndex === start) return [];
      labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    }
    const value = Number(m[3]);
    return Number.isFinite(value) ? [{ name: m[1]!, labels, value }] : [];
  });
}

/** What a metrics file this module wrote says of the state; anything not understood is left out. */
export function stateFromMetrics(samples: Sample[]): MetricsState {
  const state = emptyState();
  // Indexed by name and its one distinguishing label: a file of many binaries is read in linear time.
  const index = new Map(samples.map((s) => [`${s.name}|${s.labels.name ?? s.labels.kind ?? ""}`, s.value]));
  const get = (name: string, labels: { name?: string; kind?: string } = {}): number | null => index.get(`${name}|${labels.name ?? labels.kind ?? ""}`) ?? null;
  const iso = (sec: number | null): string | null => (sec === null || sec <= 0 ? null : new Date(Math.round(sec * 1000)).toISOString());
  const record = (prefix: string, kind: RunKind | null): RunRecord | null => {
    const at = iso(get(`${prefix}_timestamp_seconds`));
    const durationSec = get(`${prefix}_duration_seconds`);
    const exitCode = get(`${prefix}_exit_code`);
    if (!at || !kind || durationSec === null || exitCode === null || !Number.isInteger(exitCode)) return null;
    return { kind, at, durationMs: Math.round(durationSec * 1000), exitCode };
  };
  for (const kind of RUN_KINDS) state.runs[kind] = count(get("bin_proxy_runs_total", { kind }) ?? 0);
  state.lastRun = record("bin_proxy_last_run", RUN_KINDS.find((kind) => get("bin_proxy_last_run_kind", { kind }) === 1) ?? null);
  // The last pass was a configuration error exactly when the last run was one and ended then.
  const passKind = state.lastRun?.kind === "config-error" && get("bin_proxy_last_pass_timestamp_seconds") === get("bin_proxy_last_run_timestamp_seconds") ? "config-error" : "pass";
  state.lastPass = record("bin_proxy_last_pass", passKind);
  state.lastSuccessAt = iso(get("bin_proxy_last_success_timestamp_seconds"));
  const signatures = get("bin_proxy_signatures_required");
  state.signaturesRequired = signatures === null ? null : signatures === 1;
  for (const info of samples.filter((s) => s.name === "bin_proxy_binary_info")) {
    const { name = "", installed = "", target = "", target_version = "" } = info.labels;
    if (nameProblem(name)) continue;
    const of = (metric: string) => count(get(metric, { name }) ?? 0);
    state.binaries[name] = {
      installed: SHORT_HEX.test(installed) ? installed : null,
      target: SHORT_HEX.test(target) ? target : null,
      targetVersion: versionLabel(target_version),
      held: of("bin_proxy_binary_held") === 1,
      holdFailures: of("bin_proxy_binary_hold_failures"),
      uncommitted: of("bin_proxy_binary_attempt_uncommitted") === 1,
      counters: {
        updates: of("bin_proxy_updates_total"),
        failures: of("bin_proxy_update_failures_total"),
        rollbacks: of("bin_proxy_rollbacks_total"),
        downloadedBytes: of("bin_proxy_downloaded_bytes_total"),
      },
    };
  }
  return state;
}

// ---- recording a run ----

/**
 * Records one run: merges it into the state kept under stateDir (when that directory exists) and
 * rewrites metricsFile. Never throws: returns what went wrong, for the caller to log, or null. A
 * state file that is garbage is replaced, starting from what the last metrics file says (else from
 * zero), and said so.
 */
export function recordRun(metricsFile: string, stateDir: string | null, run: RunMetrics): string | null {
  try {
    // Runs at the same time (a cron pass and an operator's command) take turns: read, merge and
    // write under one flock, or one could write back a count the other had already raised.
    if (stateDir !== null && existsSync(stateDir)) return withExclusiveLock(join(stateDir, LOCK_FILE), () => mergeAndWrite(metricsFile, stateDir, run), 5_000);
    return mergeAndWrite(metricsFile, null, run);
  } catch (err) {
    return `metrics not recorded: ${errorText(err)}`;
  }
}

function mergeAndWrite(metricsFile: string, stateDir: string | null, run: RunMetrics): string | null {
  const problems: string[] = [];
  let saved: SavedState | null = null;
  let published: MetricsState | null = null;
  if (stateDir) {
    try {
      saved = readSavedState(stateDir);
    } catch (err) {
      problems.push(`metrics state ${metricsStatePath(stateDir)} is unusable (${errorText(err)}); starting from the last metrics file (from zero without one)`);
    }
  }
  // The metrics file is written before the state, so a state at least as new already holds all it
  // says; only a newer metrics file (a run that could not save the state, or was killed between the
  // two writes) or a lost state needs it read back. That keeps a no-op pass cheap.
  if (saved === null || !notNewer(metricsFile, saved.newest)) {
    try {
      const text = readTextIfPresent(metricsFile);
      if (text !== null) published = stateFromMetrics(parseExposition(text));
    } catch (err) {
      problems.push(`cannot read ${metricsFile}: ${errorText(err)}`);
    }
  }
  const previous = saved && published ? mergeStates(saved.state, published) : (saved?.state ?? published ?? emptyState());
  const next = applyRun(previous, run);
  try {
    sweepOrphanTemps(metricsFile);
    writeFileAtomic(metricsFile, renderMetrics(next), { mode: 0o644 }, "unsynced");
  } catch (err) {
    problems.push(`cannot write ${metricsFile}: ${errorText(err)}`);
  }
  if (stateDir) {
    try {
      // A pass that changed nothing but the pass count and times is a line of the log; any other
      // run, or a log that cannot take the line, a new snapshot.
      if (!(canLogPass(saved, next) && logPass(stateDir, next))) saveSnapshot(stateDir, next);
    } catch (err) {
      problems.push(errorText(err));
    }
  }
  return problems.length > 0 ? problems.join("; ") : null;
}

/** Whether the file at path was last changed no later than the one at than (both present). */
function notNewer(path: string, than: string): boolean {
  try {
    return statSync(path, { bigint: true }).mtimeNs <= statSync(than, { bigint: true }).mtimeNs;
  } catch {
    return false;
  }
}

/**
 * A configuration error: the settings are not known, but the metrics file's path may be (from the
 * environment or the config file), and the state dir's. The file then says `bin_proxy_config_ok 0`
 * and keeps every count and fact of earlier runs. The error's text is not written: the file is
 * world-readable and the log has it.
 */
export function recordConfigError(metricsFile: string, stateDir: string | null, startedAt: Date, now = new Date()): string | null {
  return recordRun(metricsFile, stateDir, { kind: "config-error", startedAt, durationMs: now.getTime() - startedAt.getTime(), exitCode: 2, signaturesRequired: null, binaries: null });
}
