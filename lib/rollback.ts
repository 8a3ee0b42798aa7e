// Owns the operator's commands on one binary: `rollback NAME` (back to the kept previous version, held there) and `retry NAME` (clear a hold).
import { existsSync } from "node:fs";
import type { Settings } from "./config.ts";
import { EXIT_CONFIG, EXIT_FAILED, EXIT_OK } from "./exit.ts";
import { short, type Sha256 } from "./hash.ts";
import { holdsOf } from "./hold.ts";
import { backupPath } from "./install.ts";
import { readAttempt } from "./journal.ts";
import { prepareLockDir } from "./lock.ts";
import { errorText, type Logger } from "./log.ts";
import { readManifestOrLog, updateManifest, type Entry, type Manifest } from "./manifest.ts";
import { passContext, trustedKeysOrLog } from "./pass.ts";
import { recordOperatorMetrics } from "./runmetrics.ts";
import { updateBinary } from "./update.ts";

export interface OperatorOptions {
  /** Tells the operator what was done (stdout). */
  print: (line: string) => void;
}

/** The entry named name, or why there is none to act on. */
export function findEntry(manifest: Manifest, name: string, manifestPath: string): Entry | string {
  const entry = manifest.entries.find((e) => e.binaryName === name);
  if (entry) return entry;
  const rejected = manifest.rejected.find((r) => r.label === JSON.stringify(name));
  if (rejected) return `${name} is not managed: its manifest entry is rejected (${rejected.reason})`;
  return `${name} is not managed: ${manifestPath} has no binaryName ${JSON.stringify(name)}`;
}

/** The version `rollback` goes back to, or why it cannot start; exists tells whether a file is there. */
export function rollbackTarget(entry: Entry, stateDir: string, exists: (path: string) => boolean): Sha256 | { problem: string } {
  const name = entry.binaryName;
  const to = entry.previousVersion;
  if (!to) return { problem: `${name} has no previousVersion in the manifest: there is nothing to roll back to` };
  if (to === entry.version) return { problem: `${name}: version and previousVersion are both ${short(to)}: there is nothing to roll back to` };
  const backup = backupPath(stateDir, name, to);
  if (!exists(backup)) return { problem: `no backup of ${name}'s previous version ${short(to)}: ${backup} does not exist` };
  return to;
}

/** Reads the manifest and finds NAME; logs why not and gives the exit status when it cannot. */
function entryOf(settings: Settings, log: Logger, command: string, name: string): Entry | number {
  const manifest = readManifestOrLog(settings.manifest, log);
  if (!manifest) return EXIT_CONFIG;
  const found = findEntry(manifest, name, settings.manifest);
  if (typeof found !== "string") return found;
  log.error(`${command}_refused`, { bin: name, reason: found });
  return EXIT_FAILED;
}

/**
 * Installs the kept backup of previousVersion through the update's own phases (lock, verify,
 * install, restart with the health check, report), then holds the version it left until the API
 * names another. Any failure puts everything back as it was.
 */
export async function rollback(settings: Settings, log: Logger, name: string, options: OperatorOptions): Promise<number> {
  const startedAt = new Date();
  const exitCode = await rollBack(settings, log, name, options);
  recordOperatorMetrics(settings, log, { kind: "rollback", name, startedAt, exitCode, event: { rolledBack: exitCode === EXIT_OK } });
  return exitCode;
}

async function rollBack(settings: Settings, log: Logger, name: string, options: OperatorOptions): Promise<number> {
  const entry = entryOf(settings, log, "rollback", name);
  if (typeof entry === "number") return entry;
  const to = rollbackTarget(entry, settings.stateDir, existsSync);
  if (typeof to !== "string") {
    log.error("rollback_refused", { bin: name, reason: to.problem });
    return EXIT_FAILED;
  }
  const open = readAttempt(settings.stateDir, name);
  if (open) {
    const state = open.inconsistent ? `left inconsistent: ${open.inconsistent}` : "uncommitted";
    log.error("rollback_refused", { bin: name, reason: `the update to ${short(open.target)} started ${open.startedAt} is ${state}; run a pass first (it finishes it, or rolls it back after its second death)` });
    return EXIT_FAILED;
  }
  try {
    prepareLockDir(settings.lockDir);
  } catch (err) {
    log.error("rollback_refused", { bin: name, reason: errorText(err) });
    return EXIT_FAILED;
  }
  const trustedKeys = trustedKeysOrLog(settings, log);
  if (trustedKeys === undefined) return EXIT_CONFIG;
  const ctx = passContext(settings, log, trustedKeys, false);
  // The API has no release name for a version it no longer targets: report the short hash as its name.
  const outcome = await updateBinary(ctx, entry, { sha256: to, version: short(to) }, { kind: "backup" });
  ctx.cache.save();
  switch (outcome.kind) {
    case "updated":
      options.print(`${name}: rolled back to ${short(to)}; the version it left is held until the API names another (bin-proxy retry ${name} lifts the hold)`);
      return EXIT_OK;
    case "busy":
      log.error("rollback_refused", { bin: name, reason: `another run holds the lock of ${short(to)}; try again when it is done` });
      return EXIT_FAILED;
    case "failed": {
      const undo = outcome.undo.kind === "inconsistent" ? `inconsistent: ${outcome.undo.why}` : outcome.undo.kind === "restored" ? "put back as it was" : "nothing was changed";
      log.error("rollback_failed", { bin: name, to: short(to), step: outcome.step, reason: outcome.error, undo });
      return EXIT_FAILED;
    }
    default:
      log.error("rollback_failed", { bin: name, to: short(to), reason: `unexpected outcome ${outcome.kind}` });
      return EXIT_FAILED;
  }
}

/** Clears NAME's hold, so the next pass tries the API's target again. */
export function retry(settings: Settings, log: Logger, name: string, options: OperatorOptions): number {
  const startedAt = new Date();
  const exitCode = clearHolds(settings, log, name, options);
  recordOperatorMetrics(settings, log, { kind: "retry", name, startedAt, exitCode, event: {} });
  return exitCode;
}

function clearHolds(settings: Settings, log: Logger, name: string, options: OperatorOptions): number {
  const entry = entryOf(settings, log, "retry", name);
  if (typeof entry === "number") return entry;
  const holds = holdsOf(entry);
  if (holds.length === 0) {
    options.print(`${name}: no hold to clear; the next pass follows the API as usual`);
    return EXIT_OK;
  }
  try {
    prepareLockDir(settings.lockDir);
    updateManifest(settings.manifest, settings.lockDir, [{ binaryName: name, fields: { hold: null, otherHolds: null } }]);
  } catch (err) {
    log.error("retry_failed", { bin: name, error: errorText(err) });
    return EXIT_FAILED;
  }
  for (const hold of holds) log.info("hold_cleared", { bin: name, version: short(hold.version), failures: hold.failures });
  options.print(`${name}: hold on ${holds.map((h) => short(h.version)).join(", ")} cleared; the next pass tries the API's target again`);
  return EXIT_OK;
}
