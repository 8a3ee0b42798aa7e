// Unit tests of the pure decisions: manifest validation, update plan, holds, API answers, lock names, argv, log lines.
import { describe, expect, test } from "bun:test";
import { parseKeepaliveStatus, parseTarget } from "../../lib/api.ts";
import { parseArgs, UsageError } from "../../lib/cli.ts";
import { parseSha256, type Sha256 } from "../../lib/hash.ts";
import { activeHold, holdAfterFailure, holdAfterRollback } from "../../lib/hold.ts";
import { otherVersionOf, parseLockTime } from "../../lib/lockjudge.ts";
import { formatLine, redact } from "../../lib/log.ts";
import { ManifestError, parseManifest, type Entry } from "../../lib/manifest.ts";
import { parseOsRelease } from "../../lib/nodeinfo.ts";
import { parseState } from "../../lib/service.ts";
import { plan, rolledBack } from "../../lib/update.ts";

const A = "a".repeat(64) as Sha256;
const B = "b".repeat(64) as Sha256;
const C = "c".repeat(64) as Sha256;
const entry = (over: Partial<Entry> = {}): Entry => ({ binaryName: "manager", serviceName: "manager", version: A, previousVersion: null, port: 0, hold: null, ...over });
const now = new Date("2026-11-25T10:00:00Z");

describe("parseManifest", () => {
  test("validates entries into typed values, normalising hash case", () => {
    const m = parseManifest(JSON.stringify({ binaries: [{ serviceName: "s", binaryName: "b", version: A.toUpperCase(), previousVersion: "", port: 80, extra: 1 }] }));
    expect(m.entries).toEqual([{ binaryName: "b", serviceName: "s", version: A, previousVersion: null, port: 80, hold: null }]);
    expect(m.rejected).toEqual([]);
  });

  test.each([
    ["not JSON", "{", /not valid JSON/],
    ["an array", "[]", /JSON object/],
    ["missing binaries", "{}", /binaries/],
    ["binaries not an array", '{"binaries":{}}', /binaries/],
    ["an entry not an object", '{"binaries":[1]}', /binaries\[0\]/],
    ["binaryName of the wrong type", '{"binaries":[{"binaryName":5}]}', /binaryName must be a string/],
    ["port of the wrong type", '{"binaries":[{"binaryName":"a","port":"80"}]}', /port/],
    ["port out of range", '{"binaries":[{"binaryName":"a","port":70000}]}', /port/],
    ["version not a hash", '{"binaries":[{"binaryName":"a","version":"v1.2"}]}', /version/],
    ["a duplicate binaryName", '{"binaries":[{"binaryName":"a"},{"binaryName":"a"}]}', /twice/],
    ["nodeInfo not an object", '{"binaries":[],"nodeInfo":"x"}', /nodeInfo/],
    ["a malformed hold", `{"binaries":[{"binaryName":"a","hold":{"version":"x"}}]}`, /hold/],
    ["a hold whose failures is no count", `{"binaries":[{"binaryName":"a","hold":{"version":"${"a".repeat(64)}","failures":-1,"until":null}}]}`, /hold must be/],
  ])("%s is a ManifestError", (_, text, message) => {
    expect(() => parseManifest(text)).toThrow(ManifestError);
    expect(() => parseManifest(text)).toThrow(message);
  });

  test.each(["../evil", "a/b", ".", "..", "", "x y", "n\u00e9", "a".repeat(151)])("binaryName %p rejects only its entry", (bad) => {
    const m = parseManifest(JSON.stringify({ binaries: [{ binaryName: bad }, { binaryName: "good" }] }));
    expect(m.entries.map((e) => e.binaryName)).toEqual(["good"]);
    expect(m.rejected).toHaveLength(1);
  });

  test("a serviceName that is not a plain name rejects its entry", () => {
    const m = parseManifest(JSON.stringify({ binaries: [{ binaryName: "a", serviceName: "x;reboot" }] }));
    expect(m.entries).toEqual([]);
    expect(m.rejected[0]!.reason).toMatch(/plain name/);
  });
});

