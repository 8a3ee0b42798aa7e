// Owns taking a version lock: the lock directory's preparation, taking (or taking over) {name}-{sha}.lock with its holder recorded, removing other versions' locks, and releasing.
import { closeSync, fstatSync, fsyncSync, linkSync, lstatSync, readdirSync, renameSync, type Stats } from "node:fs";
import { join } from "node:path";
import { inLockDir } from "./flock.ts";
import { createTemp, ensureDirectory, removeIfPresent, tempPathFor, utf8, writeAll } from "./fsx.ts";
import type { Sha256 } from "./hash.ts";
import { describeHolder, holderPath, processStart, stillRuns, writeRecord, type HolderLine } from "./holder.ts";
import { tryFlock } from "./libc.ts";
import { observeLock } from "./lockinspect.ts";
import { judgeLock, lockFileName, otherVersionOf } from "./lockjudge.ts";

export class LockDirError extends Error {}

/** Creates the lock directory (0700) if missing; refuses one that others could plant files in. */
export function prepareLockDir(dir: string): void {
  let st: Stats;
  try {
    st = ensureDirectory(dir);
  } catch (err) {
    throw new LockDirError(`lock directory: ${(err as Error).message}`);
  }
  // Whoever can write here can plant a fresh-looking lock that blocks an update for ever, or hold
  // the manifest's lock; a sticky bit stops neither.
  if (st.mode & 0o002) throw new LockDirError(`lock directory ${dir} is world-writable; make it 0700 (chmod 700 ${dir})`);
  const uid = process.geteuid!();
  if (st.uid !== uid && st.uid !== 0) {
    throw new LockDirError(`lock directory ${dir} belongs to uid ${st.uid}, who could plant files in it; chown it to ${uid === 0 ? "root" : `uid ${uid}`}`);
  }
}

export interface VersionLock {
  path: string;
  /** Unix seconds when it was taken: processingTime counts from here. */
  takenAt: number;
  /** Why an existing lock was taken over, if one was. */
  tookOver: string | null;
  release(): void;
}

/** A lock of another version, removed; pid is the holder that was ended, if one still ran. */
interface ObsoleteLock {
  version: Sha256;
  endedPid: number | null;
}

type LockResult =
  | { kind: "acquired"; lock: VersionLock; obsolete: ObsoleteLock[] }
  | { kind: "busy"; ageSec: number; holder: string };

interface LockRequest {
  lockDir: string;
  name: string;
  sha: Sha256;
  timeoutSec: number;
  /** How long a terminated holder gets to exit before SIGKILL. */
  graceMs?: number;
}

type Step =
  | { kind: "acquired"; fd: number; tookOver: string | null; obsolete: ObsoleteLock[]; toEnd: HolderLine[] }
  /** An other version's lock could not be dropped: ours is given up again; the holders of those that were dropped are still ended. */
  | { kind: "drop-failed"; error: unknown; toEnd: HolderLine[] }
  | { kind: "busy"; ageSec: number; holder: string }
  | { kind: "end-holder"; holder: HolderLine; ageSec: number }
  | { kind: "raced" };

/**
 * Takes LOCK_DIR/{name}-{sha}.lock. A fresh lock means busy; a stale one (older than the timeout,
 * or whose recorded holder provably no longer exists) is taken over. Then the locks of the other
 * versions of the binary are removed and their holders ended. Decisions and changes are made under
 * the lock directory's flock, so of any number of runs exactly one takes a given lock; processes
 * are waited for outside it.
 */
export async function acquireVersionLock(req: LockRequest): Promise<LockResult> {
  const path = join(req.lockDir, lockFileName(req.name, req.sha));
  const graceMs = req.graceMs ?? 5000;
  let ended: number | null = null;
  for (let attempt = 0; attempt < 10; attempt++) {
    const now = Math.floor(Date.now() / 1000);
    const step = inLockDir(req.lockDir, () => takeStep(req, path, now));
    switch (step.kind) {
      case "raced":
        continue;
      case "busy":
        return step;
      case "end-holder":
        if (ended === step.holder.pid) return { kind: "busy", ageSec: step.ageSec, holder: `pid ${ended} (still running after SIGKILL)` };
        await terminate(step.holder, graceMs);
        ended = step.holder.pid;
        continue;
      case "acquired": {
        const tookOver = step.tookOver && ended !== null ? `${step.tookOver}; its holder pid ${ended} was ended` : step.tookOver;
        // terminate never throws (a holder gone meanwhile is what it waits for).
        for (const holder of step.toEnd) await terminate(holder, graceMs);
        return { kind: "acquired", obsolete: step.obsolete, lock: heldLock(req.lockDir, path, step.fd, now, tookOver) };
      }
      case "drop-failed":
        for (const holder of step.toEnd) await terminate(holder, graceMs);
        throw step.error;
    }
  }
  throw new Error(`could not take ${path}: it kept changing under us`);
}

/** One look at the lock, under the lock directory's flock: take it, or say why not. */
function takeStep(req: LockRequest, path: string, now: number): Step {
  // The lock is ours once placed: should dropping the other versions' fail, it is given up again, so
  // no lock is left whose record names this live run (only the next pass could take it over).
  const acquired = (fd: number, tookOver: string | null): Step => {
    const { obsolete, toEnd, failure } = dropOtherVersions(req, now);
    if (failure === null) return { kind: "acquired", fd, tookOver, obsolete, toEnd };
    removeLockFiles(path);
    closeSync(fd);
    return { kind: "drop-failed", error: failure, toEnd };
  };
  const found = observeLock(path, now, "probe");
  if (!found) {
    const placed = placeLock(path, now, null);
    return placed === null ? { kind: "raced" } : acquired(placed, null);
  }
  const verdict = judgeLock({ ...found, timeoutSec: req.timeoutSec });
  switch (verdict.kind) {
    case "busy":
      return { kind: "busy", ageSec: found.ageSec, holder: describeHolder(found.line, found.holder) };
    case "end-holder":
      return { kind: "end-holder", holder: found.line!, ageSec: found.ageSec };
    case "take-over": {
      const reason = verdict.why === "stale" ? `stale: ${found.ageSec}s old` : `holder pid ${found.line!.pid} no longer exists`;
      return acquired(placeLock(path, now, found.line ? [found.line] : [])!, reason);
    }
  }
}

