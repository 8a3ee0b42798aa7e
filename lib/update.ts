// Owns one binary's update: the decision (pure), and the phases check, lock, download, install, restart, report.
import { closeSync, constants, existsSync, fchmodSync, lstatSync, openSync } from "node:fs";
import { join } from "node:path";
import type { BinManagerClient, ProgressStatus, Target } from "./api.ts";
import type { Settings } from "./config.ts";
import { discard, downloadVerified, partialPath, removePartials, type Downloaded } from "./download.ts";
import { removeIfPresent } from "./fsx.ts";
import { short, type HashCache, type Sha256 } from "./hash.ts";
import { activeHold, describeHold, holdAfterFailure, holdAfterRollback } from "./hold.ts";
import { backupPath, installDownload, keepBackup, pruneBackups, restoreBackup, stageBackup } from "./install.ts";
import { acquireVersionLock, previewLock, type VersionLock } from "./lock.ts";
import { errorText, type Logger } from "./log.ts";
import { readManifest, updateManifest, type Entry, type Hold, type ManifestEdit } from "./manifest.ts";
import { runPhases, type Phase } from "./phases.ts";
import { restartAndCheck } from "./service.ts";

/** What the pass shares with every binary's update. */
export interface PassContext {
  settings: Settings;
  api: BinManagerClient;
  log: Logger;
  cache: HashCache;
}

export type Outcome = "up-to-date" | "adopted" | "held" | "busy" | "updated" | "failed";

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
  const hold = activeHold(entry.hold, target, now);
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

/** --dry-run: what a real pass would do, from reads only (no lock taken, nothing written). */
export function preview(ctx: PassContext, entry: Entry, target: Target): string {
  const binPath = binaryPath(ctx.settings, entry.binaryName);
  const onDisk = currentHash(ctx.cache, binPath);
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
      const lock = previewLock(ctx.settings.lockDir, entry.binaryName, target.sha256, ctx.settings.lockTimeoutSec);
      if (lock?.kind === "busy") return "busy";
      const takeover = lock === null ? "" : lock.kind === "end-holder" ? " (after ending the run past LOCK_TIMEOUT on it)" : ` (taking over its ${lock.why === "stale" ? "stale" : "dead holder's"} lock)`;
      if (decision.kind === "finish") return `would restart ${entry.serviceName || entry.binaryName} on ${short(target.sha256)} and record it${takeover}`;
      return (onDisk ? `would update ${short(onDisk)} -> ${short(target.sha256)}` : `would install ${short(target.sha256)}`) + takeover;
    }
  }
}

