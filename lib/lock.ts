// Owns locking: version lock files (the old script's format) with a recorded holder, and short exclusive file locks.
import { dlopen, FFIType } from "bun:ffi";
import {
  closeSync, constants, existsSync, fstatSync, ftruncateSync, lstatSync, openSync, readdirSync, readFileSync,
  readlinkSync, statSync, writeSync, type Stats,
} from "node:fs";
import { join } from "node:path";
import { ensureDirectory, removeIfPresent, writeFileAtomic } from "./fsx.ts";
import { parseSha256, type Sha256 } from "./hash.ts";

// flock(2) is the kernel's record of who holds a lock: it vanishes with the holder, whatever killed
// it. Bun has no binding for it, so it is called from libc directly.
const libc = dlopen("libc.so.6", { flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 } });
const LOCK_EX = 2;
const LOCK_NB = 4;
const tryFlock = (fd: number): boolean => libc.symbols.flock(fd, LOCK_EX | LOCK_NB) === 0;

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

/** Runs fn while holding an exclusive flock on path (a file that is never removed, so it cannot be raced). */
export function withExclusiveLock<T>(path: string, fn: () => T, waitMs = 10_000): T {
  const fd = openSync(path, constants.O_CREAT | constants.O_RDWR | constants.O_NOFOLLOW, 0o600);
  try {
    const deadline = Date.now() + waitMs;
    while (!tryFlock(fd)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${path}`);
      Bun.sleepSync(10);
    }
    return fn();
  } finally {
    closeSync(fd); // releases the flock
  }
}

export function lockFileName(name: string, sha: Sha256): string {
  return `${name}-${sha}.lock`;
}

/** The version in fileName when it is exactly a version lock of name (never `name-extra-…`). */
export function lockedVersion(fileName: string, name: string): Sha256 | null {
  if (!fileName.startsWith(`${name}-`) || !fileName.endsWith(".lock")) return null;
  const version = parseSha256(fileName.slice(name.length + 1, -".lock".length));
  return version && version === fileName.slice(name.length + 1, -".lock".length) ? version : null;
}

/** The version in fileName when it is exactly a lock of another version of name. */
export function otherVersionOf(fileName: string, name: string, sha: Sha256): Sha256 | null {
  const version = lockedVersion(fileName, name);
  return version !== sha ? version : null;
}

/** What a lock file says: the Unix time it was taken (the old script's format), or null when unreadable. */
export function parseLockTime(content: string): number | null {
  const match = /^(\d{1,12})\s*$/.exec(content);
  return match ? Number(match[1]) : null;
}

// The holder record sits beside the lock (the lock itself keeps the old script's one-line format).
// It names the process that took the lock, by pid and kernel start time so a reused pid never
// passes for it, and the lock's inode and time so it never vouches for a lock written since.
interface Holder {
  pid: number;
  start: string;
  ino: number;
  time: number;
}
const holderPath = (lockPath: string) => lockPath.replace(/([^/]+)$/, ".$1.holder");

function readHolder(lockPath: string): Holder | null {
  try {
    const [pid, start, ino, time] = readFileSync(holderPath(lockPath), "utf8").trim().split(" ");
    const holder = { pid: Number(pid), start: start ?? "", ino: Number(ino), time: Number(time) };
    return Number.isInteger(holder.pid) && Number.isInteger(holder.ino) && Number.isInteger(holder.time) ? holder : null;
  } catch {
    return null;
  }
}

/** The kernel's start time of pid (field 22 of /proc/pid/stat), or null when it is gone (or a zombie). */
export function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields[0] === "Z" || fields[0] === "X" ? null : (fields[19] ?? null);
  } catch {
    return null;
  }
}

const isSameProcess = (h: Holder) => h.start !== "" && processStart(h.pid) === h.start;

export interface VersionLock {
  path: string;
  /** Unix seconds when it was taken: processingTime counts from here. */
  takenAt: number;
  /** Why an existing lock was taken over, if one was. */
  tookOver: string | null;
  release(): void;
}

export type LockResult =
  | { kind: "acquired"; lock: VersionLock; obsolete: Sha256[] }
  | { kind: "busy"; ageSec: number; holder: string };

export interface LockRequest {
  lockDir: string;
  name: string;
  sha: Sha256;
  timeoutSec: number;
  /** How long a terminated holder of another version gets to exit before SIGKILL. */
  graceMs?: number;
}

/**
 * Takes LOCK_DIR/{name}-{sha}.lock. A fresh lock means busy. A stale one (older than the timeout,
 * or whose recorded bin-proxy holder provably no longer exists) is taken over in place while
 * holding its flock, so of any number of runs that find it stale exactly one proceeds.
 */
export async function acquireVersionLock(req: LockRequest): Promise<LockResult> {
  const path = join(req.lockDir, lockFileName(req.name, req.sha));
  for (let attempt = 0; attempt < 50; attempt++) {
    const now = Math.floor(Date.now() / 1000);
    let fd: number;
    let created = false;
    try {
      fd = openSync(path, constants.O_CREAT | constants.O_EXCL | constants.O_RDWR | constants.O_NOFOLLOW, 0o644);
      created = true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      try {
        fd = openSync(path, constants.O_RDWR | constants.O_NOFOLLOW);
      } catch (openErr) {
        if ((openErr as NodeJS.ErrnoException).code === "ENOENT") continue; // released meanwhile: try again
        throw openErr;
      }
    }
    if (!tryFlock(fd)) {
      closeSync(fd);
      if (created) {
        // A rival opened our brand-new file to judge it; it will find it fresh and let go.
        await Bun.sleep(5);
        attempt--;
        continue;
      }
      const age = lockAge(path, now);
      return { kind: "busy", ageSec: age, holder: describeHolder(path) };
    }
    // We hold the flock; make sure the path still names the file we locked (it may have been released and re-created).
    if (!sameFile(fd, path)) {
      closeSync(fd);
      continue;
    }
    let tookOver: string | null = null;
    if (!created) {
      const reason = staleReason(fd, path, now, req.timeoutSec);
      if (!reason) {
        const age = lockAge(path, now);
        closeSync(fd);
        return { kind: "busy", ageSec: age, holder: describeHolder(path) };
      }
      tookOver = reason;
      ftruncateSync(fd, 0);
    }
    writeSync(fd, `${now}\n`, 0);
    writeFileAtomic(holderPath(path), `${process.pid} ${processStart(process.pid) ?? ""} ${fstatSync(fd).ino} ${now}\n`, { mode: 0o600 });
    const obsolete = await removeOtherVersions(req);
    return {
      kind: "acquired",
      obsolete,
      lock: {
        path,
        takenAt: now,
        tookOver,
        release() {
          removeIfPresent(path);
          removeIfPresent(holderPath(path));
          closeSync(fd);
        },
      },
    };
  }
  throw new Error(`could not take ${path}: it kept changing under us`);
}

function sameFile(fd: number, path: string): boolean {
  try {
    const a = fstatSync(fd);
    const b = lstatSync(path);
    return a.ino === b.ino && a.dev === b.dev;
  } catch {
    return false;
  }
}

function lockTime(path: string): number | null {
  try {
    return parseLockTime(readFileSync(path, "utf8")) ?? Math.floor(statSync(path).mtimeMs / 1000);
  } catch {
    return null;
  }
}

/** Read-only: how old the lock of name at sha is, in seconds, or null when there is none (for --dry-run and status). */
export function versionLockAge(lockDir: string, name: string, sha: Sha256): number | null {
  const path = join(lockDir, lockFileName(name, sha));
  return existsSync(path) ? lockAge(path, Math.floor(Date.now() / 1000)) : null;
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
    const path = join(lockDir, file);
    return version ? [{ version, ageSec: lockAge(path, now), holder: describeHolder(path) }] : [];
  });
}

function lockAge(path: string, now: number): number {
  return Math.max(0, now - (lockTime(path) ?? now));
}

/** Why the lock we hold the flock of may be taken over, or null when its owner must be left alone. */
function staleReason(fd: number, path: string, now: number, timeoutSec: number): string | null {
  const time = lockTime(path);
  // Unreadable content (a writer killed before its first byte) ages by mtime, never counts as stale at once.
  if (time === null || now - time >= timeoutSec) return `stale: ${time === null ? "unreadable" : `${now - time}s old`}`;
  const holder = readHolder(path);
  // We hold the flock, so no bin-proxy holds this lock; the record proves bin-proxy wrote it and
  // that its writer is gone. A lock without a matching record (the old script's) waits out the timeout.
  if (holder && holder.ino === fstatSync(fd).ino && holder.time === time && !isSameProcess(holder)) {
    return `holder pid ${holder.pid} no longer exists`;
  }
  return null;
}

function describeHolder(path: string): string {
  const holder = readHolder(path);
  return holder && isSameProcess(holder) ? `pid ${holder.pid}` : "unknown (not recorded by bin-proxy)";
}

/**
 * Removes the locks of other versions of the same binary, after terminating the bin-proxy that
 * holds each one. The process is identified exactly: the pid its holder record names, with the
 * same kernel start time, and holding that very lock file open. Nothing else is ever signalled.
 */
async function removeOtherVersions(req: LockRequest): Promise<Sha256[]> {
  const obsolete: Sha256[] = [];
  for (const file of readdirSync(req.lockDir)) {
    const version = otherVersionOf(file, req.name, req.sha);
    if (!version) continue;
    const path = join(req.lockDir, file);
    const holder = readHolder(path);
    if (holder && holder.pid !== process.pid && isSameProcess(holder) && hasFileOpen(holder.pid, path)) {
      await terminate(holder, req.graceMs ?? 5000);
    }
    removeIfPresent(path);
    removeIfPresent(holderPath(path));
    obsolete.push(version);
  }
  return obsolete;
}

function hasFileOpen(pid: number, path: string): boolean {
  let target: { dev: number; ino: number };
  try {
    target = statSync(path);
  } catch {
    return false;
  }
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  return fds.some((fd) => {
    try {
      if (!readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith("/")) return false;
      const st = statSync(`/proc/${pid}/fd/${fd}`);
      return st.ino === target.ino && st.dev === target.dev;
    } catch {
      return false;
    }
  });
}

/** SIGTERM, then SIGKILL after the grace period; each signal only while pid is still the same process. */
async function terminate(holder: Holder, graceMs: number): Promise<void> {
  const signal = (sig: NodeJS.Signals) => {
    if (isSameProcess(holder)) process.kill(holder.pid, sig);
  };
  signal("SIGTERM");
  const deadline = Date.now() + graceMs;
  while (isSameProcess(holder) && Date.now() < deadline) await Bun.sleep(25);
  signal("SIGKILL");
  while (isSameProcess(holder)) await Bun.sleep(10);
}
