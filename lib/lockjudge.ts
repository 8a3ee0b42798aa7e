// Owns the lock judgement: the names of version lock files, what a lock file says, and whether a lock found is busy, stale or its holder's to end — pure functions only.
import type { HolderState } from "./holder.ts";
import { parseSha256, type Sha256 } from "./hash.ts";

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
