// Owns putting a binary in place: backups under the state dir, and the atomic swap (and swap back).
import { closeSync, constants, copyFileSync, fstatSync, linkSync, openSync, readdirSync } from "node:fs";
import { join } from "node:path";
import type { Downloaded } from "./download.ts";
import { ensureDirectory, metaOf, removeIfPresent, replaceAtomically, tempPathFor, type FileMeta } from "./fsx.ts";
import { hashFile, short, type Sha256 } from "./hash.ts";

/** A binary bin-proxy installs where none was before: root's, executable by all. */
export const NEW_BINARY_META: FileMeta = { mode: 0o755, uid: 0, gid: 0 };

export function backupPath(stateDir: string, name: string, sha: Sha256): string {
  return join(stateDir, "backups", name, sha);
}

/**
 * Opens a copy of src at temp, ready for replaceAtomically: a hard link where src and temp share a
 * filesystem (instant, no extra space; safe because installed files are only ever replaced by
 * rename, never written in place), else a full copy.
 */
function stage(src: string, temp: string): number {
  removeIfPresent(temp);
  try {
    linkSync(src, temp);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EXDEV") throw err;
    copyFileSync(src, temp, constants.COPYFILE_EXCL);
  }
  return openSync(temp, constants.O_RDONLY | constants.O_NOFOLLOW);
}

/** Copies src to dest atomically, with src's mode and owner. */
function copyAtomically(src: string, dest: string): void {
  const temp = tempPathFor(dest);
  const fd = stage(src, temp);
  try {
    replaceAtomically(fd, temp, dest, metaOf(src, NEW_BINARY_META));
  } catch (err) {
    removeIfPresent(temp);
    throw err;
  }
}

/** Keeps the current binary (of hash sha) under the state dir, so it can be put back. */
export function keepBackup(binPath: string, stateDir: string, name: string, sha: Sha256): string {
  const dest = backupPath(stateDir, name, sha);
  // Level by level: mkdir would follow a symlink planted at backups/ and put the backup elsewhere.
  ensureDirectory(join(stateDir, "backups"));
  ensureDirectory(join(stateDir, "backups", name));
  copyAtomically(binPath, dest);
  return dest;
}

/** Swaps a verified download in over binPath, with the current binary's mode and owner. */
export function installDownload(download: Downloaded, binPath: string): void {
  const fd = download.fd;
  download.fd = -1; // replaceAtomically closes it, whatever happens
  replaceAtomically(fd, download.tempPath, binPath, metaOf(binPath, NEW_BINARY_META));
}

/**
 * Stages the backup of version expected at temp, beside the binary, ready for installDownload
 * (`rollback NAME`). The staged file itself is hashed, so what is installed is what was verified;
 * a backup that does not hash to its name is refused before anything changes.
 */
export function stageBackup(backup: string, temp: string, expected: Sha256): Downloaded {
  const fd = stage(backup, temp);
  try {
    const actual = hashFile(temp);
    if (actual !== expected) throw new Error(`backup ${backup} is damaged: its SHA-256 is ${short(actual)}, not ${short(expected)}; refusing to install it`);
    return { fd, tempPath: temp, bytes: fstatSync(fd).size };
  } catch (err) {
    closeSync(fd);
    removeIfPresent(temp);
    throw err;
  }
}

/** Puts a backup back over binPath, the same atomic way; the backup itself stays. */
export function restoreBackup(backup: string, binPath: string): void {
  copyAtomically(backup, binPath);
}

/** Removes a binary's backups except those of the versions in keep (one previous version is kept). */
export function pruneBackups(stateDir: string, name: string, keep: (Sha256 | null)[]): void {
  const dir = join(stateDir, "backups", name);
  let files: string[];
  try {
    files = readdirSync(dir);
  } catch {
    return;
  }
  for (const file of files) if (!keep.includes(file as Sha256)) removeIfPresent(join(dir, file));
}
