// Owns flock-based mutual exclusion: short exclusive locks on a file, and the lock directory's own flock under which version locks change.
import { closeSync, constants, openSync } from "node:fs";
import { tryFlock } from "./libc.ts";

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
export function inLockDir<T>(dir: string, fn: () => T): T {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  return holdingFlock(fd, `the lock directory ${dir}`, fn, 10_000);
}
