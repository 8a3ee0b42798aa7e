// Owns the Prometheus textfile (SPEC §11): what a run tells it, the counters kept across runs, and the atomic 0644 write.
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { withExclusiveLock } from "./flock.ts";
import { readTextIfPresent, readTextNoFollow, sweepOrphanTemps, writeFileAtomic } from "./fsx.ts";
import { short, type Sha256 } from "./hash.ts";
import { isObject, isTime, type Json } from "./json.ts";
import { errorText } from "./log.ts";
import { nameProblem } from "./manifest.ts";
import { COMMIT, VERSION } from "./version.ts";

/** The runs that write the metrics; `status` and `--dry-run` are read-only and write nothing. */
const RUN_KINDS = ["pass", "rollback", "retry", "config-error"] as const;
export type RunKind = (typeof RUN_KINDS)[number];

/** What one run of bin-proxy tells the metrics: filled in by the pass or the operator command that ran. */
export interface RunMetrics {
  kind: RunKind;
  startedAt: Date;
  durationMs: number;
  exitCode: number;
  /** Whether every target must be signed (SPEC §9); null: not known (the trusted keys were not read). */
  signaturesRequired: boolean | null;
  /** Every managed binary; null: the manifest could not be read, so what is known of each is kept from earlier runs. */
  binaries: BinaryMetrics[] | null;
}

export interface BinaryMetrics {
  /** A manifest entry's binary name, so a plain name (SPEC §4): it is shown as a label as it is. */
  name: string;
  /** SHA-256 of the file on disk after the run; null: no file. */
  installed: Sha256 | null;
  /** The API's target; null or absent: this run did not learn it (rollback, retry, an API error), so the last known one is kept. */
  target?: Sha256 | null;
  /** The API's release name for target (`data.version`). */
  targetVersion?: string;
  held: boolean;
  /** Consecutive failures of the held target (0 when not held, or held by `rollback`). */
  holdFailures: number;
  /** An update attempt is recorded and not committed (SPEC §12). */
  uncommitted: boolean;
  /** What happened to the binary in this run; each true counts once. */
  event?: BinaryEvent;
}

export interface BinaryEvent {
  updated?: boolean;
  failed?: boolean;
  rolledBack?: boolean;
  /** Bytes received by downloads of this run, successful or not. */
  downloadedBytes?: number;
}

/** The last pass as `status` shows it; at is when it ended. */
export interface RunRecord {
  kind: RunKind;
  at: string;
  durationMs: number;
  exitCode: number;
}

interface Counters {
  updates: number;
  failures: number;
  rollbacks: number;
  downloadedBytes: number;
}

interface BinaryState {
  /** Short (12 hex) hashes: all the metrics ever show. */
  installed: string | null;
  target: string | null;
  targetVersion: string;
  held: boolean;
  holdFailures: number;
  uncommitted: boolean;
  counters: Counters;
}

/** Everything the metrics file shows, kept under the state dir between runs. */
export interface MetricsState {
  runs: Record<RunKind, number>;
  lastRun: RunRecord | null;
  /** The last pass (or configuration error: a cron run that could not start is a failed pass). */
  lastPass: RunRecord | null;
  lastSuccessAt: string | null;
  signaturesRequired: boolean | null;
  binaries: Record<string, BinaryState>;
}

const STATE_FILE = "metrics-state.json";
/** Beside the state file, never removed (a flock on a file that can vanish could be raced). */
const LOCK_FILE = ".metrics.lock";
const STATE_FORMAT = 1;
const SHORT_HEX = /^[0-9a-f]{12}$/;
/** An API release name is shown as a label: kept printable and short, so one odd value cannot bloat the file. */
const MAX_VERSION_NAME = 64;
const NOT_PRINTABLE = /[^\x20-\x7e]/;
const VERSION_LABEL = new RegExp(`^[\\x20-\\x7e]{0,${MAX_VERSION_NAME}}$`);

export function metricsStatePath(stateDir: string): string {
  return join(stateDir, STATE_FILE);
}

export function emptyState(): MetricsState {
  return { runs: { pass: 0, rollback: 0, retry: 0, "config-error": 0 }, lastRun: null, lastPass: null, lastSuccessAt: null, signaturesRequired: null, binaries: noBinaries() };
}

