// Owns `bin-proxy status`: the local state of every managed binary as a table or JSON, offline and read-only.
import { readdirSync } from "node:fs";
import { basename, dirname } from "node:path";
import { ConfigError, type Settings } from "./config.ts";
import { partialVersion, resumablePartial } from "./download.ts";
import { EXIT_CONFIG, EXIT_FAILED, EXIT_OK } from "./exit.ts";
import { HashCache, hashCachePath, short, type Sha256 } from "./hash.ts";
import { activeHold, describeHold, holdsOf } from "./hold.ts";
import { readAttempt } from "./journal.ts";
import { listVersionLocks, type LockInfo } from "./lockinspect.ts";
import { errorText } from "./log.ts";
import { ManifestError, readManifest, type Entry, type Hold, type RejectedEntry } from "./manifest.ts";
import { readLastPass } from "./metricsstate.ts";
import { formatSignedTime } from "./minisign.ts";
import { parseState, supervisorStatus } from "./service.ts";
import { loadTrustedKeys, readSignatureRecord, signedVersionOf } from "./signature.ts";
import { binaryPath, currentHash } from "./update.ts";

/** A hold as status shows it; active is false once its backoff has passed (the next pass tries the target again). */
export type HoldState = Hold & { active: boolean };

export interface BinaryStatus {
  name: string;
  /** The supervisor program; "" when the entry names none. */
  service: string;
  path: string;
  /** SHA-256 of the file on disk; null when there is no file (or it could not be hashed: see diskError). */
  onDisk: Sha256 | null;
  diskError: string | null;
  version: Sha256 | null;
  /** The API's release name of version, when bin-proxy installed it; null: not known. */
  versionName: string | null;
  previousVersion: Sha256 | null;
  /** supervisorctl's state word; null when not asked (no service, bin-proxy itself, or SUPERVISORCTL empty); "UNKNOWN" when it did not say. */
  supervisor: string | null;
  locks: (LockInfo & { stale: boolean })[];
  /** The manifest's hold. */
  hold: HoldState | null;
  /** The holds kept beside hold (see addHold), newest first. */
  otherHolds: HoldState[];
  /** An update recorded in the journal and not committed (its pass died, SPEC §12); null: none. */
  attempt: { target: Sha256; startedAt: string; deaths: number; inconsistent?: string } | null;
  /** When the installed version was signed (SPEC §9); null: not signed, or not known. */
  signedAt: string | null;
  /** A partial download a pass would resume (SPEC §13); null: none. */
  partial: { version: Sha256; bytes: number; total: number | null } | null;
  /** Why the binary needs an operator's look (the exit status is 1 when any does), or null. */
  attention: string | null;
}

export interface StatusReport {
  binaries: BinaryStatus[];
  rejected: RejectedEntry[];
  /** The last pass on this host (from the metrics state); null: none recorded. */
  lastPass: { at: string; exitCode: number; durationMs: number } | null;
  /** Every target must be signed by a trusted key; false: targets are not signature-checked. */
  signaturesRequired: boolean;
  /** SUPERVISORCTL="": updates swap binaries without restarting their services, which may still run an older one. */
  restartsDisabled: boolean;
}

export interface StatusOptions {
  json: boolean;
  print: (text: string) => void;
  warn: (text: string) => void;
}

/**
 * Exit status: 0 every binary is on disk as the manifest records it and its service RUNNING; 1 the
 * report was printed, but at least one binary needs attention (missing, unreadable, not the
 * manifest's version, service not RUNNING) or a manifest entry is rejected; 2 the manifest cannot be
 * read. Locks and holds are normal states and do not count. Nothing is written and the API is not
 * called: the hash cache is read, never saved.
 */
export async function runStatus(settings: Settings, options: StatusOptions): Promise<number> {
  let report: StatusReport;
  const lastPassFacts: LastPassFacts = { metricsSet: settings.metricsFile !== null, unreadable: null };
  try {
    const manifest = readManifest(settings.manifest);
    const signaturesRequired = loadTrustedKeys(settings.trustedKeys) !== null;
    let last = null;
    try {
      last = readLastPass(settings.stateDir);
    } catch (err) {
      lastPassFacts.unreadable = `cannot read the metrics state in ${settings.stateDir}: ${errorText(err)}`;
    }
    const lastPass = last && { at: last.at, exitCode: last.exitCode, durationMs: last.durationMs };
    report = { binaries: await collect(settings, manifest.entries, new Date()), rejected: manifest.rejected, lastPass, signaturesRequired, restartsDisabled: settings.restartsDisabled };
  } catch (err) {
    if (!(err instanceof ManifestError) && !(err instanceof ConfigError)) throw err;
    options.warn(err instanceof ManifestError ? `manifest ${settings.manifest} is invalid: ${err.message}` : `configuration error: ${err.message}`);
    return EXIT_CONFIG;
  }
  options.print(options.json ? JSON.stringify(report, null, 2) : formatStatus(report, lastPassFacts));
  return report.rejected.length > 0 || report.binaries.some((b) => b.attention) ? EXIT_FAILED : EXIT_OK;
}

