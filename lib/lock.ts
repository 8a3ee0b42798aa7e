// Owns locking: version lock files (the old script's format) with a recorded holder, the lock directory's own flock, and short exclusive file locks.
import {
  closeSync, constants, fstatSync, fsyncSync, linkSync, lstatSync, openSync, readdirSync, readFileSync, readlinkSync,
  renameSync, statSync, type BigIntStats, type Stats,
} from "node:fs";
import { join } from "node:path";
import { createExclusive, ensureDirectory, removeIfPresent, tempPathFor, writeAll, writeFileAtomic } from "./fsx.ts";
import { parseSha256, type Sha256 } from "./hash.ts";
import { tryFlock } from "./libc.ts";


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

/** Runs fn while holding the exclusive flock of fd, then closes fd (which releases it). */
function holdingFlock<T>(fd: number, what: string, fn: () => T, waitMs: number): T {
  try {
    const deadline = Date.now() + waitMs;
    while (!tryFlock(fd)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      Bun.sleepSync(10);
    }
    return fn();
  } finally {
    closeSync(fd);
  }
}

/** Runs fn while holding an exclusive flock on path (a file that is never removed, so it cannot be raced). */
export function withExclusiveLock<T>(path: string, fn: () => T, waitMs = 10_000): T {
  return holdingFlock(openSync(path, constants.O_CREAT | constants.O_RDWR | constants.O_NOFOLLOW, 0o600), path, fn, waitMs);
}

/**
 * Runs fn holding the flock of the lock directory itself. Every change bin-proxy makes to version
 * locks and their holder records happens under it, so taking, taking over, releasing and sweeping
 * never interleave between runs. It is never held while waiting for anything else.
 */
