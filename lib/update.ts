// Owns one binary's update as a transaction: the Attempt it carries, its steps each beside its undo, the resumption of a killed attempt, and the outcome as data.
//
// The whole flow (SPEC §6, §12). A normal update runs UPDATE_STEPS; `rollback NAME` runs ROLLBACK_STEPS;
// a pass that finds an uncommitted attempt in the journal runs RESUME_STEPS, then FINISH_STEPS or
// GIVE_UP_STEPS. When a step fails, every started step is undone, newest first (lib/phases.ts).
//
//   step      does                                           sets              undo                                  killed here, the next pass…
//   check     hashes the binary on disk, plans               onDisk, plan      -                                     starts over
//   lock      takes the version lock, plans again under it   lock              - (released at the end, always)       takes the dead holder's lock over
//   service   supervisorctl answers for the program          service           restarts the program on what is on    starts over
//                                                                              disk, if it was restarted meanwhile
//                                                                              (stops it after a first install)
//   signature (keys set) verifies the signed checksum file   signed            -                                     starts over (two small GETs)
//   download  streams and verifies (rollback: the backup)    staged            removes the staged file               resumes the partial (§13)
//   hold      (rollback) holds the version it leaves         holdsBefore       puts the holds back                   finds the hold; the operator retries
//   journal   records the attempt (SPEC §12)                 record            removes the record, unless swapped    finds no record, or one not swapped: starts over
//   install   keeps the binary on disk as the backup, then   backup, swapped   puts the backup back, atomically      before the rename: starts over; after it:
//             renames the new file over it                                                                              resumes (restarts and checks, counting the death)
//   restart   restarts, waits for RUNNING and the port       restarted         - (service's undo restarts again)     resumes, counting; the 2nd death gives up
//   report    commits: manifest, journal done; progress, POST  -               -                                     finds it committed; sends the report
import { closeSync, constants, existsSync, fchmodSync, lstatSync, openSync } from "node:fs";
import { join } from "node:path";
import type { BinManagerClient, ProgressStatus, Target } from "./api.ts";
import type { Settings } from "./config.ts";
import { discard, downloadVerified, partialPath, removePartials, resumablePartial, type Downloaded } from "./download.ts";
import { removeIfPresent } from "./fsx.ts";
import { short, type HashCache, type Sha256 } from "./hash.ts";
import { activeHoldOf, addHold, describeHold, holdAfterRollback, holdsAfterFailure } from "./hold.ts";
import { backupPath, installDownload, keepBackup, pruneBackups, restoreBackup, stageBackup } from "./install.ts";
import {
  judgeAttempt, MAX_UNCOMMITTED_DEATHS, readAttempt, readPendingReport, removeAttempt, removePendingReport, reportDue, writeAttempt, writePendingReport,
  type AttemptRecord,
} from "./journal.ts";
import { acquireVersionLock, type VersionLock } from "./lock.ts";
import { previewLock } from "./lockinspect.ts";
import { errorText, type Logger } from "./log.ts";
import { readManifest, updateManifest, type Entry, type Hold, type ManifestEdit } from "./manifest.ts";
import { runSteps, type Step, type StepsResult, type Undo } from "./phases.ts";
import { assertRunsHere } from "./elf.ts";
import { tryFlock } from "./libc.ts";
import { describe } from "./http.ts";
import { formatSignedTime, type TrustedKeys } from "./minisign.ts";
import { readSignatureRecord, signedVersionOf, verifySignedTarget, writeSignatureRecord, type SignedTarget, type SignedVersion } from "./signature.ts";
import { checkServiceAnswers, restartAndCheck, ServiceUnavailable, stopService, type ServiceCheck } from "./service.ts";

/** What the pass shares with every binary's update. */
export interface PassContext {
  settings: Settings;
  api: BinManagerClient;
  log: Logger;
  cache: HashCache;
  /** The keys every target must be signed by (SPEC §9); null: targets are not signature-checked. */
  trustedKeys: TrustedKeys | null;
  /** This host's architecture as `uname -m` prints it: what a download must be built for, and what a checksum file may name. */
  cpuArch: string;
}

/** How one binary's update ended, as data: a failure says in which step, and what its undo achieved. */
export type Outcome =
  | { kind: "up-to-date" | "adopted" | "held" | "busy" }
  | { kind: "updated"; downloadedBytes: number }
  | { kind: "failed"; step: string; error: string; undo: Undo; downloadedBytes: number };

/** The step that rolls back an update whose passes kept dying: it fails once the backup is back (its restore is a step, not an undo). */
const GIVE_UP = "give-up";