async function collect(settings: Settings, entries: Entry[], now: Date): Promise<BinaryStatus[]> {
  const cache = HashCache.load(hashCachePath(settings.stateDir));
  const supervised = (e: Entry) => settings.supervisorctl !== null && e.serviceName !== "" && e.binaryName !== "bin-proxy";
  const programs = [...new Set(entries.filter(supervised).map((e) => e.serviceName))];
  // One supervisorctl call for every program: status stays fast however many binaries there are.
  let states = "";
  if (programs.length > 0) {
    try {
      states = await supervisorStatus({ path: settings.supervisorctl!, config: settings.supervisorctlConfig }, programs, settings.healthTimeoutMs);
    } catch {
      // supervisorctl could not run: every state is UNKNOWN
    }
  }
  // Each directory is listed once (BIN_DIR for every binary but bin-proxy itself), whatever the number of binaries.
  const listings = new Map<string, string[]>();
  const filesIn = (dir: string): string[] => {
    let files = listings.get(dir);
    if (files === undefined) {
      try {
        files = readdirSync(dir);
      } catch {
        files = [];
      }
      listings.set(dir, files);
    }
    return files;
  };
  return entries.map((entry) => {
    const path = binaryPath(settings, entry.binaryName);
    let onDisk: Sha256 | null = null;
    let diskError: string | null = null;
    try {
      onDisk = currentHash(cache, path);
    } catch (err) {
      diskError = errorText(err);
    }
    const row: BinaryStatus = {
      name: entry.binaryName,
      service: entry.serviceName,
      path,
      onDisk,
      diskError,
      version: entry.version,
      versionName: entry.versionName ?? null,
      previousVersion: entry.previousVersion,
      supervisor: supervised(entry) ? (parseState(states, entry.serviceName) ?? "UNKNOWN") : null,
      locks: listVersionLocks(settings.lockDir, entry.binaryName).map((l) => ({ ...l, stale: l.ageSec >= settings.lockTimeoutSec })),
      hold: entry.hold && holdState(entry.hold, now),
      otherHolds: (entry.otherHolds ?? []).map((h) => holdState(h, now)),
      attempt: attemptOf(settings.stateDir, entry.binaryName),
      signedAt: signedAtOf(settings.stateDir, entry.binaryName, onDisk),
      partial: partialOf(path, filesIn(dirname(path)), settings.maxDownloadBytes),
      attention: null,
    };
    const unknownBecause = row.supervisor === "UNKNOWN" ? oneLine(states) || "supervisorctl printed nothing" : null;
    return { ...row, attention: attention(row, unknownBecause) };
  });
}

function attemptOf(stateDir: string, name: string): BinaryStatus["attempt"] {
  const record = readAttempt(stateDir, name);
  if (!record) return null;
  return { target: record.target, startedAt: record.startedAt, deaths: record.deaths, ...(record.inconsistent ? { inconsistent: record.inconsistent } : {}) };
}

function signedAtOf(stateDir: string, name: string, onDisk: Sha256 | null): string | null {
  const signed = signedVersionOf(readSignatureRecord(stateDir, name), onDisk);
  return signed ? formatSignedTime(signed.timestamp) : null;
}

/** The resumable partial download of the binary at path, whichever version it is of, among the files of its directory. */
function partialOf(path: string, files: string[], maxBytes: number): BinaryStatus["partial"] {
  for (const file of files) {
    const version = partialVersion(file, basename(path));
    const kept = version && resumablePartial(path, version, maxBytes);
    if (version && kept) return { version, bytes: kept.bytes, total: kept.total };
  }
  return null;
}

const oneLine = (text: string) => text.replace(/\s+/g, " ").trim().slice(0, 300);