describe("plan", () => {
  test("same hash as the manifest: up to date", () => expect(plan(entry(), A, A, now)).toEqual({ kind: "up-to-date" }));
  test("different target: update", () => expect(plan(entry(), A, B, now)).toEqual({ kind: "update" }));
  test("no binary yet: update (install)", () => expect(plan(entry({ version: null }), null, B, now)).toEqual({ kind: "update" }));
  test("target already on disk, manifest empty: adopt", () => expect(plan(entry({ version: null }), B, B, now)).toEqual({ kind: "adopt" }));
  test("target on disk, manifest names the old one: finish the interrupted update", () => expect(plan(entry(), B, B, now)).toEqual({ kind: "finish" }));
  test("target held: held", () => {
    const hold = { version: B, failures: 1, until: "2026-11-25T10:10:00.000Z" };
    expect(plan(entry({ hold }), A, B, now)).toEqual({ kind: "held", hold });
  });
  test("a hold on another target does not apply", () => {
    expect(plan(entry({ hold: { version: C, failures: 3, until: null } }), A, B, now)).toEqual({ kind: "update" });
  });
});

test("rolledBack: an undo that restored the old binary, or a give-up after the second death; not a failure with nothing to restore, nor an inconsistent one", () => {
  const failed = (step: string, undo: { kind: "restored" } | { kind: "nothing-to-restore" } | { kind: "inconsistent"; why: string }) => ({ kind: "failed" as const, step, error: "x", undo, downloadedBytes: 0 });
  expect(rolledBack(failed("restart", { kind: "restored" }))).toBe(true);
  expect(rolledBack(failed("give-up", { kind: "nothing-to-restore" }))).toBe(true);
  expect(rolledBack(failed("download", { kind: "nothing-to-restore" }))).toBe(false);
  expect(rolledBack(failed("restart", { kind: "inconsistent", why: "no backup" }))).toBe(false);
  expect(rolledBack({ kind: "updated", downloadedBytes: 5 })).toBe(false);
});

describe("holds", () => {
  test("backoff doubles per consecutive failure of the same target, capped at 24 h", () => {
    const first = holdAfterFailure(null, B, now, 600);
    expect(first).toEqual({ version: B, failures: 1, until: "2026-11-25T10:10:00.000Z" });
    const second = holdAfterFailure(first, B, now, 600);
    expect(second).toEqual({ version: B, failures: 2, until: "2026-11-25T10:20:00.000Z" });
    let hold = second;
    for (let i = 0; i < 40; i++) hold = holdAfterFailure(hold, B, now, 600);
    expect(Date.parse(hold.until!) - now.getTime()).toBe(24 * 3600 * 1000);
  });
  test("a failure of a new target starts again at one", () => {
    expect(holdAfterFailure({ version: B, failures: 5, until: null }, C, now, 600).failures).toBe(1);
  });
  test("a hold ends at its time; a rollback hold lasts until the target changes", () => {
    const hold = holdAfterFailure(null, B, now, 600);
    expect(activeHold(hold, B, now)).toBe(hold);
    expect(activeHold(hold, B, new Date("2026-11-25T10:10:00Z"))).toBeNull();
    expect(activeHold(holdAfterRollback(B), B, new Date("2030-01-01"))).not.toBeNull();
    expect(activeHold(holdAfterRollback(B), C, now)).toBeNull();
  });
});

describe("API answers", () => {
  test("hash from the envelope, or from a top-level sha256 without one", () => {
    expect(parseTarget({ code: 0, message: "ok", data: { sha256: A, version: "1.2" } })).toEqual({ sha256: A, version: "1.2" });
    expect(parseTarget({ sha256: B.toUpperCase() })).toEqual({ sha256: B, version: "" });
  });
  test.each([
    [{ code: 1, message: "no such binary" }, /code 1: no such binary/],
    [{ code: 0, data: { sha256: "../../etc/passwd" } }, /64 hex/],
    [{ code: 0, data: { sha256: "" } }, /64 hex/],
    [{ code: 0, data: { sha256: A + "0" } }, /64 hex/],
    [{ code: 0, data: null }, /data/],
    [[A], /object/],
    ["text", /object/],
  ])("%p is refused", (body, message) => {
    expect(() => parseTarget(body)).toThrow(message);
  });
  test("keepalive status", () => {
    expect(parseKeepaliveStatus({ code: 0, data: { status: "active" } })).toBe("active");
    expect(parseKeepaliveStatus({ code: 0, data: {} })).toBe("");
  });
  test("parseSha256 accepts exactly 64 hex digits", () => {
    expect(parseSha256(A)).toBe(A);
    expect(parseSha256(" " + A)).toBeNull();
    expect(parseSha256(42)).toBeNull();
  });
});