/** Whether an update's outcome put the old binary back: its undo restored it, or it was given up after the second death. */
export function rolledBack(outcome: Outcome): boolean {
  return outcome.kind === "failed" && (outcome.undo.kind === "restored" || outcome.step === GIVE_UP);
}

/**
 * Where the version to install comes from. A pass downloads the API's target once the plan allows
 * it; `rollback NAME` installs the kept backup of previousVersion whatever the API names, and holds
 * the version it leaves.
 */
export type Source = { kind: "download" } | { kind: "backup" };

export type Plan =
  | { kind: "up-to-date" }
  /** The target is on disk but the manifest has no version yet (first run on a host): record it. */
  | { kind: "adopt" }
  | { kind: "held"; hold: Hold }
  /** The target is on disk but the manifest still names another version: a pass died after the swap. */
  | { kind: "finish" }
  | { kind: "update" };

/** Decides what to do with one binary; pure, so every case is tested directly. */
export function plan(entry: Entry, onDisk: Sha256 | null, target: Sha256, now: Date): Plan {
  if (onDisk === target) {
    if (entry.version === target) return { kind: "up-to-date" };
    if (entry.version === null) return { kind: "adopt" };
    return { kind: "finish" };
  }
  const hold = activeHoldOf(entry, target, now);
  return hold ? { kind: "held", hold } : { kind: "update" };
}

/** `rollback NAME` always installs its backup; only a rollback killed after its swap is finished instead. */
export function planRestore(onDisk: Sha256 | null, target: Sha256): Plan {
  return onDisk === target ? { kind: "finish" } : { kind: "update" };
}

/** bin-proxy in its own manifest is the running executable; every other binary lives in BIN_DIR. */
export function binaryPath(settings: Settings, name: string): string {
  return name === "bin-proxy" ? process.execPath : join(settings.binDir, name);
}

