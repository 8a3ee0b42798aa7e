// Owns the libc calls Bun has no binding for: flock(2), sync_file_range(2) and fcntl(2)'s file flags, through bun:ffi.
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