describe("lock files", () => {
  test("only exactly {name}-<64 hex>.lock of another version counts", () => {
    expect(otherVersionOf(`manager-${B}.lock`, "manager", A)).toBe(B);
    expect(otherVersionOf(`manager-${A}.lock`, "manager", A)).toBeNull();
    expect(otherVersionOf(`manager-extra-${B}.lock`, "manager", A)).toBeNull();
    expect(otherVersionOf(`manager-${B.toUpperCase()}.lock`, "manager", A)).toBeNull();
    expect(otherVersionOf(`manager-${B}.lock.bak`, "manager", A)).toBeNull();
    expect(otherVersionOf(`.manager-${B}.lock.holder`, "manager", A)).toBeNull();
  });
  test("the old script's content: a Unix time and a newline", () => {
    expect(parseLockTime("1764064800\n")).toBe(1764064800);
    expect(parseLockTime("")).toBeNull();
    expect(parseLockTime("pid 12")).toBeNull();
  });
});

describe("command line", () => {
  test("no arguments is one pass", () => expect(parseArgs([])).toEqual({ command: { kind: "pass", dryRun: false, verbose: false }, configPath: undefined }));
  test("flags and --config", () => {
    expect(parseArgs(["--once", "--dry-run", "--config", "/c", "--verbose"])).toEqual({ command: { kind: "pass", dryRun: true, verbose: true }, configPath: "/c" });
    expect(parseArgs(["status", "--json", "--config=/c"])).toEqual({ command: { kind: "status", json: true }, configPath: "/c" });
    expect(parseArgs(["rollback", "manager"]).command).toEqual({ kind: "rollback", name: "manager" });
  });
  test.each(["--bogus", "status --dry-run", "rollback", "retry a b", "frobnicate", "--config"])("%p is a usage error", (line) => {
    expect(() => parseArgs(line.split(" "))).toThrow(UsageError);
  });
});

describe("log lines", () => {
  test("logfmt as SPEC §8 shows it", () => {
    expect(formatLine(new Date("2026-11-25T10:00:00.123Z"), "info", "updated", { bin: "manager", from: "2cf24dba5fb0", to: "8a1f0c3e9b7d", took_ms: 3214 }))
      .toBe("2026-11-25T10:00:00.123Z level=info bin=manager event=updated from=2cf24dba5fb0 to=8a1f0c3e9b7d took_ms=3214");
  });
  test("values with spaces or quotes are quoted", () => {
    expect(formatLine(now, "error", "x", { error: 'a "b" c' })).toEndWith(`event=x error="a \\"b\\" c"`);
  });
  test("secrets are redacted", () => expect(redact("Bearer s3cret here", ["s3cret"])).toBe("Bearer [redacted] here"));
});

describe("small parsers", () => {
  test("os-release PRETTY_NAME", () => {
    expect(parseOsRelease('NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')).toBe("Debian GNU/Linux 12 (bookworm)");
    expect(parseOsRelease("PRETTY_NAME=Alpine\n")).toBe("Alpine");
    expect(parseOsRelease("NAME=x\n")).toBe("");
  });
  test("supervisorctl status state word", () => {
    expect(parseState("manager                          RUNNING   pid 123, uptime 0:00:05", "manager")).toBe("RUNNING");
    expect(parseState("manager-extra   FATAL\nmanager  BACKOFF   Exited too quickly", "manager")).toBe("BACKOFF");
    expect(parseState("manager: ERROR (no such process)", "manager")).toBeNull();
  });
});