/** Hashes the binary on disk; a symlink is refused rather than followed (its target could be anywhere). */
export function currentHash(cache: HashCache, binPath: string): Sha256 | null {
  try {
    if (lstatSync(binPath).isSymbolicLink()) throw new Error(`${binPath} is a symlink; bin-proxy manages regular files only`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
  return cache.hash(binPath);
}

/** --dry-run: what a real pass would do, from reads only (no lock taken, nothing written; with trusted keys, GETs of the two small signature files). */
export async function preview(ctx: PassContext, entry: Entry, target: Target): Promise<string> {
  const binPath = binaryPath(ctx.settings, entry.binaryName);
  const onDisk = currentHash(ctx.cache, binPath);
  const open = readAttempt(ctx.settings.stateDir, entry.binaryName);
  if (open) {
    const next = judgeAttempt(open, onDisk, entry.version);
    if (next.kind === "finish") return `would resume the uncommitted update to ${short(open.target)} (restart and check; death ${next.deaths} of ${MAX_UNCOMMITTED_DEATHS})`;
    if (next.kind === "give-up") return `would roll back the uncommitted update to ${short(open.target)} and hold it (its passes died ${next.deaths} times)`;
  }
  const decision = plan(entry, onDisk, target.sha256, new Date());
  switch (decision.kind) {
    case "up-to-date":
      return "up-to-date";
    case "adopt":
      return `would record ${short(target.sha256)} as installed`;
    case "held":
      return describeHold(decision.hold);
    case "finish":
    case "update": {
      let lock: ReturnType<typeof previewLock>;
      try {
        lock = previewLock(ctx.settings.lockDir, entry.binaryName, target.sha256, ctx.settings.lockTimeoutSec);
      } catch (err) {
        return `would fail: its lock cannot be used: ${errorText(err)}`;
      }
      if (lock?.kind === "busy") return "busy";
      const takeover = lock === null ? "" : lock.kind === "end-holder" ? " (after ending the run past LOCK_TIMEOUT on it)" : ` (taking over its ${lock.why === "stale" ? "stale" : "dead holder's"} lock)`;
      if (decision.kind === "finish") return `would restart ${entry.serviceName || entry.binaryName} on ${short(target.sha256)} and record it${takeover}`;
      const kept = resumablePartial(binPath, target.sha256, ctx.settings.maxDownloadBytes);
      const resume = kept ? ` (resuming a partial download: ${kept.bytes} of ${kept.total ?? "?"} bytes kept)` : "";
      const would = (onDisk ? `would update ${short(onDisk)} -> ${short(target.sha256)}` : `would install ${short(target.sha256)}`) + takeover + resume;
      return ctx.trustedKeys ? `${would}; ${await previewSignature(ctx, entry, onDisk, target)}` : would;
    }
  }
}

/** What the signature step would say of target, for --dry-run. */
async function previewSignature(ctx: PassContext, entry: Entry, onDisk: Sha256 | null, target: Target): Promise<string> {
  try {
    const { target: signed } = await verifySignature(ctx, entry.binaryName, onDisk, target.sha256);
    return `signature verifies (key ${signed.keyId}, signed ${formatSignedTime(signed.timestamp)})`;
  } catch (err) {
    return `signature refused: ${errorText(err)}`;
  }
}

/**
 * Verifies target's signed checksum file against the trusted keys (SPEC §9), no older than the
 * signature of what is on disk; for the signature step and --dry-run alike.
 */
async function verifySignature(ctx: PassContext, name: string, onDisk: Sha256 | null, target: Sha256): Promise<{ target: SignedTarget; installed: SignedVersion | null }> {
  const { settings, api, log, trustedKeys, cpuArch } = ctx;
  const stored = readSignatureRecord(settings.stateDir, name);
  if (stored.kind === "invalid") log.warn("signature_record_ignored", { bin: name, file: stored.path, reason: stored.reason });
  const installed = signedVersionOf(stored, onDisk);
  const signed = await verifySignedTarget({
    urls: api.downloadUrls(name, target), binaryName: name, cpuArch, target, keys: trustedKeys!, policy: api.policy,
    notBefore: installed?.timestamp ?? null,
    onAttemptFailed: (url, reason) => log.warn("signature_attempt_failed", { bin: name, url, reason }),
  });
  return { target: signed, installed };
}

/** One binary's update in flight. Each field says which step sets it; the journal persists the part a later pass needs. */
interface Attempt {
  readonly ctx: PassContext;
  readonly target: Target;
  readonly source: Source;
  readonly name: string;
  readonly binPath: string;
  readonly startedMs: number;
  /** check, and lock (read again under it): the manifest entry. */
  entry: Entry;
  /** check: the binary on disk before anything changed (null: none). */
  onDisk: Sha256 | null;
  /** lock: the version lock, released when the update ends whatever happened. */
  lock: VersionLock | null;
  /** service: the program restarted after the swap; null when nothing is restarted. */
  service: ServiceCheck | null;
  /** hold (rollback only): the entry's holds before the rollback held the version it leaves. */
  holdsBefore: Pick<Entry, "hold" | "otherHolds"> | null;
  /** signature: the target's verified signature, and the installed version's (null when unsigned). */
  signed: { target: SignedTarget; installed: SignedVersion | null } | null;
  /** download: bytes of body received from every URL tried (they count in the metrics whether the update succeeds or not). */
  received: number;
  /** download: the verified new file beside the binary. */
  staged: Downloaded | null;
  /** journal: the attempt as recorded; resumption starts from it. */
  record: AttemptRecord | null;
  /** install: the kept copy of the binary it replaces (null: nothing was there, or no backup kept). */
  backup: string | null;
  /** install: the new binary is in place. */
  swapped: boolean;
  /** restart: the program was restarted onto the new binary. */
  restarted: boolean;
}

/** Why a list stopped early: an outcome, or where the flow goes next. */
type Stop = "up-to-date" | "held" | "busy" | "adopt" | "finish" | "start-over" | "committed" | "give-up";

function newAttempt(ctx: PassContext, entry: Entry, target: Target, source: Source): Attempt {
  const name = entry.binaryName;
  return {
    ctx, target, source, name, binPath: binaryPath(ctx.settings, name), startedMs: Date.now(), entry,
    onDisk: null, lock: null, service: null, holdsBefore: null, signed: null, received: 0, staged: null, record: null, backup: null, swapped: false, restarted: false,
  };
}

/* ---------------------------------------------------------------- the steps */

const check: Step<Attempt, Stop> = { name: "check", run: async (a) => decide(a) };

/** Decided by the check, and again under the lock: another run may have done the work in between. */
function decide(a: Attempt): Stop | void {
  a.onDisk = currentHash(a.ctx.cache, a.binPath);
  const decision = a.source.kind === "backup" ? planRestore(a.onDisk, a.target.sha256) : plan(a.entry, a.onDisk, a.target.sha256, new Date());
  if (decision.kind === "held") {
    a.ctx.log.info("held", { bin: a.name, target: short(a.target.sha256), version: a.target.version || undefined, failures: decision.hold.failures, until: decision.hold.until ?? "api-moves-on" });
  }
  return decision.kind === "update" ? undefined : decision.kind;
}

/** Takes the target's version lock and reads the entry again under it; "busy" when another run holds it. */
async function takeLock(a: Attempt): Promise<Stop | void> {
  const { settings, log } = a.ctx;
  const result = await acquireVersionLock({ lockDir: settings.lockDir, name: a.name, sha: a.target.sha256, timeoutSec: settings.lockTimeoutSec });
  if (result.kind === "busy") {
    log.info("busy", { bin: a.name, target: short(a.target.sha256), lock_age_s: result.ageSec, holder: result.holder });
    return "busy";
  }
  a.lock = result.lock;
  if (a.lock.tookOver) log.warn("lock_taken_over", { bin: a.name, target: short(a.target.sha256), reason: a.lock.tookOver });
  for (const { version, endedPid } of result.obsolete) {
    log.info("obsolete_version_dropped", { bin: a.name, version: short(version), ended_pid: endedPid ?? undefined });
  }
  // Every other downloader of this binary is ended now: a partial of another version is a killed run's.
  for (const version of removePartials(a.binPath, a.target.sha256)) log.info("partial_removed", { bin: a.name, version: short(version) });
  // A run that finished (or failed) this very update between our check and our lock has changed
  // the disk and the manifest: decide again from them, so nothing is downloaded twice and the
  // backup is named after the binary really replaced.
  a.entry = readManifest(settings.manifest).entries.find((e) => e.binaryName === a.name) ?? a.entry;
}

const lock: Step<Attempt, Stop> = { name: "lock", run: async (a) => (await takeLock(a)) ?? decide(a) };

const service: Step<Attempt, Stop> = {
  name: "service",
  async run(a) {
    a.service = serviceOf(a);
    if (a.service) await checkServiceAnswers(a.service);
  },
  // The binary is back as it was by now (install's undo ran first): the program runs it again.
  async undo(a) {
    if (!a.restarted) return "nothing";
    await serviceBack(a);
    a.restarted = false;
    return "restored";
  },
};

const holdLeftVersion: Step<Attempt, Stop> = {
  name: "hold",
  // Held before the swap: a pass that starts meanwhile leaves the binary to this rollback instead of
  // taking its own lock, which would end this run.
  async run(a) {
    a.holdsBefore = { hold: a.entry.hold, otherHolds: a.entry.otherHolds };
    recordManifest(a, rollbackHolds(a));
  },
  async undo(a) {
    if (a.holdsBefore) recordManifest(a, { hold: a.holdsBefore.hold, otherHolds: a.holdsBefore.otherHolds ?? null });
    return "nothing";
  },
};

/** With trusted keys, the target's checksum file and signature are verified before a byte of the binary is fetched. */
const signature: Step<Attempt, Stop> = {
  name: "signature",
  async run(a) {
    if (!a.ctx.trustedKeys) return;
    a.signed = await verifySignature(a.ctx, a.name, a.onDisk, a.target.sha256);
    const { keyId, timestamp, url } = a.signed.target;
    a.ctx.log.info("signature_verified", { bin: a.name, target: short(a.target.sha256), key: keyId, signed: formatSignedTime(timestamp), url: describe(url) });
  },
};

const download: Step<Attempt, Stop> = {
  name: "download",
  async run(a) {
    const { settings, api, log } = a.ctx;
    await progress(a, "in_progress");
    if (a.source.kind === "backup") {
      a.staged = stageBackup(backupPath(settings.stateDir, a.name, a.target.sha256), partialPath(a.binPath, a.target.sha256), a.target.sha256);
      return;
    }
    const ticker = setInterval(() => void progress(a, "in_progress"), 10_000);
    try {
      a.staged = await downloadVerified({
        urls: api.downloadUrls(a.name, a.target.sha256),
        expected: a.target.sha256,
        tempPath: partialPath(a.binPath, a.target.sha256),
        maxBytes: settings.maxDownloadBytes,
        idleTimeoutMs: settings.httpTimeoutMs,
        policy: api.policy,
        onAttemptFailed: (url, reason) => log.warn("download_attempt_failed", { bin: a.name, url, reason }),
        onResume: (url, what) => log.info("download_resumed", { bin: a.name, url, what }),
        onReceived: (bytes) => void (a.received += bytes),
      });
    } finally {
      clearInterval(ticker);
    }
    // Before anything is swapped: an ELF this host cannot run is refused with both architectures named (SPEC §10).
    if (a.name === "bin-proxy") await checkRuns(a.staged, a.ctx.cpuArch);
    else assertRunsHere(a.staged.tempPath, a.ctx.cpuArch);
  },
  async undo(a) {
    if (a.staged) discard(a.staged);
    a.staged = null;
    return "nothing";
  },
};

const journal: Step<Attempt, Stop> = {
  name: "journal",
  async run(a) {
    const { stateDir } = a.ctx.settings;
    a.record = { target: a.target.sha256, targetName: a.target.version, replaced: a.onDisk, source: a.source.kind, startedAt: new Date().toISOString(), deaths: 0 };
    writeAttempt(stateDir, a.name, a.record);
    // The signed time of what is about to be installed, beside the one it replaces: right whether the swap commits or is undone.
    if (a.signed) writeSignatureRecord(stateDir, a.name, { version: a.target.sha256, timestamp: a.signed.target.timestamp, keyId: a.signed.target.keyId }, a.signed.installed);
  },
  undo: forgetAttempt,
};

/** The journal step's inverse. While the new binary is still in place (its undo failed), the record stays: status shows it. */
async function forgetAttempt(a: Attempt): Promise<"nothing"> {
  if (a.record && !a.swapped) removeAttempt(a.ctx.settings.stateDir, a.name);
  return "nothing";
}

/**
 * What the swap replaced (null: nothing, a first install): the journal's word once it has one, since
 * a resumed attempt finds the target itself on disk.
 */
const replacedOf = (a: Attempt): Sha256 | null => (a.record ? a.record.replaced : a.onDisk);

/** Once the binary is back as it was, the program runs it again; after a first install there is none, and it is stopped. */
async function serviceBack(a: Attempt): Promise<void> {
  if (replacedOf(a) === null) await stopService(a.service!);
  else await restartAndCheck(a.service!);
}

/** Puts the replaced binary back the same atomic way; the inverse of the swap, for a normal and a resumed attempt alike. */
async function putBack(a: Attempt): Promise<"restored" | "nothing"> {
  if (!a.swapped) return "nothing";
  const replaced = replacedOf(a);
  if (a.backup) restoreBackup(a.backup, a.binPath);
  else if (replaced === null) removeIfPresent(a.binPath); // a first install: there was nothing before it
  else throw new Error(`no backup of ${short(replaced)} to put back; ${a.binPath} left as it is`);
  a.swapped = false;
  a.ctx.log.info("rolled_back", { bin: a.name, to: a.backup && replaced ? short(replaced) : "nothing" });
  return "restored";
}

/** SPEC §6 step 5: the binary on disk is kept under the state dir, then the new file is renamed over it. */
const install: Step<Attempt, Stop> = {
  name: "install",
  async run(a) {
    if (a.onDisk) a.backup = keepBackup(a.binPath, a.ctx.settings.stateDir, a.name, a.onDisk);
    installDownload(a.staged!, a.binPath);
    a.swapped = true;
    a.ctx.cache.record(a.binPath, a.target.sha256);
  },
  undo: putBack,
};

const restart: Step<Attempt, Stop> = {
  name: "restart",
  async run(a) {
    if (!a.service) return;
    a.restarted = true;
    await restartAndCheck(a.service);
  },
};

const report: Step<Attempt, Stop> = {
  name: "report",
  async run(a) {
    const { settings, log } = a.ctx;
    const previous = replacedOf(a);
    writePendingReport(settings.stateDir, a.name, { sha256: a.target.sha256, version: a.target.version });
    const holds = a.source.kind === "backup" ? rollbackHolds(a) : { hold: null, otherHolds: null };
    recordManifest(a, { version: a.target.sha256, versionName: releaseName(a.target), previousVersion: previous, ...holds });
    removeAttempt(settings.stateDir, a.name);
    pruneBackups(settings.stateDir, a.name, [previous]);
    log.info(a.source.kind === "backup" ? "reverted" : "updated", {
      bin: a.name, from: previous ? short(previous) : "none", to: short(a.target.sha256), version: a.target.version || undefined, held: holds.hold ? short(holds.hold.version) : undefined,
      not_restarted: notRestartedReason(a), took_ms: Date.now() - a.startedMs,
    });
    await progress(a, "success");
    await sendReport(a.ctx, a.name);
  },
};

/* -------------------------------------------------------- resuming a killed attempt */

/** Under the record's lock, judges the attempt from what is on disk and in the manifest, and counts the death (written by countDeath). */
const judge: Step<Attempt, Stop> = {
  name: "resume",
  async run(a) {
    const { settings, log } = a.ctx;
    const record = a.record!;
    a.onDisk = currentHash(a.ctx.cache, a.binPath);
    const next = judgeAttempt(record, a.onDisk, a.entry.version);
    if (next.kind === "committed" || next.kind === "not-swapped" || next.kind === "foreign") {
      removeAttempt(settings.stateDir, a.name);
      if (next.kind !== "committed") log.info("attempt_dropped", { bin: a.name, target: short(record.target), reason: next.kind === "not-swapped" ? "killed before its swap" : "the binary on disk is neither version" });
      return next.kind === "committed" ? "committed" : "start-over";
    }
    a.record = { ...record, deaths: next.deaths };
    a.swapped = a.onDisk === record.target;
    const kept = record.replaced && backupPath(settings.stateDir, a.name, record.replaced);
    a.backup = kept && existsSync(kept) ? kept : null;
    log.warn("attempt_resumed", { bin: a.name, target: short(record.target), started: record.startedAt, deaths: next.deaths, next: next.kind });
    return next.kind === "give-up" ? "give-up" : undefined;
  },
};

/**
 * The death is written once the service manager answered, before the restart a pass can die in: a
 * pass that failed on the host (supervisord down after a reboot) did not die on the target, and
 * must not bring its give-up closer.
 */
const countDeath: Step<Attempt, Stop> = { name: "resume", run: async (a) => writeAttempt(a.ctx.settings.stateDir, a.name, a.record!) };

/** The killed pass journaled and swapped already: these steps only stand for that, so their inverses run on failure. */
const journaledBefore: Step<Attempt, Stop> = { name: "journal", run: async () => {}, undo: forgetAttempt };
const swappedBefore: Step<Attempt, Stop> = { name: "install", run: async () => {}, undo: putBack };

const restore: Step<Attempt, Stop> = {
  name: "restore",
  async run(a) {
    await putBack(a);
    if (a.service) await serviceBack(a);
  },
};

const giveUp: Step<Attempt, Stop> = {
  name: GIVE_UP,
  async run(a) {
    removeAttempt(a.ctx.settings.stateDir, a.name);
    throw new Error(`the passes that installed ${short(a.target.sha256)} died before committing it ${a.record!.deaths} times (killed, rebooted, or ended by the new version); rolled back and held`);
  },
};

/** A normal update of the API's target, and `rollback NAME`'s restore of a kept backup. */
const UPDATE_STEPS = [check, lock, service, signature, download, journal, install, restart, report];
const ROLLBACK_STEPS = [check, lock, service, download, holdLeftVersion, journal, install, restart, report];
/** A journal record found: the lock of its target first, then the judgement. */
const RESUME_STEPS = [{ name: "lock", run: takeLock }, judge];
const FINISH_STEPS = [service, countDeath, journaledBefore, swappedBefore, restart, report];
const GIVE_UP_STEPS = [service, countDeath, restore, giveUp];

/* ----------------------------------------------------------------- the flow */

/**
 * One binary's update. A journal record of an uncommitted attempt is resumed first (RESUME_STEPS);
 * otherwise the API's target (or, for rollback, the kept backup) goes through its list. Whatever
 * happens, the lock is released and a report the API has not acknowledged is sent again.
 */
export async function updateBinary(ctx: PassContext, entry: Entry, target: Target, source: Source = { kind: "download" }): Promise<Outcome> {
  const open = readAttempt(ctx.settings.stateDir, entry.binaryName);
  let outcome: Outcome | "start-over" = open ? await resume(ctx, entry, open) : "start-over";
  if (outcome === "start-over") outcome = await attempt(newAttempt(ctx, entry, target, source));
  if (outcome.kind !== "updated" && outcome.kind !== "adopted" && outcome.kind !== "busy") await resendReport(ctx, entry.binaryName);
  return outcome;
}

async function attempt(a: Attempt): Promise<Outcome> {
  const result = await withLockReleased(a, () => runSteps(a, a.source.kind === "backup" ? ROLLBACK_STEPS : UPDATE_STEPS, hooks(a)));
  if (!result.ok) return failed(a, result);
  switch (result.stoppedWith) {
    case undefined:
      return { kind: "updated", downloadedBytes: a.received };
    case "adopt":
      return adopt(a);
    case "finish": {
      // The target is on disk and no journal names it: a pass of a bin-proxy before the journal died after its swap.
      const orphan: AttemptRecord = { target: a.target.sha256, targetName: a.target.version, replaced: a.entry.version, source: a.source.kind, startedAt: new Date().toISOString(), deaths: 0 };
      const resumed = await resume(a.ctx, a.entry, orphan);
      // Starting over would mean the binary changed back meanwhile (another run): the next pass decides afresh.
      return resumed === "start-over" ? { kind: "busy" } : resumed;
    }
    case "up-to-date":
    case "held":
    case "busy":
      return { kind: result.stoppedWith };
    default:
      throw new Error(`unexpected stop ${result.stoppedWith}`);
  }
}

/** RESUME_STEPS, then the list its judgement names; "start-over" when the attempt never swapped and the normal flow should run. */
async function resume(ctx: PassContext, entry: Entry, record: AttemptRecord): Promise<Outcome | "start-over"> {
  const a = newAttempt(ctx, entry, { sha256: record.target, version: record.targetName }, { kind: record.source });
  a.record = record;
  const result = await withLockReleased(a, async () => {
    const judged = await runSteps(a, RESUME_STEPS, hooks(a));
    if (!judged.ok || judged.stoppedWith === "busy" || judged.stoppedWith === "committed" || judged.stoppedWith === "start-over") return judged;
    return runSteps(a, judged.stoppedWith === "give-up" ? GIVE_UP_STEPS : FINISH_STEPS, hooks(a));
  });
  if (!result.ok) return failed(a, result);
  if (result.stoppedWith === "start-over") return "start-over";
  if (result.stoppedWith === "busy") return { kind: "busy" };
  return result.stoppedWith === "committed" ? { kind: "up-to-date" } : { kind: "updated", downloadedBytes: 0 };
}

async function withLockReleased<T>(a: Attempt, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } finally {
    if (a.staged) discard(a.staged);
    a.lock?.release();
  }
}

/**
 * After a failed list: the target is held with backoff when the release is to blame (not when the
 * host's service manager is), a host left inconsistent is written into the journal for status,
 * and the API is told the update failed.
 */
async function failed(a: Attempt, result: Extract<StepsResult<Stop>, { ok: false }>): Promise<Outcome> {
  const { settings, log } = a.ctx;
  const hostProblem = result.error instanceof ServiceUnavailable;
  if (a.lock && a.source.kind === "download" && !hostProblem) {
    const holds = holdsAfterFailure(a.entry, a.target.sha256, new Date(), settings.retryBackoffSec);
    try {
      recordManifest(a, holds);
    } catch (err) {
      log.error("hold_not_recorded", { bin: a.name, error: errorText(err) });
    }
    log.info("holding", { bin: a.name, target: short(a.target.sha256), version: a.target.version || undefined, failures: holds.hold.failures, until: holds.hold.until ?? "" });
  }
  if (hostProblem) log.info("not_held", { bin: a.name, target: short(a.target.sha256), reason: "a problem of this host, not of the release: the next pass tries again" });
  // Only while the new binary is still in place is the record kept (forgetAttempt): it says why. With the
  // old binary back and only its restart failed, there is no attempt left to resume; the log says it.
  if (result.undo.kind === "inconsistent" && a.record && a.swapped) {
    writeAttempt(settings.stateDir, a.name, { ...a.record, inconsistent: result.undo.why });
  }
  if (a.lock) await progress(a, "failed");
  return { kind: "failed", step: result.step, error: errorText(result.error), undo: result.undo, downloadedBytes: a.received };
}

/** The target is on disk and the manifest had no version (a first run on a host): record it, and tell the API. */
async function adopt(a: Attempt): Promise<Outcome> {
  const { settings, log } = a.ctx;
  writePendingReport(settings.stateDir, a.name, { sha256: a.target.sha256, version: a.target.version });
  recordManifest(a, { version: a.target.sha256, versionName: releaseName(a.target) });
  log.info("adopted", { bin: a.name, version: short(a.target.sha256) });
  await sendReport(a.ctx, a.name);
  return { kind: "adopted" };
}

/* ------------------------------------------------------------------ helpers */

function hooks(a: Attempt) {
  return {
    onFailure: (step: string, error: unknown) => a.ctx.log.error("update_failed", { bin: a.name, phase: step, target: short(a.target.sha256), version: a.target.version || undefined, error: errorText(error) }),
    onUndoError: (step: string, error: unknown) => a.ctx.log.error("undo_failed", { bin: a.name, phase: step, error: errorText(error) }),
  };
}

/** The API's release name of target, for the manifest and status; null when it has none but the short hash. */
const releaseName = (target: Target) => (target.version && target.version !== short(target.sha256) ? target.version : null);

function recordManifest(a: Attempt, fields: Extract<ManifestEdit, { binaryName: string }>["fields"]): void {
  updateManifest(a.ctx.settings.manifest, a.ctx.settings.lockDir, [{ binaryName: a.name, fields }]);
}

/** rollback NAME holds the version it leaves (the manifest's, when that was no longer on disk) until the API names another, keeping every other hold. */
function rollbackHolds(a: Attempt): { hold: Hold; otherHolds: Hold[] | null } {
  const left = replacedOf(a) ?? a.entry.version!;
  return addHold(a.entry, holdAfterRollback(left), new Date());
}

/** The program the update restarts, or null; throws ServiceUnavailable when the entry names one and no supervisorctl was found. */
function serviceOf(a: Attempt): ServiceCheck | null {
  const { settings } = a.ctx;
  const program = a.entry.serviceName;
  if (!program || a.name === "bin-proxy" || settings.restartsDisabled) return null;
  if (!settings.supervisorctl) {
    throw new ServiceUnavailable(
      `${a.name} runs as supervisor program ${program}, but no supervisorctl was found (PATH, /usr/bin, /usr/local/bin): install supervisor, set SUPERVISORCTL to its path, or SUPERVISORCTL="" to update without restarting`,
    );
  }
  return { supervisorctl: { path: settings.supervisorctl, config: settings.supervisorctlConfig }, program, port: a.entry.port, timeoutMs: settings.healthTimeoutMs };
}

function notRestartedReason(a: Attempt): string | undefined {
  return a.entry.serviceName && a.name !== "bin-proxy" && a.ctx.settings.restartsDisabled ? `SUPERVISORCTL is empty: ${a.entry.serviceName} still runs the old binary until it is restarted` : undefined;
}

async function progress(a: Attempt, status: ProgressStatus): Promise<void> {
  const { settings, api, log } = a.ctx;
  const processingTime = Math.max(0, Math.floor(Date.now() / 1000) - (a.lock?.takenAt ?? Math.floor(a.startedMs / 1000)));
  try {
    await api.progress({ nodeName: settings.nodeName, binName: a.name, targetHash: a.target.sha256, processingTime, status });
  } catch (err) {
    log.warn("progress_report_failed", { bin: a.name, status, error: errorText(err) });
  }
}

/** POST /bins/{name} for the pending report; acknowledged, it is removed. A failure is retried at later passes. */
async function sendReport(ctx: PassContext, name: string): Promise<void> {
  const pending = readPendingReport(ctx.settings.stateDir, name);
  if (!pending) return;
  try {
    await ctx.api.installed({ nodeName: ctx.settings.nodeName, binName: name, sha256: pending.sha256, version: pending.version });
    removePendingReport(ctx.settings.stateDir, name);
  } catch (err) {
    // The new binary is healthy; an API that missed the news is no reason to roll it back.
    ctx.log.error("report_failed", { bin: name, version: short(pending.sha256), error: `${errorText(err)}; retried at the next pass` });
  }
}

/** At most once a pass: a report a killed or failed pass left unacknowledged, when its version is still the recorded one. */
async function resendReport(ctx: PassContext, name: string): Promise<void> {
  const { stateDir, manifest } = ctx.settings;
  const pending = readPendingReport(stateDir, name);
  if (!pending) return;
  const recorded = readManifest(manifest).entries.find((e) => e.binaryName === name)?.version ?? null;
  const due = reportDue(pending, recorded, readAttempt(stateDir, name) !== null);
  if (due === "drop") removePendingReport(stateDir, name);
  if (due !== "send") return;
  ctx.log.info("report_retried", { bin: name, version: short(pending.sha256) });
  await sendReport(ctx, name);
}

/** A new bin-proxy must be built for this host and answer --version before it replaces the running one. */
async function checkRuns(download: Downloaded, cpuArch: string): Promise<void> {
  try {
    assertRunsHere(download.tempPath, cpuArch);
  } catch (err) {
    throw new Error(`the new bin-proxy does not run: ${errorText(err)}`);
  }
  // Executing a file still open for writing fails with ETXTBSY: close it, run it, reopen it.
  fchmodSync(download.fd, 0o700);
  closeSync(download.fd);
  download.fd = -1; // should the reopen fail, discard must not close that number again
  download.fd = openSync(download.tempPath, constants.O_RDONLY | constants.O_NOFOLLOW);
  // Its flock went with the descriptor that was closed: taken again, the file stays this run's.
  if (!tryFlock(download.fd)) throw new Error(`the new bin-proxy does not run: ${download.tempPath} was taken by another run`);
  const { BIN_MANAGER_TOKEN: _token, ...env } = process.env;
  let child;
  try {
    child = Bun.spawn([download.tempPath, "--version"], { cwd: "/", env, stdin: "ignore", stdout: "pipe", stderr: "pipe", timeout: 30_000, killSignal: "SIGKILL" });
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === "ENOEXEC" ? "it is not an executable for this machine (a build for another architecture?)" : errorText(err);
    throw new Error(`the new bin-proxy does not run: ${why}`);
  }
  // Both pipes are read while it runs: a child blocked on a full stderr would only end at the timeout.
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  if (code !== 0 || !out.startsWith("bin-proxy ")) {
    throw new Error(`the new bin-proxy does not run: --version exited ${code}: ${(out.trim() || err.trim()).slice(0, 200)}`);
  }
}
