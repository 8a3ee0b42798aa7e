// Owns looking at version locks: the one way a lock's facts are gathered, and the read-only views and sweep built on it (status, --dry-run, leftovers).
import { closeSync, constants, fstatSync, openSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { inLockDir } from "./flock.ts";
import { removeIfPresent } from "./fsx.ts";
import type { Sha256 } from "./hash.ts";
import { describeHolder, holderOf, recordedLock, type HolderLine } from "./holder.ts";
import { judgeLock, lockedVersion, lockFileName, parseLockTime, type LockFacts, type LockVerdict } from "./lockjudge.ts";
import { tryFlock } from "./libc.ts";

/** Temp files of lock files and holder records (`.{file}.{pid}.tmp`); only ever present while their writer holds the directory. */
const LOCK_DIR_TEMP = /^\..+\.(?:lock|holder)\.\d+\.tmp$/;

/** A lock's facts for judgeLock (all but the timeout, which is the caller's), and the record line behind them. */
type ObservedLock = Omit<LockFacts, "timeoutSec"> & { line: HolderLine | null };

/** Whether observeLock tries the lock's flock (freed again at once) or leaves it alone and judges the holder by its record. */
type FlockProbe = "probe" | "leave";

/**
 * Reads the lock file at lockPath (never through a link) and what its holder record proves; null
 * when there is no lock. With "probe" its flock is tried, so call it under the lock directory's
 * flock; with "leave" (a read-only view: a dry run must not make a real pass see the lock held)
 * a holder counts as holding the flock exactly when its record proves it running.
 */
export function observeLock(lockPath: string, now: number, flock: FlockProbe): ObservedLock | null {
  let fd: number;
  try {
    fd = openSync(lockPath, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
  try {
    const st = fstatSync(fd, { bigint: true });
    const written = parseLockTime(readFileSync(fd, "utf8"));
    // An unreadable lock (empty, garbage) ages by its mtime, and never proves its holder gone.
    const time = written ?? Math.floor(Number(st.mtimeMs) / 1000);
    const flockHeld = flock === "probe" ? !tryFlock(fd) : undefined;
    const { line, state } = holderOf(lockPath, st, written);
    return { ageSec: Math.max(0, now - time), flockHeld: flockHeld ?? state === "running", holder: state, line };
  } finally {
    closeSync(fd);
  }
}

/**
 * Removes what killed runs left in the lock directory: locks whose recorded holder provably no
 * longer exists (with their records), records whose lock is gone, and temp files of locks and
 * records. A lock without such proof (the old script's, a live run's, one that cannot be read) is
 * left alone. Returns the names removed.
 */
export function sweepLockDir(lockDir: string): string[] {
  const now = Math.floor(Date.now() / 1000);
  return inLockDir(lockDir, () => {
    const removed: string[] = [];
    const remove = (file: string) => removeIfPresent(join(lockDir, file)) && removed.push(file);
    for (const file of readdirSync(lockDir)) {
      if (LOCK_DIR_TEMP.test(file)) {
        remove(file);
        continue;
      }
      const lockFile = recordedLock(file);
      if (!lockFile) continue;
      let found: ObservedLock | null;
      try {
        found = observeLock(join(lockDir, lockFile), now, "probe");
      } catch {
        continue;
      }
      if (!found) {
        remove(file);
      } else if (judgeLock({ ...found, timeoutSec: Infinity }).kind === "take-over") {
        remove(lockFile);
        remove(file);
      }
    }
    return removed;
  });
}

/**
 * Read-only, for --dry-run: what a pass would decide about the lock of name at sha (null: there is
 * none), by the same judgeLock. It does not touch the lock's flock (a dry run must not make a real
 * pass see it held), so a holder is judged by its record alone.
 */
export function previewLock(lockDir: string, name: string, sha: Sha256, timeoutSec: number): LockVerdict | null {
  // A lock that cannot be read (a symlink, a directory) throws here as it does for a pass that takes it.
  const found = observeLock(join(lockDir, lockFileName(name, sha)), Math.floor(Date.now() / 1000), "leave");
  return found && judgeLock({ ...found, timeoutSec });
}

export interface LockInfo {
  version: Sha256;
  ageSec: number;
  holder: string;
}

/** Read-only, for status: every version lock of name present now, with its age and holder. */
export function listVersionLocks(lockDir: string, name: string): LockInfo[] {
  let files: string[];
  try {
    files = readdirSync(lockDir);
  } catch {
    return []; // no lock directory yet: nothing is locked
  }
  const now = Math.floor(Date.now() / 1000);
  return files.flatMap((file) => {
    const version = lockedVersion(file, name);
    if (!version) return [];
    let found: ObservedLock | null;
    try {
      found = observeLock(join(lockDir, file), now, "leave");
    } catch {
      return []; // not a lock file that can be read: nothing to show
    }
    // null: released while we looked
    return found ? [{ version, ageSec: found.ageSec, holder: describeHolder(found.line, found.holder) }] : [];
  });
}
