// Owns what a run tells the metrics (SPEC §11): each binary's facts gathered from the manifest, the journal and the run's outcome, recorded after a pass, rollback, retry or configuration error.
import { isAbsolute } from "node:path";
import type { Target } from "./api.ts";
import type { Settings } from "./config.ts";
import { EXIT_CONFIG } from "./exit.ts";
import { activeHold, activeHoldOf } from "./hold.ts";
import { openAttempts } from "./journal.ts";
import type { Logger } from "./log.ts";
import { readManifest, type Entry } from "./manifest.ts";
import { recordConfigError, recordRun } from "./metrics.ts";
import type { BinaryEvent, BinaryMetrics, RunKind } from "./metricsstate.ts";
import { rolledBack, type Outcome } from "./update.ts";

/** One binary's share of a run: what the API named (null: not asked) and how its update ended (null: not touched). */
export interface BinaryResult {
  entry: Entry;
  target: Target | null;
  outcome: Outcome | null;
  /** What the run did to the binary, when it is not what the outcome of an update says (`rollback NAME`). */
  event?: BinaryEvent;
}

export interface RunReport {
  kind: RunKind;
  startedAt: Date;
  exitCode: number;
  /** Whether targets must be signed; null: not known (the run stopped before the keys were read). */
  signed: boolean | null;
  /** Every managed binary; null: the manifest could not be read. */
  results: BinaryResult[] | null;
}

/** Outcomes that leave an entry as the pass read it. */
const UNCHANGED = new Set<Outcome["kind"]>(["up-to-date", "held", "busy"]);

/** Writes the metrics file when one is configured; a failure to write it is logged, never fatal. */
export function recordRunMetrics(settings: Settings, log: Logger, run: RunReport): void {
  if (!settings.metricsFile) return;
  const now = new Date();
  // What is recorded now, after the run, when an update may have changed it; a no-op pass's entries are current.
  const recorded = new Map<string, Entry>();
  if (run.results?.some((r) => r.outcome && !UNCHANGED.has(r.outcome.kind))) {
    try {
      for (const entry of readManifest(settings.manifest).entries) recorded.set(entry.binaryName, entry);
    } catch {
      // unreadable now: the entries as the run knew them
    }
  }
  const open = openAttempts(settings.stateDir);
  const binaries = run.results?.map((result) => binaryMetrics(open, recorded.get(result.entry.binaryName) ?? result.entry, result, now));
  const problem = recordRun(settings.metricsFile, settings.stateDir, {
    kind: run.kind, startedAt: run.startedAt, durationMs: now.getTime() - run.startedAt.getTime(), exitCode: run.exitCode,
    signaturesRequired: run.signed, binaries: binaries ?? null,
  });
  if (problem) log.warn("metrics_not_written", { file: settings.metricsFile, error: problem });
}

function binaryMetrics(open: Set<string>, entry: Entry, { target, outcome, event }: BinaryResult, now: Date): BinaryMetrics {
  // Without a target (an operator command), the entry's own hold says whether it holds something.
  const hold = target ? activeHoldOf(entry, target.sha256, now) : entry.hold && activeHold(entry.hold, entry.hold.version, now);
  const metrics: BinaryMetrics = {
    name: entry.binaryName,
    installed: entry.version,
    held: hold !== null,
    holdFailures: hold?.failures ?? 0,
    uncommitted: open.has(entry.binaryName),
  };
  if (target) Object.assign(metrics, { target: target.sha256, targetVersion: target.version });
  if (event) metrics.event = event;
  else if (outcome) {
    metrics.event = {
      updated: outcome.kind === "updated" || outcome.kind === "adopted",
      // An API that could not name a target fails the pass, not an update: none was tried.
      failed: outcome.kind === "failed" && target !== null,
      rolledBack: rolledBack(outcome),
      downloadedBytes: outcome.kind === "updated" || outcome.kind === "failed" ? outcome.downloadedBytes : 0,
    };
  }
  return metrics;
}

/** After `rollback NAME` or `retry NAME`: every binary's facts as the manifest has them now, and what the command did to NAME. */
export function recordOperatorMetrics(settings: Settings, log: Logger, command: { kind: "rollback" | "retry"; name: string; startedAt: Date; exitCode: number; event: BinaryEvent }): void {
  let entries: Entry[] | null = null;
  try {
    entries = readManifest(settings.manifest).entries;
  } catch {
    // an invalid manifest: what is known of each binary is kept from earlier runs
  }
  const results = entries?.map((entry) => ({ entry, target: null, outcome: null, ...(entry.binaryName === command.name ? { event: command.event } : {}) }));
  // Stopped by the manifest or the keys file, as a pass would be: the metrics say broken config (bin_proxy_config_ok 0), not a retry.
  const kind = command.exitCode === EXIT_CONFIG ? "config-error" : command.kind;
  recordRunMetrics(settings, log, { kind, startedAt: command.startedAt, exitCode: command.exitCode, signed: null, results: results ?? null });
}

/** A configuration error before any setting could be trusted: the metrics file still says so, when its path is known. */
export function recordConfigErrorMetrics(metricsFile: string | undefined, stateDir: string | undefined, startedAt: Date): string | null {
  if (!metricsFile || !isAbsolute(metricsFile)) return null;
  return recordConfigError(metricsFile, stateDir && isAbsolute(stateDir) ? stateDir : null, startedAt);
}
