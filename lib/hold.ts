// Owns the retry policy: when a target that failed on this host may be tried again, and which holds an entry keeps (pure functions).
import type { Sha256 } from "./hash.ts";
import type { Hold } from "./manifest.ts";

const MAX_BACKOFF_SEC = 24 * 60 * 60;
/** Holds kept per binary: the newest decision and a few earlier ones on other versions (bounded, so the manifest stays small). */
const MAX_HOLDS = 4;

/** The hold that keeps target from being tried now, or null. A hold on another target never applies. */
export function activeHold(hold: Hold | null, target: Sha256, now: Date): Hold | null {
  if (!hold || hold.version !== target) return null;
  return hold.until === null || now.getTime() < Date.parse(hold.until) ? hold : null;
}

/** Every hold of an entry, the newest first: the manifest's `hold`, then the `otherHolds` a rollback kept. */
export function holdsOf<H extends Hold>(entry: { hold: H | null; otherHolds?: H[] }): H[] {
  const others = entry.otherHolds ?? [];
  return entry.hold ? [entry.hold, ...others] : others;
}

/** The active hold on target among all of an entry's holds, or null. */
export function activeHoldOf(entry: { hold: Hold | null; otherHolds?: Hold[] }, target: Sha256, now: Date): Hold | null {
  for (const hold of holdsOf(entry)) {
    const active = activeHold(hold, target, now);
    if (active) return active;
  }
  return null;
}

/** The hold after target failed: the backoff doubles with each consecutive failure of the same target. */
export function holdAfterFailure(previous: Hold | null, target: Sha256, now: Date, backoffSec: number): Hold {
  const failures = previous?.version === target ? previous.failures + 1 : 1;
  const delaySec = Math.min(backoffSec * 2 ** Math.min(failures - 1, 30), MAX_BACKOFF_SEC);
  return { version: target, failures, until: new Date(now.getTime() + delaySec * 1000).toISOString() };
}

/** The hold `rollback NAME` leaves: the version rolled back from, until the API names another. */
export function holdAfterRollback(rolledBackFrom: Sha256): Hold {
  return { version: rolledBackFrom, failures: 0, until: null };
}

/**
 * The entry's holds once `added` is decided: it becomes the manifest's `hold`; every other hold still
 * in force is kept in `otherHolds` (a rollback must not lift the hold on a broken target it did not
 * decide about); a hold on the same version is replaced, expired ones are dropped.
 */
export function addHold(entry: { hold: Hold | null; otherHolds?: Hold[] }, added: Hold, now: Date): { hold: Hold; otherHolds: Hold[] | null } {
  const kept = holdsOf(entry)
    .filter((h) => h.version !== added.version && activeHold(h, h.version, now) !== null)
    .slice(0, MAX_HOLDS - 1);
  return { hold: added, otherHolds: kept.length > 0 ? kept : null };
}

/**
 * The entry's holds once target failed: its hold (counting on from an earlier hold of the same
 * target) replaces the manifest's `hold`, as a new target is judged afresh; the holds a rollback
 * kept stay, as addHold keeps them (expired ones dropped).
 */
export function holdsAfterFailure(entry: { hold: Hold | null; otherHolds?: Hold[] }, target: Sha256, now: Date, backoffSec: number): { hold: Hold; otherHolds: Hold[] | null } {
  const previous = holdsOf(entry).find((h) => h.version === target) ?? null;
  return addHold({ hold: null, otherHolds: entry.otherHolds }, holdAfterFailure(previous, target, now, backoffSec), now);
}

export function describeHold(hold: Hold): string {
  return hold.until === null ? "held until the API names another version" : `held until ${hold.until}`;
}
