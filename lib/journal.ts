// Owns the update journal (SPEC §12): the record of each binary's uncommitted attempt and of its unacknowledged report, and what a later pass does with them (pure).
import { existsSync, readdirSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { ensureDirectory, readTextIfPresent, removeIfPresent, sweepOrphanTempsUnder, writeFileAtomic } from "./fsx.ts";
import { parseSha256, type Sha256 } from "./hash.ts";
import { isObject } from "./json.ts";

/**
 * An update between "about to swap" and "committed", as the journal keeps it. Written before the
 * swap, removed once the restart and health check passed and the manifest names the target.
 */
export interface AttemptRecord {
  target: Sha256;
  /** The API's name of the target, for the report. */
  targetName: string;
  /** What the attempt replaced: the binary on disk before the swap (null: there was none), kept as the backup. */
  replaced: Sha256 | null;
  /** download: the API's target; backup: `rollback NAME` going back to a kept version. */
  source: "download" | "backup";
  startedAt: string;
  /** Passes that found this attempt uncommitted: each is a pass that died after the swap. */
  deaths: number;
  /** Set when an undo failed: what is wrong on disk, in words for status and rollback. */
  inconsistent?: string;
}

/** A version installed here that the API has not acknowledged yet (POST /bins/{name} failed or was cut). */
export interface PendingReport {
  sha256: Sha256;
  version: string;
}

/** The second uncommitted death of the same target gives up on it. */
export const MAX_UNCOMMITTED_DEATHS = 2;

/** What a pass does with an attempt it finds in the journal, from what is on disk and in the manifest. */
export type Resumption =
  /** The manifest names the target already: only the record was left (the kill came after the commit). */
  | { kind: "committed" }
  /** The swap never happened: nothing of the new version ran, so the attempt is simply dropped and the update starts over. */
  | { kind: "not-swapped" }
  /** The disk holds neither version: someone else changed the binary; the normal flow decides from what is there. */
  | { kind: "foreign" }
  /** Swapped, then the pass died: restart and check again, counting this death. */
  | { kind: "finish"; deaths: number }
  /** Swapped, and the passes that tried it died uncommitted twice (or a give-up died after putting the backup back): the backup back, and the target held. */
  | { kind: "give-up"; deaths: number };

export function judgeAttempt(record: AttemptRecord, onDisk: Sha256 | null, recorded: Sha256 | null): Resumption {
  if (onDisk === record.target) {
    if (recorded === record.target) return { kind: "committed" };
    const deaths = record.deaths + 1;
    return deaths >= MAX_UNCOMMITTED_DEATHS ? { kind: "give-up", deaths } : { kind: "finish", deaths };
  }
  if (onDisk !== record.replaced) return { kind: "foreign" };
  // Put back by a give-up that died before it held the target: the give-up is finished, not forgotten.
  return record.deaths >= MAX_UNCOMMITTED_DEATHS ? { kind: "give-up", deaths: record.deaths } : { kind: "not-swapped" };
}

/** Whether a pending report is still to be sent: only for the version the manifest names and no attempt is open on. */
export function reportDue(pending: PendingReport | null, recorded: Sha256 | null, attemptOpen: boolean): "send" | "drop" | "wait" {
  if (!pending) return "wait";
  if (attemptOpen) return "wait";
  return pending.sha256 === recorded ? "send" : "drop";
}

const journalDir = (stateDir: string) => join(stateDir, "journal");

/** Validates a record read from disk; null for anything that is not one (a garbage file proves no attempt). */
export function parseAttempt(value: unknown): AttemptRecord | null {
  if (!isObject(value)) return null;
  const target = parseSha256(value.target);
  const replaced = value.replaced === null ? null : parseSha256(value.replaced);
  if (!target || (value.replaced !== null && !replaced)) return null;
  if (value.source !== "download" && value.source !== "backup") return null;
  if (typeof value.startedAt !== "string" || !Number.isInteger(value.deaths) || (value.deaths as number) < 0) return null;
  const record: AttemptRecord = {
    target,
    targetName: typeof value.targetName === "string" ? value.targetName.slice(0, 200) : "",
    replaced,
    source: value.source,
    startedAt: value.startedAt,
    deaths: value.deaths as number,
  };
  if (typeof value.inconsistent === "string") record.inconsistent = value.inconsistent.slice(0, 500);
  return record;
}

export function parsePendingReport(value: unknown): PendingReport | null {
  if (!isObject(value)) return null;
  const sha256 = parseSha256(value.sha256);
  return sha256 ? { sha256, version: typeof value.version === "string" ? value.version.slice(0, 200) : "" } : null;
}

function readJson<T>(path: string, parse: (v: unknown) => T | null): T | null {
  // Asked for every binary on every pass, and almost always absent: no exception for the common case.
  if (!existsSync(path)) return null;
  const text = readTextIfPresent(path);
  if (text === null) return null;
  try {
    return parse(JSON.parse(text));
  } catch {
    return null;
  }
}

function writeJson(stateDir: string, path: string, value: object): void {
  ensureDirectory(journalDir(stateDir));
  writeFileAtomic(path, JSON.stringify(value) + "\n", { mode: 0o600 });
}

/** Removes a journal file, and the journal directory once it is empty (a committed host keeps no trace). */
function removeJson(stateDir: string, path: string): void {
  removeIfPresent(path);
  // The temp file of a record a killed pass was writing would keep the directory forever.
  sweepOrphanTempsUnder(journalDir(stateDir));
  try {
    rmdirSync(journalDir(stateDir));
  } catch {
    // not empty, or already gone
  }
}

/** One kind of journal file, one per binary: `<stateDir>/journal/<name>.<kind>.json`, validated where it is read. */
function journalFile<T extends object>(kind: string, parse: (v: unknown) => T | null) {
  const path = (stateDir: string, name: string) => join(journalDir(stateDir), `${name}.${kind}.json`);
  return {
    read: (stateDir: string, name: string): T | null => readJson(path(stateDir, name), parse),
    write: (stateDir: string, name: string, value: T): void => writeJson(stateDir, path(stateDir, name), value),
    remove: (stateDir: string, name: string): void => removeJson(stateDir, path(stateDir, name)),
  };
}

/** The binaries with an attempt record, from one look at the journal directory (for a run that asks about every binary). */
export function openAttempts(stateDir: string): Set<string> {
  try {
    return new Set(readdirSync(journalDir(stateDir)).filter((f) => f.endsWith(".attempt.json")).map((f) => f.slice(0, -".attempt.json".length)));
  } catch {
    return new Set(); // no journal directory: no attempt
  }
}

export const { read: readAttempt, write: writeAttempt, remove: removeAttempt } = journalFile("attempt", parseAttempt);
export const { read: readPendingReport, write: writePendingReport, remove: removePendingReport } = journalFile("report", parsePendingReport);
