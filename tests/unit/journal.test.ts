// Unit tests of the update journal's decisions (SPEC §12): what a pass does with an attempt it finds, when a report is due, what a record on disk must be; and the holds a rollback or a failure leaves.
import { describe, expect, test } from "bun:test";
import type { Sha256 } from "../../lib/hash.ts";
import { addHold, holdAfterRollback, holdsAfterFailure } from "../../lib/hold.ts";
import { judgeAttempt, MAX_UNCOMMITTED_DEATHS, parseAttempt, parsePendingReport, reportDue, type AttemptRecord } from "../../lib/journal.ts";
import type { Hold } from "../../lib/manifest.ts";

const OLD = "a".repeat(64) as Sha256;
const NEW = "b".repeat(64) as Sha256;
const OTHER = "c".repeat(64) as Sha256;
const FOURTH = "d".repeat(64) as Sha256;
const now = new Date("2026-11-25T10:00:00Z");
const later = (sec: number) => new Date(now.getTime() + sec * 1000).toISOString();

const record = (over: Partial<AttemptRecord> = {}): AttemptRecord => ({
  target: NEW, targetName: "v2", replaced: OLD, source: "download", startedAt: "2026-11-25T09:59:00.000Z", deaths: 0, ...over,
});

describe("judgeAttempt", () => {
  test("the manifest names the target already: only the record was left, nothing is counted", () => {
    expect(judgeAttempt(record(), NEW, NEW)).toEqual({ kind: "committed" });
    expect(judgeAttempt(record({ deaths: 1 }), NEW, NEW)).toEqual({ kind: "committed" });
  });

  test("the disk still holds what it replaced: killed before its swap, dropped and started over", () => {
    expect(judgeAttempt(record(), OLD, OLD)).toEqual({ kind: "not-swapped" });
    expect(judgeAttempt(record({ replaced: null }), null, null)).toEqual({ kind: "not-swapped" });
  });

  test("the disk holds neither version: someone else changed the binary", () => {
    expect(judgeAttempt(record(), OTHER, OLD)).toEqual({ kind: "foreign" });
    expect(judgeAttempt(record(), null, OLD)).toEqual({ kind: "foreign" });
  });

  test("swapped and not recorded: the first death is resumed, counted", () => {
    expect(judgeAttempt(record(), NEW, OLD)).toEqual({ kind: "finish", deaths: 1 });
    // A first install (nothing replaced, nothing recorded) counts the same way.
    expect(judgeAttempt(record({ replaced: null }), NEW, null)).toEqual({ kind: "finish", deaths: 1 });
  });

  test("the second uncommitted death of the same target gives up: rolled back and held", () => {
    expect(MAX_UNCOMMITTED_DEATHS).toBe(2);
    expect(judgeAttempt(record({ deaths: 1 }), NEW, OLD)).toEqual({ kind: "give-up", deaths: 2 });
    // A record counted past the limit (written by a pass that died giving up) still gives up.
    expect(judgeAttempt(record({ deaths: 5 }), NEW, OLD)).toEqual({ kind: "give-up", deaths: 6 });
  });

  test("a give-up that died after putting the backup back is finished, not forgotten: the target is still held", () => {
    expect(judgeAttempt(record({ deaths: 2 }), OLD, OLD)).toEqual({ kind: "give-up", deaths: 2 });
    expect(judgeAttempt(record({ deaths: 1 }), OLD, OLD)).toEqual({ kind: "not-swapped" });
  });

  test("a rollback's attempt (source backup) is judged the same way", () => {
    const back = record({ target: OLD, replaced: NEW, source: "backup" });
    expect(judgeAttempt(back, OLD, NEW)).toEqual({ kind: "finish", deaths: 1 });
    expect(judgeAttempt(back, NEW, NEW)).toEqual({ kind: "not-swapped" });
  });
});

describe("reportDue", () => {
  const pending = { sha256: NEW, version: "v2" };

  test("nothing pending: nothing to do", () => {
    expect(reportDue(null, NEW, false)).toBe("wait");
  });

  test("pending for the version the manifest names, no attempt open: sent", () => {
    expect(reportDue(pending, NEW, false)).toBe("send");
  });

  test("an attempt is open: the report waits for its end, whatever the manifest says", () => {
    expect(reportDue(pending, NEW, true)).toBe("wait");
    expect(reportDue(pending, OLD, true)).toBe("wait");
  });

  test("the manifest names another version (rolled back since, or never recorded): the stale report is dropped", () => {
    expect(reportDue(pending, OLD, false)).toBe("drop");
    expect(reportDue(pending, null, false)).toBe("drop");
  });
});

