// Owns the file primitives every writer shares: exclusive creation, the atomic replace, and leftover sweeping.
import {
  closeSync, constants, fchmodSync, fchownSync, fstatSync, fsyncSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync,
  statSync, unlinkSync, writeSync, type Dirent, type Stats,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import { exchangeNames } from "./libc.ts";

export interface FileMeta {
  mode: number;
  uid: number;
  gid: number;
}

/** Creates path for writing, failing if anything (even a dangling symlink) is already there. */
export function createExclusive(path: string, mode: number): number {
  return openSync(path, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY | constants.O_NOFOLLOW, mode);
}

/**
 * Creates this process's temp file (tempPathFor): only a dead process of the same pid can have left
 * one there, so that one is removed. Removed only when found: the usual case costs one open.
 */
export function createTemp(temp: string, mode: number): number {
  try {
    return createExclusive(temp, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    removeIfPresent(temp);
    return createExclusive(temp, mode);
  }
}

/**
 * The text of a small file bin-proxy keeps (a record, a state): never through a symlink (ELOOP),
 * never from anything but a regular file (a FIFO planted there would block the pass; O_NONBLOCK
 * keeps even the open from waiting), never more than maxBytes.
 */
export function readTextNoFollow(path: string, maxBytes = 16 << 20): string {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new Error(`${path} is not a regular file`);
    if (st.size > maxBytes) throw new Error(`${path} is larger than ${maxBytes} bytes`);
    return readFileSync(fd, "utf8");
  } finally {
    closeSync(fd);
  }
}

/** The same, or null when there is no file at path. */
export function readTextIfPresent(path: string, maxBytes?: number): string | null {
  try {
    return readTextNoFollow(path, maxBytes);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
}

const UTF8 = new TextEncoder();
/** Text as bytes: TextEncoder's first use is cheap where Buffer.from's costs a pass a tenth of a millisecond. */
export const utf8 = (text: string): Uint8Array => UTF8.encode(text);

/**
 * Creates dir (0700, missing parents too) unless it exists, and returns its lstat. A symlink or a
 * non-directory there is refused: what bin-proxy writes in dir must not land anywhere else.
 */
export function ensureDirectory(dir: string): Stats {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    // EEXIST: something that is not a directory is there; lstat below says what.
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw new Error(`cannot create ${dir}: ${(err as Error).message}`);
  }
  const st = lstatSync(dir);
  if (st.isSymbolicLink()) throw new Error(`${dir} is a symlink; refusing to use it`);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
  return st;
}

export function writeAll(fd: number, data: Uint8Array): void {
  for (let off = 0; off < data.length; ) off += writeSync(fd, data, off, data.length - off);
}

/**
 * Appends text to the file at path, creating it with mode if it is missing: never through a
 * symlink (ELOOP), and never waiting on a FIFO planted there (O_NONBLOCK: ENXIO without a reader).
 */
export function appendText(path: string, text: string, mode: number): void {
  const fd = openSync(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK, mode);
  try {
    writeAll(fd, utf8(text));
  } finally {
    closeSync(fd);
  }
}

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * The one way a file is replaced. Mode and owner are set and (durable) the data made durable before
 * the rename, and the directory entry after it, so that whatever instant the machine dies, dest is
 * either the old file or the complete new one. Not durable is for a file a later run writes again
 * whole (the metrics file): nothing is synced, and replacing the name atomically (replaceUnsynced)
 * alone keeps readers from ever seeing it torn. It takes fd: closed whatever happens, so no caller
 * ever closes that number again (by then it may be another file's, or a socket's).
 */
export function replaceAtomically(fd: number, tempPath: string, dest: string, meta: FileMeta, durable = true): void {
  try {
    fchownSync(fd, meta.uid, meta.gid);
    fchmodSync(fd, meta.mode);
    if (durable) fsyncSync(fd);
    // rename goes by name: a run whose temp file was removed and made again by another (it was ended,
    // or the old script took its lock) must not install that other run's unfinished file.
    const ours = fstatSync(fd);
    const named = lstatSync(tempPath);
    if (ours.ino !== named.ino || ours.dev !== named.dev) throw new Error(`${tempPath} is no longer the file this run wrote; not installing it`);
  } finally {
    closeSync(fd);
  }
  if (durable) {
    renameSync(tempPath, dest);
    fsyncDir(dirname(dest));
  } else {
    replaceUnsynced(tempPath, dest);
  }
}

/**
 * Puts tempPath's file at dest, as a rename would, but without the rename over dest: on ext4 such a
 * rename writes the new file's blocks out before it returns (auto_da_alloc, ~0.5 ms here), a cost
 * that only a file replaced every minute and never synced (the metrics file) has to care about.
 * Exchanging the two names, then removing the old file from the temp name, is as atomic for a
 * reader (dest names the old file or the new one at every instant) and costs a tenth of that.
 * Anything but a regular file at dest, or a filesystem without the exchange, gets the rename.
 */
function replaceUnsynced(tempPath: string, dest: string): void {
  if (lstatSync(dest, { throwIfNoEntry: false })?.isFile() && exchangeNames(tempPath, dest)) {
    // What came to tempPath is removed only if it is the old file: anything put at dest since the
    // lstat (a directory) is exchanged back, and the rename below refuses it, moving nothing.
    if (lstatSync(tempPath).isFile()) {
      removeIfPresent(tempPath);
      return;
    }
    exchangeNames(tempPath, dest);
  }
  renameSync(tempPath, dest);
}

/** The mode and owner of path, or the fallback when there is no such file. */
export function metaOf(path: string, fallback: FileMeta): FileMeta {
  try {
    const st = statSync(path);
    return { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return fallback;
    throw err;
  }
}

/** The temp file a process uses to rewrite dest: beside it (same filesystem), hidden, named by pid. */
export function tempPathFor(dest: string, pid = process.pid): string {
  return join(dirname(dest), `.${basename(dest)}.${pid}.tmp`);
}

/**
 * Writes a small file atomically, keeping the mode and owner of the file it replaces (fallback for a
 * new one). "unsynced" is for a file that a later run writes again whole (the metrics file): it gets
 * fallback's mode and this process's owner whatever the old file had (node_exporter must read it),
 * and no fsync (see replaceAtomically).
 */
export function writeFileAtomic(dest: string, data: string | Uint8Array, fallback: Partial<FileMeta> = {}, kind: "durable" | "unsynced" = "durable"): void {
  const mine = { mode: fallback.mode ?? 0o644, uid: fallback.uid ?? process.getuid!(), gid: fallback.gid ?? process.getgid!() };
  const meta = kind === "unsynced" ? mine : metaOf(dest, mine);
  const temp = tempPathFor(dest);
  const fd = createTemp(temp, 0o600);
  try {
    try {
      writeAll(fd, typeof data === "string" ? utf8(data) : data);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    replaceAtomically(fd, temp, dest, meta, kind === "durable");
  } catch (err) {
    removeIfPresent(temp);
    throw err;
  }
}

export function removeIfPresent(path: string): boolean {
  try {
    unlinkSync(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Whether name is a temp file (`.{file}.{pid}.tmp`, see tempPathFor) of a process that is gone. */
function isOrphanTemp(name: string): boolean {
  const pid = Number(/^\..+\.(\d+)\.tmp$/.exec(name)?.[1]);
  return Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && !pidAlive(pid);
}

/** Removes a leftover; one that cannot be (a directory under that name) is left, never stopping the write the sweep comes before. */
function removedIfPossible(path: string): boolean {
  try {
    return removeIfPresent(path);
  } catch {
    return false;
  }
}

/** Removes the temp files of each dest left by processes that died mid-write (kill -9, power loss); one read per directory. */
export function sweepOrphanTemps(...dests: string[]): string[] {
  const removed: string[] = [];
  for (const dir of new Set(dests.map((dest) => dirname(dest)))) {
    const prefixes = dests.filter((dest) => dirname(dest) === dir).map((dest) => `.${basename(dest)}.`);
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    for (const name of names) {
      const ofDest = prefixes.some((prefix) => name.startsWith(prefix) && /^\d+\.tmp$/.test(name.slice(prefix.length)));
      if (ofDest && isOrphanTemp(name) && removedIfPossible(join(dir, name))) removed.push(name);
    }
  }
  return removed;
}

/** The same for every temp file anywhere under dir, a directory only bin-proxy writes in (symlinks are not followed). */
export function sweepOrphanTempsUnder(dir: string): string[] {
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries.flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return sweepOrphanTempsUnder(path).map((name) => join(e.name, name));
    return isOrphanTemp(e.name) && removedIfPossible(path) ? [e.name] : [];
  });
}