/**
 * Puts a complete lock file at path, flocked and recorded before it gets its name, so the lock is
 * never seen empty or without its holder: written to a temp file, then linked to path (which fails
 * when a lock appeared meanwhile: returns null) or, taking over, renamed over it. Until the rename,
 * the record keeps the line of the lock it replaces, so a kill at any instant leaves a lock whose
 * record tells whether its holder lives. Returns the new lock's descriptor, which holds its flock.
 */
function placeLock(path: string, now: number, replacing: HolderLine[] | null): number | null {
  const temp = tempPathFor(path);
  const fd = createTemp(temp, 0o644); // nobody else is placing a lock while we hold the directory
  try {
    writeAll(fd, utf8(`${now}\n`));
    fsyncSync(fd);
    if (!tryFlock(fd)) throw new Error(`cannot flock ${temp}`);
    const mine: HolderLine = { pid: process.pid, start: processStart(process.pid) ?? "", ino: fstatSync(fd, { bigint: true }).ino.toString(), time: now };
    writeRecord(path, [mine, ...(replacing ?? [])]);
    if (replacing) {
      renameSync(temp, path);
      if (replacing.length > 0) writeRecord(path, [mine]);
    } else {
      try {
        linkSync(temp, path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
        // Another program (the old script) made the lock meanwhile: our record names nothing.
        removeIfPresent(holderPath(path));
        removeIfPresent(temp);
        closeSync(fd);
        return null;
      }
      removeIfPresent(temp);
    }
    return fd;
  } catch (err) {
    closeSync(fd);
    removeIfPresent(temp);
    throw err;
  }
}

/**
 * Removes the locks of other versions of the same binary (and their records), and says which of
 * their holders still run. A holder is identified exactly: the pid its record names, with the same
 * kernel start time, having that very lock file open. Nothing else is ever signalled.
 */
function dropOtherVersions(req: LockRequest, now: number): { obsolete: ObsoleteLock[]; toEnd: HolderLine[]; failure: unknown } {
  const obsolete: ObsoleteLock[] = [];
  const toEnd: HolderLine[] = [];
  // One that cannot be removed (a directory there) does not stop the others: their holders are ended all the same.
  let failure: unknown = null;
  for (const file of readdirSync(req.lockDir)) {
    const version = otherVersionOf(file, req.name, req.sha);
    if (!version) continue;
    const path = join(req.lockDir, file);
    let holder: HolderLine | null = null;
    try {
      const found = observeLock(path, now, "leave");
      if (found?.holder === "running") holder = found.line;
    } catch {
      // not a lock file that can be read: no holder to end
    }
    // As removeLockFiles, in two steps: a lock that stays keeps its holder; one removed is dropped,
    // and its holder ended, even when its record cannot be removed.
    try {
      removeIfPresent(path);
    } catch (err) {
      failure ??= err;
      continue;
    }
    obsolete.push({ version, endedPid: holder?.pid ?? null });
    if (holder) toEnd.push(holder);
    try {
      removeIfPresent(holderPath(path));
    } catch (err) {
      failure ??= err;
    }
  }
  return { obsolete, toEnd, failure };
}

function heldLock(lockDir: string, path: string, fd: number, takenAt: number, tookOver: string | null): VersionLock {
  return {
    path,
    takenAt,
    tookOver,
    release() {
      try {
        inLockDir(lockDir, () => {
          // A lock removed or replaced by another run (a newer version, a takeover) is not ours to remove.
          if (!sameFile(fd, path)) return;
          removeLockFiles(path);
        });
      } finally {
        closeSync(fd);
      }
    },
  };
}

/** Removes a lock and its holder record, the lock first: a kill between the two leaves a record without a lock, which the next pass sweeps. */
function removeLockFiles(path: string): void {
  removeIfPresent(path);
  removeIfPresent(holderPath(path));
}

function sameFile(fd: number, path: string): boolean {
  try {
    const a = fstatSync(fd, { bigint: true });
    const b = lstatSync(path, { bigint: true });
    return a.ino === b.ino && a.dev === b.dev;
  } catch {
    return false;
  }
}

/**
 * SIGTERM, then SIGKILL after the grace period; each signal only while pid is still the same
 * process. A pass does not catch SIGTERM: it dies at once, leaving exactly what kill -9 leaves,
 * which the run ending it (partial file, lock) and the next pass (the rest) clean up. A handler
 * could not run while the pass is in a synchronous step anyway, and would be a second, rarely
 * exercised recovery path beside the one every kill takes.
 */
async function terminate(holder: HolderLine, graceMs: number): Promise<void> {
  const signal = (sig: NodeJS.Signals) => {
    try {
      if (stillRuns(holder)) process.kill(holder.pid, sig);
    } catch {
      // gone between the check and the signal
    }
  };
  signal("SIGTERM");
  let deadline = Date.now() + graceMs;
  while (stillRuns(holder) && Date.now() < deadline) await Bun.sleep(20);
  signal("SIGKILL");
  // A process stuck in the kernel dies when it returns from it; the lock is handled either way.
  deadline = Date.now() + 10_000;
  while (stillRuns(holder) && Date.now() < deadline) await Bun.sleep(20);
}
