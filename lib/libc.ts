// Owns the libc calls Bun has no binding for: flock(2), sync_file_range(2), fcntl(2)'s file flags and renameat2(2)'s exchange, through bun:ffi.
import { dlopen, FFIType } from "bun:ffi";
import { constants } from "node:fs";

const libc = dlopen("libc.so.6", {
  flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  sync_file_range: { args: [FFIType.i32, FFIType.i64, FFIType.i64, FFIType.u32], returns: FFIType.i32 },
  fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
});
const LOCK_EX = 2;
const LOCK_NB = 4;
const SYNC_FILE_RANGE_WRITE = 2;
const F_GETFL = 3;
const F_SETFL = 4;

/**
 * Takes the exclusive flock of fd without waiting; false when another open file holds it. flock is
 * the kernel's record of who holds a lock: it vanishes with the holder, whatever killed it.
 */
export function tryFlock(fd: number): boolean {
  return libc.symbols.flock(fd, LOCK_EX | LOCK_NB) === 0;
}

/**
 * Starts writing a range of fd to disk and returns at once, so that the fsync before an install
 * finds a large file mostly on disk instead of stalling on all of it (about half a second per GiB
 * here). Best effort: whatever it does not write, the fsync does.
 */
export function startWriteback(fd: number, offset: number, length: number): void {
  libc.symbols.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE);
}

/**
 * Turns O_DIRECT on or off for the open file fd; false when the filesystem refuses it (ramfs,
 * some FUSE filesystems), and the file is then written through the page cache as before.
 */
export function setDirectIo(fd: number, on: boolean): boolean {
  const flags = libc.symbols.fcntl(fd, F_GETFL, 0);
  if (flags < 0) return false;
  const wanted = on ? flags | constants.O_DIRECT : flags & ~constants.O_DIRECT;
  return libc.symbols.fcntl(fd, F_SETFL, wanted) === 0;
}

const AT_FDCWD = -100;
const UTF8 = new TextEncoder();
const cString = (text: string): Uint8Array => UTF8.encode(`${text}\0`);
const RENAME_EXCHANGE = 2;
/** renameat2 is opened apart, at its first use: glibc has it since 2.28, and an older one must only lose the exchange, not every call above. */
let renameat2: ((olddirfd: number, oldpath: Uint8Array, newdirfd: number, newpath: Uint8Array, flags: number) => number) | null | undefined;

/**
 * Swaps what the names a and b point at, in one atomic step (both must exist); false when the
 * kernel, the filesystem or libc cannot (then nothing has changed).
 */
export function exchangeNames(a: string, b: string): boolean {
  if (renameat2 === undefined) {
    try {
      const lib = dlopen("libc.so.6", { renameat2: { args: [FFIType.i32, FFIType.cstring, FFIType.i32, FFIType.cstring, FFIType.u32], returns: FFIType.i32 } });
      renameat2 = lib.symbols.renameat2;
    } catch {
      renameat2 = null;
    }
  }
  return renameat2 !== null && renameat2(AT_FDCWD, cString(a), AT_FDCWD, cString(b), RENAME_EXCHANGE) === 0;
}