function inLockDir<T>(dir: string, fn: () => T): T {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  return holdingFlock(fd, `the lock directory ${dir}`, fn, 10_000);
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

// ---------------------------------------------------------------------------------------------
// Holder records. The lock keeps the old script's one-line format, so who holds it is written
// beside it, in `.{lock}.holder`: one line "pid start ino time" per lock file it vouches for.

/**
 * Process pid, started at kernel time `start` (so a reused pid never passes for it), holds the
 * lock file of inode `ino` that says `time` (so the line never vouches for a file written since).
 */
export interface HolderLine {
  pid: number;
  start: string;
  ino: string;
  time: number;
}

/** The valid lines of a holder record; a line without a start time proves nothing and is dropped. */
export function parseHolderRecord(text: string): HolderLine[] {
  return text.split("\n").flatMap((raw) => {
    const fields = raw.trim().split(" ");
    if (fields.length !== 4 || !fields.every((f) => /^\d{1,20}$/.test(f))) return [];
    const [pid, start, ino, time] = fields as [string, string, string, string];
    const line = { pid: Number(pid), start, ino: BigInt(ino).toString(), time: Number(time) };
    return Number.isSafeInteger(line.pid) && line.pid > 0 && Number.isSafeInteger(line.time) ? [line] : [];
  });
}

export function formatHolderRecord(lines: HolderLine[]): string {
  return lines.map((l) => `${l.pid} ${l.start} ${l.ino} ${l.time}\n`).join("");
}

const holderPath = (lockPath: string) => lockPath.replace(/([^/]+)$/, ".$1.holder");
/** The lock file a holder record belongs to, when fileName is one. */
const recordedLock = (fileName: string) => /^\.(.+\.lock)\.holder$/.exec(fileName)?.[1] ?? null;
/** Temp files of lock files and holder records (`.{file}.{pid}.tmp`); only ever present while their writer holds the directory. */
const LOCK_DIR_TEMP = /^\..+\.(?:lock|holder)\.\d+\.tmp$/;

function readRecord(lockPath: string): HolderLine[] {
  try {
    const fd = openSync(holderPath(lockPath), constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      return parseHolderRecord(readFileSync(fd, "utf8"));
    } finally {
      closeSync(fd);
    }
  } catch {
    return [];
  }
}

function writeRecord(lockPath: string, lines: HolderLine[]): void {
  writeFileAtomic(holderPath(lockPath), formatHolderRecord(lines), { mode: 0o600 });
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

/** True while the line's pid is still the very process it names: not gone, not a zombie, not a reused pid. */
const stillRuns = (h: HolderLine) => processStart(h.pid) === h.start;

/** Whether pid has the file of st open (any of its descriptors), as /proc/PID/fd shows. */
function hasFileOpen(pid: number, st: BigIntStats): boolean {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  return fds.some((fd) => {
    try {
      if (!readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith("/")) return false;
      const open = statSync(`/proc/${pid}/fd/${fd}`, { bigint: true });
      return open.ino === st.ino && open.dev === st.dev;
    } catch {
      return false;
    }
  });
}

/**
 * What the holder record proves about the lock file st (whose content says `time`):
 * - running: the recorded process still runs and has this very file open: it is the holder;
 * - gone: the line vouches for this very file as written, and that process no longer exists;
 * - unproven: anything else (no record: the old script's lock; a record for another file; a live
 *   process that does not have the lock open; this very process).
 */
export type HolderState = "running" | "gone" | "unproven";

function holderOf(lockPath: string, st: BigIntStats, time: number | null): { line: HolderLine | null; state: HolderState } {
  const line = readRecord(lockPath).find((l) => l.ino === st.ino.toString()) ?? null;
  // The pass itself never holds a lock it is looking at (a record naming it was made to look so).
  if (!line || line.pid === process.pid) return { line, state: "unproven" };
  if (stillRuns(line)) return { line, state: hasFileOpen(line.pid, st) ? "running" : "unproven" };
  return { line, state: line.time === time ? "gone" : "unproven" };
}

export interface LockFacts {
  ageSec: number;
  timeoutSec: number;
  /** Some process holds the lock file's flock: a bin-proxy holds it for as long as it works. */
  flockHeld: boolean;
  holder: HolderState;
}

export type LockVerdict =
  | { kind: "busy" }
  /** Older than the timeout, but its holder still runs: end it (TERM, then KILL), then look again. */
  | { kind: "end-holder" }
  | { kind: "take-over"; why: "stale" | "holder-gone" };

/**
 * Decides about a lock someone else wrote. Younger than LOCK_TIMEOUT it is another run's, unless
 * bin-proxy recorded its holder and that holder provably no longer exists; the old script records
 * none, so its locks always wait out the timeout. Older, it is stale and taken over, after ending
 * a holder that still runs, so that two runs never work on one version.
 */
export function judgeLock(f: LockFacts): LockVerdict {
  if (f.ageSec >= f.timeoutSec) return f.holder === "running" ? { kind: "end-holder" } : { kind: "take-over", why: "stale" };
  if (!f.flockHeld && f.holder === "gone") return { kind: "take-over", why: "holder-gone" };
  return { kind: "busy" };
}

interface Examined {
  ageSec: number;
  flockHeld: boolean;
  line: HolderLine | null;
  state: HolderState;
}

/** Reads the lock file open at fd and what its record proves. Takes its flock when free (released with fd). */
function examine(fd: number, lockPath: string, now: number): Examined {
  const st = fstatSync(fd, { bigint: true });
  const written = parseLockTime(readFileSync(fd, "utf8"));
  // An unreadable lock (empty, garbage) ages by its mtime, and never proves its holder gone.
  const time = written ?? Math.floor(Number(st.mtimeMs) / 1000);
  const flockHeld = !tryFlock(fd);
  return { ageSec: Math.max(0, now - time), flockHeld, ...holderOf(lockPath, st, written) };
}

function describeHolder(e: Pick<Examined, "line" | "state">): string {
  if (!e.line) return "unknown (not recorded by bin-proxy)";
  return e.state === "gone" || !stillRuns(e.line) ? `pid ${e.line.pid} (no longer running)` : `pid ${e.line.pid}`;
}

// ---------------------------------------------------------------------------------------------
// Taking and releasing a version lock.

export interface VersionLock {
  path: string;
  /** Unix seconds when it was taken: processingTime counts from here. */
  takenAt: number;
  /** Why an existing lock was taken over, if one was. */
  tookOver: string | null;
  release(): void;
}

/** A lock of another version, removed; pid is the holder that was ended, if one still ran. */
export interface ObsoleteLock {
  version: Sha256;
  endedPid: number | null;
}

export type LockResult =
  | { kind: "acquired"; lock: VersionLock; obsolete: ObsoleteLock[] }
  | { kind: "busy"; ageSec: number; holder: string };

export interface LockRequest {
  lockDir: string;
  name: string;
  sha: Sha256;
  timeoutSec: number;
  /** How long a terminated holder gets to exit before SIGKILL. */
  graceMs?: number;
}

type Step =
  | { kind: "acquired"; fd: number; tookOver: string | null; obsolete: ObsoleteLock[]; toEnd: HolderLine[] }
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
        for (const holder of step.toEnd) await terminate(holder, graceMs);
        const tookOver = step.tookOver && ended !== null ? `${step.tookOver}; its holder pid ${ended} was ended` : step.tookOver;
        return { kind: "acquired", obsolete: step.obsolete, lock: heldLock(req.lockDir, path, step.fd, now, tookOver) };
      }
    }
  }
  throw new Error(`could not take ${path}: it kept changing under us`);
}

