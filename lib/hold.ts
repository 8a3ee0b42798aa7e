// Owns the retry policy: when a target that failed on this host may be tried again (pure functions).
import type { Sha256 } from "./hash.ts";
import type { Hold } from "./manifest.ts";

const MAX_BACKOFF_SEC = 24 * 60 * 60;

/** The hold that keeps target from being tried now, or null. A hold on another target never applies. */
export function activeHold(hold: Hold | null, target: Sha256, now: Date): Hold | null {
  if (!hold || hold.version !== target) return null;
  return hold.until === null || now.getTime() < Date.parse(hold.until) ? hold : null;
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

export function describeHold(hold: Hold): string {
  return hold.until === null ? "held until the API names another version" : `held until ${hold.until}`;
}