/** A map of binaries by name with no prototype: `__proto__` and `constructor` are plain names too. */
const noBinaries = (): Record<string, BinaryState> => Object.create(null);
const zeroCounters = (): Counters => ({ updates: 0, failures: 0, rollbacks: 0, downloadedBytes: 0 });
const latest = (a: RunRecord | null, b: RunRecord | null): RunRecord | null => (!a ? b : !b ? a : Date.parse(b.at) > Date.parse(a.at) ? b : a);
const laterTime = (a: string | null, b: string | null): string | null => (!a ? b : !b ? a : Date.parse(b) > Date.parse(a) ? b : a);
const count = (n: number | undefined): number => (Number.isSafeInteger(n) && n! > 0 ? n! : 0);

/** A release name as a label may show it: printable ASCII, at most MAX_VERSION_NAME characters. */
function versionLabel(name: string | undefined): string {
  const label = name ?? "";
  return (NOT_PRINTABLE.test(label) ? label.replace(new RegExp(NOT_PRINTABLE, "g"), "?") : label).slice(0, MAX_VERSION_NAME);
}

/**
 * The state after run (pure). Counters only grow; facts a run did not learn (a target, or every
 * binary when the manifest was unreadable) are kept from before; binaries no longer in a readable
 * manifest are dropped, with their counters.
 */
export function applyRun(previous: MetricsState, run: RunMetrics): MetricsState {
  const thisRun: RunRecord = {
    kind: run.kind,
    at: new Date(run.startedAt.getTime() + run.durationMs).toISOString(),
    durationMs: Math.max(0, Math.round(run.durationMs)),
    exitCode: run.exitCode,
  };
  const countsAsPass = run.kind === "pass" || run.kind === "config-error";
  let binaries = previous.binaries;
  if (run.binaries !== null) {
    binaries = noBinaries();
    for (const b of run.binaries) {
      const before = previous.binaries[b.name];
      const target = b.target ? short(b.target) : (before?.target ?? null);
      const sameTarget = target === before?.target;
      const c = before?.counters ?? zeroCounters();
      const e = b.event ?? {};
      binaries[b.name] = {
        installed: b.installed && short(b.installed),
        target,
        targetVersion: b.targetVersion !== undefined ? versionLabel(b.targetVersion) : sameTarget ? (before?.targetVersion ?? "") : "",
        held: b.held,
        holdFailures: b.holdFailures,
        uncommitted: b.uncommitted,
        counters: {
          updates: c.updates + (e.updated ? 1 : 0),
          failures: c.failures + (e.failed ? 1 : 0),
          rollbacks: c.rollbacks + (e.rolledBack ? 1 : 0),
          downloadedBytes: c.downloadedBytes + count(e.downloadedBytes),
        },
      };
    }
  }
  return {
    runs: { ...previous.runs, [run.kind]: previous.runs[run.kind] + 1 },
    lastRun: thisRun,
    lastPass: countsAsPass ? thisRun : previous.lastPass,
    lastSuccessAt: run.kind === "pass" && run.exitCode === 0 ? thisRun.at : previous.lastSuccessAt,
    signaturesRequired: run.signaturesRequired ?? previous.signaturesRequired,
    binaries,
  };
}

/**
 * Two accounts of the same history (the state file, and the last metrics file written): facts from
 * primary, every counter and time the larger of both. A run that could only write the metrics file
 * (a configuration error naming no state dir) or a state file lost to a crash or garbage never
 * makes a counter go back.
 */
function mergeStates(primary: MetricsState, other: MetricsState): MetricsState {
  const binaries = noBinaries();
  for (const [name, b] of Object.entries(primary.binaries)) {
    const o = other.binaries[name]?.counters ?? zeroCounters();
    binaries[name] = {
      ...b,
      counters: {
        updates: Math.max(b.counters.updates, o.updates),
        failures: Math.max(b.counters.failures, o.failures),
        rollbacks: Math.max(b.counters.rollbacks, o.rollbacks),
        downloadedBytes: Math.max(b.counters.downloadedBytes, o.downloadedBytes),
      },
    };
  }
  const runs = { ...primary.runs };
  for (const kind of RUN_KINDS) runs[kind] = Math.max(primary.runs[kind], other.runs[kind]);
  return {
    runs,
    lastRun: latest(primary.lastRun, other.lastRun),
    lastPass: latest(primary.lastPass, other.lastPass),
    lastSuccessAt: laterTime(primary.lastSuccessAt, other.lastSuccessAt),
    signaturesRequired: primary.signaturesRequired ?? other.signaturesRequired,
    binaries,
  };
}

