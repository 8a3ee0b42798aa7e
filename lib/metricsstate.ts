// Owns the metrics' state (SPEC §11): what a run adds to it (pure), and its record under the state dir, a snapshot and the log of the passes since that changed nothing else.
import { join } from "node:path";
import { appendText, readTextIfPresent, removeIfPresent, writeFileAtomic } from "./fsx.ts";
import { short, type Sha256 } from "./hash.ts";
import { isObject, isTime, type Json } from "./json.ts";
import { errorText } from "./log.ts";
import { nameProblem } from "./manifest.ts";

/** The runs that write the metrics; `status` and `--dry-run` are read-only and write nothing. */
export const RUN_KINDS = ["pass", "rollback", "retry", "config-error"] as const;
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

export interface Counters {
  updates: number;
  failures: number;
  rollbacks: number;
  downloadedBytes: number;
}

export interface BinaryState {
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
const PASS_LOG = "metrics-passes.log";
const STATE_FORMAT = 1;
/** Lines the pass log takes before the next pass writes a snapshot instead: about an hour of cron passes, a few KiB read by each. */
export const MAX_LOGGED_PASSES = 60;
export const SHORT_HEX = /^[0-9a-f]{12}$/;
/** An API release name is shown as a label: kept printable and short, so one odd value cannot bloat the file. */
const MAX_VERSION_NAME = 64;
const NOT_PRINTABLE = /[^\x20-\x7e]/;
const VERSION_LABEL = new RegExp(`^[\\x20-\\x7e]{0,${MAX_VERSION_NAME}}$`);

export function metricsStatePath(stateDir: string): string {
  return join(stateDir, STATE_FILE);
}

export function passLogPath(stateDir: string): string {
  return join(stateDir, PASS_LOG);
}

export function emptyState(): MetricsState {
  return { runs: { pass: 0, rollback: 0, retry: 0, "config-error": 0 }, lastRun: null, lastPass: null, lastSuccessAt: null, signaturesRequired: null, binaries: noBinaries() };
}

/** A map of binaries by name with no prototype: `__proto__` and `constructor` are plain names too. */
const noBinaries = (): Record<string, BinaryState> => Object.create(null);
const zeroCounters = (): Counters => ({ updates: 0, failures: 0, rollbacks: 0, downloadedBytes: 0 });
const latest = (a: RunRecord | null, b: RunRecord | null): RunRecord | null => (!a ? b : !b ? a : Date.parse(b.at) > Date.parse(a.at) ? b : a);
const laterTime = (a: string | null, b: string | null): string | null => (!a ? b : !b ? a : Date.parse(b) > Date.parse(a) ? b : a);
export const count = (n: number | undefined): number => (Number.isSafeInteger(n) && n! > 0 ? n! : 0);

/** A release name as a label may show it: printable ASCII, at most MAX_VERSION_NAME characters. */
export function versionLabel(name: string | undefined): string {
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
export function mergeStates(primary: MetricsState, other: MetricsState): MetricsState {
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

/** A time as this module writes it (toISOString): one Date.parse reads, short and printable, since `status` prints it as it is. */
const isRecordTime = (v: unknown): v is string => isTime(v) && v.length <= 32 && !NOT_PRINTABLE.test(v);
/** An exit status: 0 to 255. */
const isExitCode = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 255;

function parseRecord(v: unknown): RunRecord | null | undefined {
  if (v === null) return null;
  if (!isObject(v) || !(RUN_KINDS as readonly unknown[]).includes(v.kind) || !isRecordTime(v.at) || !allCounts(v.durationMs) || !isExitCode(v.exitCode)) return undefined;
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
  if (!(doc.lastSuccessAt === null || isRecordTime(doc.lastSuccessAt))) throw new MetricsStateError("lastSuccessAt must be null or a time");
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

// ---- the pass log ----

/**
 * One line of the pass log: a pass that changed nothing but what the line holds. A line carries
 * totals, not a difference, so only the last whole line counts, and a line the snapshot already
 * holds (a snapshot saved, then its run killed before the log was removed) never counts twice.
 */
export interface LoggedPass {
  /** The pass count after this pass (runs.pass). */
  passes: number;
  at: string;
  durationMs: number;
  exitCode: number;
  lastSuccessAt: string | null;
}

/** More than MAX_LOGGED_PASSES lines ever take: a log this large is not ours, and is not read. */
const MAX_LOG_BYTES = 64 << 10;

function parseLoggedPass(line: string): LoggedPass | null {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return null;
  }
  // Its time, duration and exit status are a pass's record, checked as the snapshot's are.
  if (!isObject(v)) return null;
  const record = parseRecord({ ...v, kind: "pass" });
  if (!record || !allCounts(v.passes) || !(v.lastSuccessAt === null || isRecordTime(v.lastSuccessAt))) return null;
  return { passes: v.passes as number, at: record.at, durationMs: record.durationMs, exitCode: record.exitCode, lastSuccessAt: v.lastSuccessAt };
}

/** What a pass log's text says (pure): its last valid line, how many lines it has, and whether another line can follow them. */
export function readPassLog(text: string): { last: LoggedPass | null; lines: number; appendable: boolean } {
  const lines = text.split("\n");
  // A torn append (a pass killed mid-write, or a power cut that left the new length full of zeros) ends without a line break.
  const torn = lines.pop() !== "";
  const lastLine = lines.length > 0 ? parseLoggedPass(lines[lines.length - 1]!) : null;
  let last = lastLine;
  for (let i = lines.length - 2; last === null && i >= 0; i--) last = parseLoggedPass(lines[i]!);
  // A line appended after a torn or invalid one would join it, or read as a log that lost its last
  // pass: the next record is a snapshot instead, which removes the log.
  return { last, lines: lines.length, appendable: !torn && (lines.length === 0 || lastLine !== null) };
}

/** The state after a logged pass (pure); a line the state already counts changes nothing. */
function withLoggedPass(state: MetricsState, logged: LoggedPass | null): MetricsState {
  if (logged === null || logged.passes <= state.runs.pass) return state;
  const record: RunRecord = { kind: "pass", at: logged.at, durationMs: logged.durationMs, exitCode: logged.exitCode };
  return { ...state, runs: { ...state.runs, pass: logged.passes }, lastRun: record, lastPass: record, lastSuccessAt: logged.lastSuccessAt };
}

/** The line that records state's last pass (one there must be). */
function loggedPassOf(state: MetricsState): LoggedPass {
  const { at, durationMs, exitCode } = state.lastPass!;
  return { passes: state.runs.pass, at, durationMs, exitCode, lastSuccessAt: state.lastSuccessAt };
}

// ---- the record under the state dir: snapshot and log ----

/** What the state dir holds of the metrics. */
export interface SavedState {
  state: MetricsState;
  /** The file of the last record the state holds (the log when its last line counts, else the snapshot): a metrics file newer than it may hold what the state lacks. */
  newest: string;
  /** Lines in the log (0: no log). */
  loggedPasses: number;
  /** Whether the log can take another line: there is none yet, or it ends with a whole valid line. */
  logAppendable: boolean;
}

/**
 * The state recorded under stateDir: the snapshot, and the last pass the log adds to it. Null when
 * there is no snapshot (a log is read only beside one). Throws when the snapshot is unusable; a log
 * that cannot be read only makes the next record a snapshot.
 */
export function readSavedState(stateDir: string): SavedState | null {
  const statePath = metricsStatePath(stateDir);
  // The log first: `status` reads without the flock, and a run that replaces both files in between
  // then leaves an old log beside the new snapshot (lines it already holds), never the old snapshot
  // without the log that completed it. null: no log; undefined: one that cannot be read.
  let log: ReturnType<typeof readPassLog> | null | undefined;
  try {
    const logText = readTextIfPresent(passLogPath(stateDir), MAX_LOG_BYTES);
    log = logText === null ? null : readPassLog(logText);
  } catch {
    log = undefined;
  }
  const text = readTextIfPresent(statePath);
  if (text === null) return null;
  const snapshot = parseMetricsState(text);
  if (!log) return { state: snapshot, newest: statePath, loggedPasses: 0, logAppendable: log === null };
  // The log is the newer record only while its last line counts: an empty log (its first append
  // killed before the write) or one the snapshot already holds says nothing the metrics file lacks.
  const counts = log.last !== null && log.last.passes > snapshot.runs.pass;
  return { state: withLoggedPass(snapshot, log.last), newest: counts ? passLogPath(stateDir) : statePath, loggedPasses: log.lines, logAppendable: log.appendable };
}

/** The last pass recorded under stateDir, for `status`; null when none was. Throws when the state cannot be read. */
export function readLastPass(stateDir: string): RunRecord | null {
  return readSavedState(stateDir)?.state.lastPass ?? null;
}

/**
 * Whether next can be recorded as one more line of the log instead of a new snapshot (pure): only
 * when that line brings the saved state to exactly next (so the run was a pass that counted nothing
 * and changed no fact), onto a log that can take it and is not yet long.
 */
export function canLogPass(saved: SavedState | null, next: MetricsState): boolean {
  if (saved === null || !saved.logAppendable || saved.loggedPasses >= MAX_LOGGED_PASSES || next.lastPass === null) return false;
  return Bun.deepEquals(withLoggedPass(saved.state, loggedPassOf(next)), next);
}

/** Records state as the snapshot, durable before it returns, then removes the log it now holds; throws saying which of the two failed. */
export function saveSnapshot(stateDir: string, state: MetricsState): void {
  const statePath = metricsStatePath(stateDir);
  // Synced, its directory too, before the log goes: whatever instant the machine dies, the old
  // snapshot is there with its log or the new one is, never a snapshot without the passes the log held.
  try {
    writeFileAtomic(statePath, formatMetricsState(state), { mode: 0o600 });
  } catch (err) {
    throw new Error(`cannot save ${statePath}: ${errorText(err)}`);
  }
  try {
    removeIfPresent(passLogPath(stateDir));
  } catch (err) {
    throw new Error(`${statePath} is saved, but the pass log it now holds cannot be removed: ${errorText(err)}`);
  }
}

/**
 * Records a pass that changed nothing else (canLogPass) as a line appended to the log: no rename
 * and no fsync on a minutely pass, and a new file only for the first line after a snapshot. A power
 * cut can lose the line (the pass count then steps back by the passes of its last seconds) or tear
 * it (ignored, and the next record is a snapshot), but never touches the snapshot: no update,
 * failure, rollback or byte is uncounted. False when the line could not be appended (a log that
 * cannot be written): the caller then writes a snapshot, which removes the log or says why not.
 */
export function logPass(stateDir: string, state: MetricsState): boolean {
  try {
    appendText(passLogPath(stateDir), `${JSON.stringify(loggedPassOf(state))}\n`, 0o600);
    return true;
  } catch {
    return false;
  }
}