/** Why a binary needs an operator's look, or null; a lock or a hold is a normal state, not a problem. */
export function attention(b: BinaryStatus, unknownBecause: string | null = null): string | null {
  if (b.diskError) return `cannot hash ${b.path}: ${b.diskError}`;
  if (!b.onDisk) return `${b.path} is missing`;
  // An open attempt explains a binary that differs from the manifest: say that, not the symptom.
  if (b.attempt?.inconsistent) return `inconsistent: ${b.attempt.inconsistent}`;
  if (b.attempt) {
    const resumed = b.attempt.deaths === 0 ? "" : `, resumed ${b.attempt.deaths} time${b.attempt.deaths === 1 ? "" : "s"} after its pass died`;
    return `an update to ${short(b.attempt.target)} started ${b.attempt.startedAt} is not committed${resumed}; the next pass finishes it, or rolls it back at the second death`;
  }
  if (b.version && b.onDisk !== b.version) return `on disk is ${short(b.onDisk)}, the manifest says ${short(b.version)}`;
  if (b.supervisor && b.supervisor !== "RUNNING") return `service ${b.service} is ${b.supervisor}${unknownBecause ? `: supervisorctl said: ${unknownBecause}` : ""}`;
  return null;
}

const holdState = (hold: Hold, now: Date): HoldState => ({ ...hold, active: activeHold(hold, hold.version, now) !== null });

/** One hold in the HOLD column: its version, until when, and its failures. */
function holdCell(h: HoldState): string {
  const when = h.active ? describeHold(h) : `expired ${h.until}`;
  return `${short(h.version)} ${when}${h.failures > 0 ? ` (${h.failures} failure${h.failures === 1 ? "" : "s"})` : ""}`;
}

const HEADER = ["NAME", "SERVICE", "ON-DISK", "VERSION", "PREVIOUS", "SUPERVISOR", "LOCK", "HOLD"];

/** The cells of one row, in HEADER's order; "-" for nothing. */
export function cells(b: BinaryStatus): string[] {
  const sha = (s: Sha256 | null) => (s ? short(s) : "-");
  const lock = b.locks.map((l) => `${short(l.version)} by ${l.holder}, ${l.ageSec}s${l.stale ? " (stale)" : ""}`).join("; ");
  const hold = holdsOf(b).map(holdCell).join("; ");
  return [b.name, b.service || "-", b.diskError ? "error" : b.onDisk ? short(b.onDisk) : "missing", sha(b.version) + (b.versionName ? ` (${b.versionName})` : ""), sha(b.previousVersion), b.supervisor ?? "-", lock || "-", hold || "-"];
}

/** What says why status knows no last pass: whether BIN_PROXY_METRICS_FILE (which records passes) is set, and why the state could not be read. */
export interface LastPassFacts {
  metricsSet: boolean;
  unreadable: string | null;
}

/** The table, columns aligned, then one line per binary that needs attention and per rejected entry, then the last pass. */
export function formatStatus(report: StatusReport, { metricsSet, unreadable }: LastPassFacts): string {
  const rows = [HEADER, ...report.binaries.map(cells)];
  const widths = HEADER.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  "));
  const unrestarted = report.restartsDisabled ? report.binaries.filter((b) => b.service && b.name !== "bin-proxy") : [];
  const notes = [
    ...unrestarted.map((b) => `${b.name}: not restarted by bin-proxy (SUPERVISORCTL is empty): ${b.service} runs whatever binary it last started`),
    ...report.binaries.filter((b) => b.partial).map((b) => `${b.name}: a download of ${short(b.partial!.version)} can resume: ${b.partial!.bytes} of ${b.partial!.total ?? "?"} bytes kept`),
    ...report.binaries.filter((b) => b.attention).map((b) => `${b.name}: ${b.attention}`),
    ...report.rejected.map((r) => `${r.label}: entry rejected: ${r.reason}`),
  ];
  const unrecorded = unreadable ? `last pass unknown: ${unreadable}` : metricsSet ? "last pass not recorded yet" : "last pass not recorded (BIN_PROXY_METRICS_FILE is not set)";
  const last = report.lastPass ? `last pass ${report.lastPass.at}, exit ${report.lastPass.exitCode}, ${report.lastPass.durationMs} ms` : unrecorded;
  const signatures = report.signaturesRequired ? "signatures required" : "signatures not checked (no trusted keys file)";
  return [...lines, ...(notes.length > 0 ? ["", ...notes] : []), "", `${last}; ${signatures}`].join("\n");
}