// ---- the exposition text ----

type Labels = Record<string, string>;
/** A sample as the file shows it: its label set already rendered (`{k="v",…}`, or "" for none). */
interface RenderedSample {
  labels: string;
  value: number;
}
interface Family {
  name: string;
  type: "gauge" | "counter";
  help: string;
  samples: RenderedSample[];
}

const NEEDS_ESCAPE = /[\\"\n]/;
const escapeLabel = (v: string): string => (NEEDS_ESCAPE.test(v) ? v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n") : v);
/** A label set as the file shows it. */
const labelSet = (labels: Labels): string => {
  let pairs = "";
  for (const key in labels) pairs += `${pairs === "" ? "" : ","}${key}="${escapeLabel(labels[key]!)}"`;
  return pairs === "" ? "" : `{${pairs}}`;
};
const seconds = (ms: number): number => Math.round(ms) / 1000;

function families(state: MetricsState): Family[] {
  // Names are plain (SPEC §4: the manifest, the state file and a metrics file read back admit no other), so need no escaping.
  const binaries = Object.keys(state.binaries)
    .sort()
    .map((name) => ({ name, labels: `{name="${name}"}`, state: state.binaries[name]! }));
  const perBinary = (name: string, type: Family["type"], help: string, value: (b: BinaryState) => number | null): Family => {
    const samples: RenderedSample[] = [];
    for (const b of binaries) {
      const v = value(b.state);
      if (v !== null) samples.push({ labels: b.labels, value: v });
    }
    return { name, type, help, samples };
  };
  const one = (name: string, help: string, value: number | null): Family => ({ name, type: "gauge", help, samples: value === null ? [] : [{ labels: "", value }] });
  const byKind = (value: (kind: RunKind) => number): RenderedSample[] => RUN_KINDS.map((kind) => ({ labels: labelSet({ kind }), value: value(kind) }));
  const run = (prefix: string, what: string, r: RunRecord | null): Family[] => [
    one(`${prefix}_timestamp_seconds`, `When the last ${what} ended, in seconds since the epoch.`, r && seconds(Date.parse(r.at))),
    one(`${prefix}_duration_seconds`, `How long the last ${what} took.`, r && seconds(r.durationMs)),
    one(`${prefix}_exit_code`, `Exit status of the last ${what}: 0 ok, 1 a binary failed, 2 usage or configuration error.`, r && r.exitCode),
  ];
  const all: Family[] = [
    { name: "bin_proxy_build_info", type: "gauge", help: "The bin-proxy build that wrote this file.", samples: [{ labels: labelSet({ version: VERSION, commit: COMMIT }), value: 1 }] },
    one("bin_proxy_config_ok", "1 when the last run could read its configuration and manifest, 0 on a configuration error.", Number(state.lastRun?.kind !== "config-error")),
    one("bin_proxy_signatures_required", "1 when every target must be signed by a trusted key, 0 when targets are not signature-checked.", state.signaturesRequired === null ? null : Number(state.signaturesRequired)),
    ...run("bin_proxy_last_run", "run of any kind", state.lastRun),
    {
      name: "bin_proxy_last_run_kind",
      type: "gauge",
      help: "1 for the kind of the last run (pass, rollback, retry, config-error), 0 for the others.",
      samples: state.lastRun ? byKind((kind) => Number(state.lastRun!.kind === kind)) : [],
    },
    ...run("bin_proxy_last_pass", "pass (a configuration error counts as a failed pass)", state.lastPass),
    one("bin_proxy_last_success_timestamp_seconds", "When the last pass that exited 0 ended, in seconds since the epoch; 0: never.", state.lastSuccessAt ? seconds(Date.parse(state.lastSuccessAt)) : 0),
    { name: "bin_proxy_runs_total", type: "counter", help: "Runs of bin-proxy, by kind.", samples: byKind((kind) => state.runs[kind]) },
    {
      name: "bin_proxy_binary_info",
      type: "gauge",
      help: "Installed and target version of each binary, as 12-hex short SHA-256 (\"\": none or not known yet), and the API's release name of the target.",
      samples: binaries.map(({ name, state: b }) => ({
        labels: `{name="${name}",installed="${b.installed ?? ""}",target="${b.target ?? ""}",target_version="${escapeLabel(b.targetVersion)}"}`,
        value: 1,
      })),
    },
    perBinary("bin_proxy_binary_up_to_date", "gauge", "1 when the installed version is the API's target, 0 when not; absent until a pass has learnt the target.", (b) => (b.target === null ? null : Number(b.installed === b.target))),
    perBinary("bin_proxy_binary_held", "gauge", "1 while a failed or rolled-back target is held (not retried before its backoff ends).", (b) => Number(b.held)),
    perBinary("bin_proxy_binary_hold_failures", "gauge", "Consecutive failures of the held target.", (b) => b.holdFailures),
    perBinary("bin_proxy_binary_attempt_uncommitted", "gauge", "1 when an update attempt is recorded and not committed (its pass was killed).", (b) => Number(b.uncommitted)),
    perBinary("bin_proxy_updates_total", "counter", "Updates installed and committed.", (b) => b.counters.updates),
    perBinary("bin_proxy_update_failures_total", "counter", "Updates that failed (download, verification, install, restart or health check).", (b) => b.counters.failures),
    perBinary("bin_proxy_rollbacks_total", "counter", "Rollbacks, automatic or by `bin-proxy rollback`.", (b) => b.counters.rollbacks),
    perBinary("bin_proxy_downloaded_bytes_total", "counter", "Bytes received by downloads, successful or not.", (b) => b.counters.downloadedBytes),
  ];
  return all.filter((f) => f.samples.length > 0);
}

/** The metrics file's text (pure): HELP and TYPE lines, then the samples, in the text exposition format. */
export function renderMetrics(state: MetricsState): string {
  let text = "";
  for (const f of families(state)) {
    text += `# HELP ${f.name} ${f.help}\n# TYPE ${f.name} ${f.type}\n`;
    for (const s of f.samples) text += `${f.name}${s.labels} ${s.value}\n`;
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

// ---- the state file ----

// Each checks all the values of a record in one call. The state is read by every pass, in a process
// too short-lived to gain from the JIT: a small helper called once per field of every binary crosses
// the JIT's threshold and is compiled, which costs the pass more than it ever saves.

/** Whether every value is a count (a non-negative safe integer). */
function allCounts(...values: unknown[]): boolean {
  for (const v of values) if (!Number.isSafeInteger(v) || (v as number) < 0) return false;
  return true;
}

/** Whether every value is null or a short (12 hex) hash. */
function allShortOrNull(...values: unknown[]): boolean {
  for (const v of values) if (v !== null && !(typeof v === "string" && SHORT_HEX.test(v))) return false;
  return true;
}

function parseRecord(v: unknown): RunRecord | null | undefined {
  if (v === null) return null;
  if (!isObject(v) || !(RUN_KINDS as readonly unknown[]).includes(v.kind) || !isTime(v.at) || !allCounts(v.durationMs) || !Number.isInteger(v.exitCode)) return undefined;
  return { kind: v.kind as RunKind, at: v.at, durationMs: v.durationMs as number, exitCode: v.exitCode as number };
}

function parseBinary(v: unknown): BinaryState | undefined {
  if (!isObject(v)) return undefined;
  const { installed, target, targetVersion, held, holdFailures, uncommitted } = v;
  const { updates, failures, rollbacks, downloadedBytes } = (v.counters ?? {}) as Json;
  const valid = allShortOrNull(installed, target) && typeof targetVersion === "string" && VERSION_LABEL.test(targetVersion) && typeof held === "boolean" && typeof uncommitted === "boolean";
  if (!valid || !allCounts(holdFailures, updates, failures, rollbacks, downloadedBytes)) return undefined;
  return { installed: installed as string | null, target: target as string | null, targetVersion, held, holdFailures: holdFailures as number, uncommitted, counters: { updates, failures, rollbacks, downloadedBytes } as Counters };
}

class MetricsStateError extends Error {}

/** Validates the state file's text into a MetricsState; throws MetricsStateError naming what is wrong. */
function parseMetricsState(text: string): MetricsState {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new MetricsStateError(`not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(doc) || doc.format !== STATE_FORMAT) throw new MetricsStateError(`not a format ${STATE_FORMAT} metrics state`);
  const state = emptyState();
  if (!isObject(doc.runs) || !allCounts(...RUN_KINDS.map((kind) => (doc.runs as Json)[kind]))) throw new MetricsStateError("runs must count every run kind");
  for (const kind of RUN_KINDS) state.runs[kind] = (doc.runs as Json)[kind] as number;
  const lastRun = parseRecord(doc.lastRun);
  const lastPass = parseRecord(doc.lastPass);
  if (lastRun === undefined || lastPass === undefined) throw new MetricsStateError("lastRun and lastPass must be null or {kind, at, durationMs, exitCode}");
  if (!(doc.lastSuccessAt === null || isTime(doc.lastSuccessAt))) throw new MetricsStateError("lastSuccessAt must be null or a time");
  if (!(doc.signaturesRequired === null || typeof doc.signaturesRequired === "boolean")) throw new MetricsStateError("signaturesRequired must be null or a boolean");
  if (!isObject(doc.binaries)) throw new MetricsStateError("binaries must be an object");
  for (const name in doc.binaries) {
    const b = parseBinary(doc.binaries[name]);
    if (nameProblem(name) || !b) throw new MetricsStateError(`binaries.${JSON.stringify(name).slice(0, 80)} is not valid`);
    state.binaries[name] = b;
  }
  return { ...state, lastRun, lastPass, lastSuccessAt: doc.lastSuccessAt as string | null, signaturesRequired: doc.signaturesRequired as boolean | null };
}

function formatMetricsState(state: MetricsState): string {
  return JSON.stringify({ format: STATE_FORMAT, ...state }, null, 2) + "\n";
}

/** The last pass recorded under stateDir, for `status`; null when none was, or the file cannot be read. */
export function readLastPass(stateDir: string): RunRecord | null {
  try {
    return parseMetricsState(readTextNoFollow(metricsStatePath(stateDir))).lastPass;
  } catch {
    return null;
  }
}

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
    if (stateDir !== null && existsSync(stateDir)) return withExclusiveLock(join(stateDir, LOCK_FILE), () => mergeAndWrite(metricsFile, metricsStatePath(stateDir), run), 5_000);
    return mergeAndWrite(metricsFile, null, run);
  } catch (err) {
    return `metrics not recorded: ${errorText(err)}`;
  }
}

function mergeAndWrite(metricsFile: string, statePath: string | null, run: RunMetrics): string | null {
  const problems: string[] = [];
  let saved: MetricsState | null = null;
  let published: MetricsState | null = null;
  if (statePath) {
    try {
      const text = readTextIfPresent(statePath);
      if (text !== null) saved = parseMetricsState(text);
    } catch (err) {
      problems.push(`metrics state ${statePath} is unusable (${errorText(err)}); starting from the last metrics file (from zero without one)`);
    }
  }
  // The metrics file is written before the state, so a state at least as new already holds all it
  // says; only a newer metrics file (a run that could not save the state, or was killed between the
  // two writes) or a lost state needs it read back. That keeps a no-op pass cheap.
  if (saved === null || !notNewer(metricsFile, statePath!)) {
    try {
      const text = readTextIfPresent(metricsFile);
      if (text !== null) published = stateFromMetrics(parseExposition(text));
    } catch (err) {
      problems.push(`cannot read ${metricsFile}: ${errorText(err)}`);
    }
  }
  const previous = saved && published ? mergeStates(saved, published) : (saved ?? published ?? emptyState());
  const next = applyRun(previous, run);
  try {
    sweepOrphanTemps(metricsFile);
    writeFileAtomic(metricsFile, renderMetrics(next), { mode: 0o644 }, { sync: "none", ownMeta: true });
  } catch (err) {
    problems.push(`cannot write ${metricsFile}: ${errorText(err)}`);
  }
  if (statePath) {
    try {
      writeFileAtomic(statePath, formatMetricsState(next), { mode: 0o600 }, { sync: countsAnEvent(run) ? "rename" : "contents" });
    } catch (err) {
      problems.push(`cannot save ${statePath}: ${errorText(err)}`);
    }
  }
  return problems.length > 0 ? problems.join("; ") : null;
}

/**
 * Whether the state's replacement must be on disk before the run ends: when the run counted
 * something. A pass in which nothing happened to any binary only moves the pass count and times on,
 * which the next pass records again a minute later: its state is still fsynced (a power cut brings
 * back the old state or the new one, never an empty file, so no counter is ever reset), but the
 * directory is not, so a power cut can undo that one pass's record.
 */
export function countsAnEvent(run: RunMetrics): boolean {
  if (run.kind !== "pass" || run.binaries === null) return true;
  return run.binaries.some(({ event: e }) => e !== undefined && (e.updated || e.failed || e.rolledBack || (e.downloadedBytes ?? 0) > 0));
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