describe("parseAttempt", () => {
  const valid = { target: NEW, targetName: "v2", replaced: OLD, source: "download", startedAt: "2026-11-25T09:59:00.000Z", deaths: 1 };

  test("a valid record is read into a typed value, hash case normalised, an inconsistency kept", () => {
    expect(parseAttempt({ ...valid, target: NEW.toUpperCase(), extra: true })).toEqual(record({ deaths: 1 }));
    expect(parseAttempt({ ...valid, replaced: null, source: "backup", inconsistent: "install: EIO" })).toEqual(
      record({ deaths: 1, replaced: null, source: "backup", inconsistent: "install: EIO" }),
    );
  });

  test("a missing or odd targetName is read as empty, a long one is cut", () => {
    const { targetName: _omitted, ...without } = valid;
    expect(parseAttempt(without)?.targetName).toBe("");
    expect(parseAttempt({ ...valid, targetName: 7 })?.targetName).toBe("");
    expect(parseAttempt({ ...valid, targetName: "x".repeat(1000) })?.targetName).toHaveLength(200);
  });

  test.each([
    ["null", null],
    ["an array", [valid]],
    ["a string", "attempt"],
    ["no target", { ...valid, target: undefined }],
    ["a target that is not a hash", { ...valid, target: "v2" }],
    ["a replaced that is not a hash", { ...valid, replaced: "v1" }],
    ["replaced missing (neither a hash nor null)", { ...valid, replaced: undefined }],
    ["an unknown source", { ...valid, source: "upload" }],
    ["startedAt not a string", { ...valid, startedAt: 5 }],
    ["deaths negative", { ...valid, deaths: -1 }],
    ["deaths not an integer", { ...valid, deaths: 1.5 }],
    ["deaths a string", { ...valid, deaths: "1" }],
  ])("%s is no record", (_, value) => {
    expect(parseAttempt(value)).toBeNull();
  });
});

describe("parsePendingReport", () => {
  test("a valid report is read; its version name is optional", () => {
    expect(parsePendingReport({ sha256: NEW.toUpperCase(), version: "v2" })).toEqual({ sha256: NEW, version: "v2" });
    expect(parsePendingReport({ sha256: NEW })).toEqual({ sha256: NEW, version: "" });
  });

  test.each([
    ["null", null],
    ["an array", [{ sha256: NEW }]],
    ["no sha256", { version: "v2" }],
    ["a sha256 that is not a hash", { sha256: "v2", version: "v2" }],
    ["a number", 42],
  ])("%s is no report", (_, value) => {
    expect(parsePendingReport(value)).toBeNull();
  });
});

describe("addHold: the holds a rollback leaves", () => {
  const failed: Hold = { version: OTHER, failures: 1, until: later(600) };

  test("the rolled-back-from version becomes the hold; a broken target's active hold is kept with its failure count", () => {
    const rolledBack = holdAfterRollback(NEW);
    expect(addHold({ hold: failed }, rolledBack, now)).toEqual({ hold: rolledBack, otherHolds: [failed] });
  });

  test("holds kept earlier stay, the newest first", () => {
    const older: Hold = { version: FOURTH, failures: 3, until: null };
    expect(addHold({ hold: failed, otherHolds: [older] }, holdAfterRollback(NEW), now)).toEqual({ hold: holdAfterRollback(NEW), otherHolds: [failed, older] });
  });

  test("a hold on the same version is replaced, not kept twice", () => {
    const same: Hold = { version: NEW, failures: 2, until: later(600) };
    expect(addHold({ hold: same }, holdAfterRollback(NEW), now)).toEqual({ hold: holdAfterRollback(NEW), otherHolds: null });
  });

  test("an expired hold is dropped", () => {
    const expired: Hold = { version: OTHER, failures: 4, until: later(-1) };
    expect(addHold({ hold: expired }, holdAfterRollback(NEW), now)).toEqual({ hold: holdAfterRollback(NEW), otherHolds: null });
  });

  test("bounded: at most four holds in all, the oldest dropped", () => {
    const many: Hold[] = [1, 2, 3, 4, 5].map((n) => ({ version: String(n).repeat(64) as Sha256, failures: n, until: null }));
    const result = addHold({ hold: many[0]!, otherHolds: many.slice(1) }, holdAfterRollback(NEW), now);
    expect(result.hold).toEqual(holdAfterRollback(NEW));
    expect(result.otherHolds).toEqual(many.slice(0, 3));
  });
});

describe("holdsAfterFailure: the holds a failed update leaves", () => {
  test("a first failure holds the target for the backoff; no other holds", () => {
    expect(holdsAfterFailure({ hold: null }, NEW, now, 600)).toEqual({ hold: { version: NEW, failures: 1, until: later(600) }, otherHolds: null });
  });

  test("the count carries on from a hold of the same target kept in otherHolds, which leaves it", () => {
    const kept: Hold = { version: NEW, failures: 2, until: later(-5) };
    const rollback = holdAfterRollback(OLD);
    expect(holdsAfterFailure({ hold: rollback, otherHolds: [kept] }, NEW, now, 600)).toEqual({ hold: { version: NEW, failures: 3, until: later(2400) }, otherHolds: null });
  });

  test("the holds a rollback kept on other versions stay; the manifest's hold is replaced by the new one", () => {
    const kept: Hold = { version: OTHER, failures: 1, until: later(600) };
    const result = holdsAfterFailure({ hold: holdAfterRollback(OLD), otherHolds: [kept] }, NEW, now, 600);
    expect(result).toEqual({ hold: { version: NEW, failures: 1, until: later(600) }, otherHolds: [kept] });
  });

  test("an expired hold in otherHolds is dropped, as addHold drops it", () => {
    const expired: Hold = { version: OTHER, failures: 1, until: later(-5) };
    expect(holdsAfterFailure({ hold: null, otherHolds: [expired] }, NEW, now, 600)).toEqual({ hold: { version: NEW, failures: 1, until: later(600) }, otherHolds: null });
  });
});