/** One binary's update as a sequence of phases; rollback is their undo. */
export async function updateBinary(ctx: PassContext, entry: Entry, target: Target, source: Source = { kind: "download" }): Promise<Outcome> {
  const { settings, api, log, cache } = ctx;
  const name = entry.binaryName;
  const binPath = binaryPath(settings, name);
  const isSelf = name === "bin-proxy";
  const started = Date.now();
  let onDisk: Sha256 | null = null;
  let decision: Plan = { kind: "update" };
  let lock: VersionLock | undefined;
  let download: Downloaded | undefined;
  let backup: string | null = null;
  let installed = false;
  let restarted = false;

  const processingTime = () => Math.max(0, Math.floor(Date.now() / 1000) - (lock?.takenAt ?? Math.floor(started / 1000)));
  const progress = async (status: ProgressStatus) => {
    try {
      await api.progress({ nodeName: settings.nodeName, binName: name, targetHash: target.sha256, processingTime: processingTime(), status });
    } catch (err) {
      log.warn("progress_report_failed", { bin: name, status, error: errorText(err) });
    }
  };
  // The version this update replaces: what was on disk, or, when finishing a killed pass's swap, what the manifest names.
  const previousVersion = () => (decision.kind === "finish" ? entry.version : onDisk);
  // rollback NAME holds the version it leaves (the manifest's, when that was no longer on disk) until the API names another.
  const rollbackHold = () => {
    const left = source.kind === "backup" ? (previousVersion() ?? entry.version) : null;
    return left ? holdAfterRollback(left) : null;
  };
  let rollbackHeld = false;
  const recordManifest = (fields: Extract<ManifestEdit, { binaryName: string }>["fields"]) =>
    updateManifest(settings.manifest, settings.lockDir, [{ binaryName: name, fields }]);
  const service = entry.serviceName && settings.supervisorctl && !isSelf
    ? { supervisorctl: settings.supervisorctl, program: entry.serviceName, port: entry.port, timeoutMs: settings.healthTimeoutMs }
    : null;

  // Decided by the check, and again under the lock: another run may have done the work in between.
  const decide = (): Outcome | undefined => {
    onDisk = currentHash(cache, binPath);
    decision = source.kind === "backup" ? planRestore(onDisk, target.sha256) : plan(entry, onDisk, target.sha256, new Date());
    if (decision.kind === "up-to-date") return "up-to-date";
    if (decision.kind === "held") {
      log.info("held", { bin: name, target: short(target.sha256), failures: decision.hold.failures, until: decision.hold.until ?? "api-moves-on" });
      return "held";
    }
    if (decision.kind === "adopt") {
      recordManifest({ version: target.sha256 });
      log.info("adopted", { bin: name, version: short(target.sha256) });
      return "adopted";
    }
  };
  const check: Phase<Outcome> = { name: "check", run: async () => decide() };

  const lockPhase: Phase<Outcome> = {
    name: "lock",
    async run() {
      const result = await acquireVersionLock({ lockDir: settings.lockDir, name, sha: target.sha256, timeoutSec: settings.lockTimeoutSec });
      if (result.kind === "busy") {
        log.info("busy", { bin: name, target: short(target.sha256), lock_age_s: result.ageSec, holder: result.holder });
        return "busy";
      }
      lock = result.lock;
      if (lock.tookOver) log.warn("lock_taken_over", { bin: name, target: short(target.sha256), reason: lock.tookOver });
      for (const { version, endedPid } of result.obsolete) {
        log.info("obsolete_version_dropped", { bin: name, version: short(version), ended_pid: endedPid ?? undefined });
      }
      // Every other downloader of this binary is ended now: any partial file left is a killed run's.
      for (const version of removePartials(binPath)) log.info("partial_removed", { bin: name, version: short(version) });
      // A run that finished (or failed) this very update between our check and our lock has changed
      // the disk and the manifest: decide again from them, so nothing is downloaded twice and the
      // backup is named after the binary really replaced.
      entry = readManifest(settings.manifest).entries.find((e) => e.binaryName === name) ?? entry;
      return decide();
    },
    // Before the lock is let go, the failed target is marked held, so no pass retries it at once. A
    // failed rollback leaves holds to the operator: the version it tried is not the API's target.
    async undo() {
      if (!lock) return;
      if (source.kind === "download") {
        const hold = holdAfterFailure(entry.hold, target.sha256, new Date(), settings.retryBackoffSec);
        try {
          recordManifest({ hold });
        } catch (err) {
          log.error("hold_not_recorded", { bin: name, error: errorText(err) });
        }
        log.info("holding", { bin: name, target: short(target.sha256), failures: hold.failures, until: hold.until ?? "" });
      }
      await progress("failed");
    },
    cleanup() {
      lock?.release();
    },
  };

  const downloadPhase: Phase<Outcome> = {
    name: source.kind === "backup" ? "verify-backup" : "download",
    async run() {
      if (decision.kind === "finish") return;
      await progress("in_progress");
      if (source.kind === "backup") {
        download = stageBackup(backupPath(settings.stateDir, name, target.sha256), partialPath(binPath, target.sha256), target.sha256);
        // Held before the swap: a pass that starts meanwhile leaves the binary to this rollback
        // instead of taking its own lock, which would end this run.
        recordManifest({ hold: rollbackHold() });
        rollbackHeld = true;
        return;
      }
      const ticker = setInterval(() => void progress("in_progress"), 10_000);
      try {
        download = await downloadVerified({
          urls: api.downloadUrls(name),
          expected: target.sha256,
          tempPath: partialPath(binPath, target.sha256),
          maxBytes: settings.maxDownloadBytes,
          idleTimeoutMs: settings.httpTimeoutMs,
          policy: api.policy,
          onAttemptFailed: (url, reason) => log.warn("download_attempt_failed", { bin: name, url, reason }),
        });
      } finally {
        clearInterval(ticker);
      }
      if (isSelf) await checkRuns(download);
    },
    async undo() {
      if (download) discard(download);
      if (rollbackHeld) recordManifest({ hold: entry.hold });
    },
    cleanup() {
      if (download) discard(download);
    },
  };

  const installPhase: Phase<Outcome> = {
    name: "install",
    async run() {
      if (decision.kind === "finish") {
        // The interrupted pass kept the backup of the version the manifest names before it swapped.
        const kept = entry.version && backupPath(settings.stateDir, name, entry.version);
        backup = kept && existsSync(kept) ? kept : null;
        installed = true;
        return;
      }
      if (onDisk) backup = keepBackup(binPath, settings.stateDir, name, onDisk);
      installDownload(download!, binPath);
      installed = true;
      cache.record(binPath, target.sha256);
    },
    async undo() {
      if (!installed) return;
      if (backup) restoreBackup(backup, binPath);
      else if (onDisk === null) removeIfPresent(binPath); // a first install that failed: there was nothing before it
      else throw new Error(`no backup of ${entry.version ? short(entry.version) : "the previous version"} to put back; ${binPath} left as it is`);
      installed = false;
      const restored = previousVersion();
      log.info("rolled_back", { bin: name, to: backup && restored ? short(restored) : "nothing" });
    },
  };

  const restartPhase: Phase<Outcome> = {
    name: "restart",
    async run() {
      if (!service) return;
      restarted = true;
      await restartAndCheck(service);
    },
    // A restart is undone by putting the old binary back and restarting that.
    async undo() {
      if (!restarted) return;
      await installPhase.undo!();
      await restartAndCheck(service!);
    },
  };

  const report: Phase<Outcome> = {
    name: "report",
    async run() {
      const previous = previousVersion();
      const hold = rollbackHold();
      recordManifest({ version: target.sha256, previousVersion: previous, hold });
      pruneBackups(settings.stateDir, name, [previous]);
      log.info(source.kind === "backup" ? "reverted" : "updated", {
        bin: name, from: previous ? short(previous) : "none", to: short(target.sha256), held: hold ? short(hold.version) : undefined, took_ms: Date.now() - started,
      });
      await progress("success");
      try {
        await api.installed({ nodeName: settings.nodeName, binName: name, sha256: target.sha256, version: target.version });
      } catch (err) {
        // The new binary is healthy; an API that missed the news is no reason to roll it back.
        log.error("report_failed", { bin: name, error: errorText(err) });
      }
      return "updated";
    },
  };

  const result = await runPhases([check, lockPhase, downloadPhase, installPhase, restartPhase, report], {
    onFailure: (phase, error) => log.error("update_failed", { bin: name, phase, target: short(target.sha256), error: errorText(error) }),
    onUndoError: (phase, error) => log.error("undo_failed", { bin: name, phase, error: errorText(error) }),
  });
  return result.ok ? (result.stoppedWith ?? "updated") : "failed";
}

/** A new bin-proxy must answer --version before it replaces the running one. */
async function checkRuns(download: Downloaded): Promise<void> {
  // Executing a file still open for writing fails with ETXTBSY: close it, run it, reopen it.
  fchmodSync(download.fd, 0o700);
  closeSync(download.fd);
  download.fd = -1; // should the reopen fail, discard must not close that number again
  download.fd = openSync(download.tempPath, constants.O_RDONLY | constants.O_NOFOLLOW);
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