/** One look at the lock, under the lock directory's flock: take it, or say why not. */
function takeStep(req: LockRequest, path: string, now: number): Step {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    const placed = placeLock(path, now, null);
    return placed === null ? { kind: "raced" } : { kind: "acquired", fd: placed, tookOver: null, ...dropOtherVersions(req) };
  }
  try {
    const found = examine(fd, path, now);
    const verdict = judgeLock({ ageSec: found.ageSec, timeoutSec: req.timeoutSec, flockHeld: found.flockHeld, holder: found.state });
    switch (verdict.kind) {
      case "busy":
        return { kind: "busy", ageSec: found.ageSec, holder: describeHolder(found) };
      case "end-holder":
        return { kind: "end-holder", holder: found.line!, ageSec: found.ageSec };
      case "take-over": {
        const reason = verdict.why === "stale" ? `stale: ${found.ageSec}s old` : `holder pid ${found.line!.pid} no longer exists`;
        const placed = placeLock(path, now, found.line ? [found.line] : []);
        return { kind: "acquired", fd: placed!, tookOver: reason, ...dropOtherVersions(req) };
      }
    }
  } finally {
    closeSync(fd);
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
  removeIfPresent(temp); // nobody else is placing a lock while we hold the directory: a killed run's leftover
  const fd = createExclusive(temp, 0o644);
  try {
    writeAll(fd, Buffer.from(`${now}\n`));
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
function dropOtherVersions(req: LockRequest): { obsolete: ObsoleteLock[]; toEnd: HolderLine[] } {
  const obsolete: ObsoleteLock[] = [];
  const toEnd: HolderLine[] = [];
  for (const file of readdirSync(req.lockDir)) {
    const version = otherVersionOf(file, req.name, req.sha);
    if (!version) continue;
    const path = join(req.lockDir, file);
    let holder: HolderLine | null = null;
    try {
      const found = holderOf(path, lstatSync(path, { bigint: true }), null);
      if (found.state === "running") holder = found.line;
    } catch {
      // gone meanwhile: nothing to end
    }
    removeIfPresent(path);
    removeIfPresent(holderPath(path));
    obsolete.push({ version, endedPid: holder?.pid ?? null });
    if (holder) toEnd.push(holder);
  }
  return { obsolete, toEnd };
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
          // The lock first: a kill between the two leaves a record without a lock, which the next pass sweeps.
          removeIfPresent(path);
          removeIfPresent(holderPath(path));
        });
      } finally {
        closeSync(fd);
      }
    },
  };
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

// ---------------------------------------------------------------------------------------------
// Leftovers and read-only views.

/**
 * Removes what killed runs left in the lock directory: locks whose recorded holder provably no
 * longer exists (with their records), records whose lock is gone, and temp files of locks and
 * records. A lock without such proof (the old script's, a live run's) is left alone. Returns the
 * names removed.
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
      const lockPath = join(lockDir, lockFile);
      let fd: number;
      try {
        fd = openSync(lockPath, constants.O_RDONLY | constants.O_NOFOLLOW);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") remove(file);
        continue;
      }
      try {
        const found = examine(fd, lockPath, now);
        const verdict = judgeLock({ ageSec: found.ageSec, timeoutSec: Infinity, flockHeld: found.flockHeld, holder: found.state });
        if (verdict.kind === "take-over") {
          remove(lockFile);
          remove(file);
        }
      } finally {
        closeSync(fd);
      }
    }
    return removed;
  });
}

/** The time a lock file says it was taken, or null when it is unreadable or gone. */
function writtenTime(path: string): number | null {
  try {
    return parseLockTime(readFileSync(path, "utf8"));
  } catch {
    return null;
  }
}

/** The lock's time: what it says, else its mtime (as examine does); null when it is gone. */
function lockTime(path: string): number | null {
  try {
    return writtenTime(path) ?? Math.floor(statSync(path).mtimeMs / 1000);
  } catch {
    return null;
  }
}

function lockAge(path: string, now: number): number {
  return Math.max(0, now - (lockTime(path) ?? now));
}

/**
 * Read-only, for --dry-run: what a pass would decide about the lock of name at sha (null: there is
 * none), by the same judgeLock. It does not touch the lock's flock (a dry run must not make a real
 * pass see it held), so a holder is judged by its record alone.
 */
export function previewLock(lockDir: string, name: string, sha: Sha256, timeoutSec: number): LockVerdict | null {
  const path = join(lockDir, lockFileName(name, sha));
  let st: BigIntStats;
  try {
    st = lstatSync(path, { bigint: true });
  } catch {
    return null;
  }
  const { state } = holderOf(path, st, writtenTime(path));
  return judgeLock({ ageSec: lockAge(path, Math.floor(Date.now() / 1000)), timeoutSec, flockHeld: state === "running", holder: state });
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
    const path = join(lockDir, file);
    let holder: string;
    try {
      holder = describeHolder(holderOf(path, lstatSync(path, { bigint: true }), writtenTime(path)));
    } catch {
      return []; // released while we looked
    }
    return [{ version, ageSec: lockAge(path, now), holder }];
  });
}
