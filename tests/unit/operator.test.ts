// Unit tests of the operator commands' pure parts: the command line, what rollback restores, and how status reports a binary.
import { describe, expect, test } from "bun:test";
import { parseArgs, UsageError } from "../../lib/cli.ts";
import type { Sha256 } from "../../lib/hash.ts";
import { parseManifest, type Entry } from "../../lib/manifest.ts";
import { findEntry, rollbackTarget } from "../../lib/rollback.ts";
import { attention, cells, formatStatus, type BinaryStatus } from "../../lib/status.ts";
import { planRestore } from "../../lib/update.ts";

const A = "a".repeat(64) as Sha256;
const B = "b".repeat(64) as Sha256;
const entry = (over: Partial<Entry> = {}): Entry => ({ binaryName: "app", serviceName: "app", version: B, previousVersion: A, port: 0, hold: null, ...over });
const row = (over: Partial<BinaryStatus> = {}): BinaryStatus => ({
  name: "app", service: "app", path: "/usr/local/bin/app", onDisk: B, diskError: null, version: B, versionName: null, previousVersion: A,
  supervisor: "RUNNING", locks: [], hold: null, otherHolds: [], attempt: null, signedAt: null, partial: null, attention: null, ...over,
});

describe("rollback", () => {
  test("installs the backup unless the restored version is already on disk (a killed rollback is finished)", () => {
    expect(planRestore(B, A)).toEqual({ kind: "update" });
    expect(planRestore(null, A)).toEqual({ kind: "update" });
    expect(planRestore(A, A)).toEqual({ kind: "finish" });
  });
  test("goes back to previousVersion when its backup exists", () => {
    expect(rollbackTarget(entry(), "/state", () => true)).toBe(A);
  });
  test.each([
    ["no previousVersion", entry({ previousVersion: null }), () => true, /no previousVersion/],
    ["previousVersion equal to version", entry({ previousVersion: B }), () => true, /both/],
    ["no backup file", entry(), () => false, /no backup of app's previous version aaaaaaaaaaaa: \/state\/backups\/app\/a{64} does not exist/],
  ])("refuses with %s", (_, e, exists, message) => {
    const result = rollbackTarget(e, "/state", exists);
    expect(typeof result === "object" && result.problem).toMatch(message);
  });
  test("a name that is not managed, or whose entry is rejected, is said so", () => {
    const manifest = parseManifest(JSON.stringify({ binaries: [{ binaryName: "app" }, { binaryName: "bad name" }] }));
    expect(findEntry(manifest, "app", "/m.json")).toMatchObject({ binaryName: "app" });
    expect(findEntry(manifest, "other", "/m.json")).toBe('other is not managed: /m.json has no binaryName "other"');
    expect(findEntry(manifest, "bad name", "/m.json")).toMatch(/entry is rejected/);
  });
});

describe("status", () => {
  test("a binary as the manifest says with its service RUNNING needs nothing; locks and holds are normal", () => {
    expect(attention(row())).toBeNull();
    expect(attention(row({ locks: [{ version: A, ageSec: 5, holder: "pid 1", stale: false }], hold: { version: A, failures: 1, until: null, active: true } }))).toBeNull();
  });
  test.each([
    ["missing", row({ onDisk: null }), /is missing/],
    ["unreadable", row({ onDisk: null, diskError: "EACCES" }), /cannot hash/],
    ["not the manifest's version", row({ onDisk: A }), /on disk is aaaaaaaaaaaa, the manifest says bbbbbbbbbbbb/],
    ["its service not RUNNING", row({ supervisor: "FATAL" }), /service app is FATAL/],
    // Swapped and not committed: the open attempt explains the difference, and is what is said.
    ["an uncommitted update", row({ onDisk: A, attempt: { target: A, startedAt: "2026-12-01T10:00:00.000Z", deaths: 0 } }), /^an update to aaaaaaaaaaaa started 2026-12-01T10:00:00.000Z is not committed; the next pass finishes it/],
    ["an update resumed once", row({ onDisk: A, attempt: { target: A, startedAt: "2026-12-01T10:00:00.000Z", deaths: 1 } }), /not committed, resumed 1 time after its pass died;/],
    ["an update left inconsistent", row({ onDisk: A, attempt: { target: A, startedAt: "2026-12-01T10:00:00.000Z", deaths: 0, inconsistent: "install: EIO" } }), /^inconsistent: install: EIO$/],
    ["supervisorctl gave no state", row({ supervisor: "UNKNOWN" }), /service app is UNKNOWN/],
  ])("%s needs attention", (_, b, message) => {
    expect(attention(b)).toMatch(message);
  });
  test("cells: short hashes, '-' for nothing, locks and holds spelled out", () => {
    expect(cells(row({ service: "", supervisor: null, previousVersion: null }))).toEqual(["app", "-", "bbbbbbbbbbbb", "bbbbbbbbbbbb", "-", "-", "-", "-"]);
    const busy = row({
      locks: [{ version: A, ageSec: 700, holder: "unknown (not recorded by bin-proxy)", stale: true }],
      hold: { version: A, failures: 2, until: "2026-11-25T10:20:00.000Z", active: true },
    });
    expect(cells(busy).slice(6)).toEqual(["aaaaaaaaaaaa by unknown (not recorded by bin-proxy), 700s (stale)", "aaaaaaaaaaaa held until 2026-11-25T10:20:00.000Z (2 failures)"]);
    // The holds a rollback kept follow the manifest's own, newest first.
    const kept = row({
      hold: { version: B, failures: 0, until: null, active: true },
      otherHolds: [{ version: A, failures: 3, until: "2026-11-25T11:00:00.000Z", active: true }, { version: A, failures: 1, until: "2026-11-25T09:00:00.000Z", active: false }],
    });
    expect(cells(kept).at(-1)).toBe("bbbbbbbbbbbb held until the API names another version; aaaaaaaaaaaa held until 2026-11-25T11:00:00.000Z (3 failures); aaaaaaaaaaaa expired 2026-11-25T09:00:00.000Z (1 failure)");
  });
  test("the table aligns its columns and lists what needs attention under it", () => {
    const text = formatStatus({ binaries: [row(), row({ name: "longer-name", onDisk: null, attention: "/usr/local/bin/app is missing" })], rejected: [{ label: '"x y"', reason: "binaries[2]: not a plain name" }], lastPass: null, signaturesRequired: false, restartsDisabled: false }, { metricsSet: false, unreadable: null });
    const lines = text.split("\n");
    expect(lines[0]).toMatch(/^NAME {9}SERVICE {2}ON-DISK/);
    expect(lines[1]!.indexOf("app  ")).toBe(0);
    expect(lines[2]!.startsWith("longer-name  app")).toBe(true);
    expect(lines.slice(3)).toEqual(["", "longer-name: /usr/local/bin/app is missing", '"x y": entry rejected: binaries[2]: not a plain name', "", "last pass not recorded (BIN_PROXY_METRICS_FILE is not set); signatures not checked (no trusted keys file)"]);
  });
  test("with BIN_PROXY_METRICS_FILE set and no pass recorded yet, the footer says just that; a state it cannot read, that", () => {
    const report = { binaries: [row()], rejected: [], lastPass: null, signaturesRequired: true, restartsDisabled: false };
    expect(formatStatus(report, { metricsSet: true, unreadable: null }).split("\n").at(-1)).toBe("last pass not recorded yet; signatures required");
    expect(formatStatus(report, { metricsSet: true, unreadable: "EACCES" }).split("\n").at(-1)).toBe("last pass unknown: EACCES; signatures required");
  });
});

describe("command line", () => {
  test("-v is --verbose, -V --version, -h --help; help and --help after any command are the help", () => {
    expect(parseArgs(["-v"]).command).toEqual({ kind: "pass", dryRun: false, verbose: true });
    expect(parseArgs(["--dry-run", "-v"]).command).toEqual({ kind: "pass", dryRun: true, verbose: true });
    expect(parseArgs(["-V"]).command).toEqual({ kind: "version" });
    for (const argv of [["help"], ["-h"], ["--help"], ["status", "--help"], ["rollback", "--help"], ["retry", "-h"], ["rollback", "app", "--help"], ["help", "status"]]) {
      expect(parseArgs(argv).command).toEqual({ kind: "help" });
    }
  });
  test("a usage error carries the --config FILE the command line names, so it can be logged where that file says", () => {
    const error = (argv: string[]) => {
      try {
        parseArgs(argv);
      } catch (err) {
        return err as UsageError;
      }
      throw new Error(`${argv.join(" ")} parsed`);
    };
    expect(error(["--frobnicate", "--config", "/etc/a"]).configPath).toBe("/etc/a");
    expect(error(["--config=/etc/a", "--config", "/etc/b", "extra"]).configPath).toBe("/etc/b");
    expect(error(["status", "-v"])).toMatchObject({ message: 'unknown option "-v" for status', configPath: undefined });
    expect(error(["rollback"]).message).toBe("rollback needs exactly one NAME");
  });
  test("the FILE of --config is never read as a flag, and --config may come before the command", () => {
    expect(parseArgs(["--config", "-h"])).toEqual({ command: { kind: "pass", dryRun: false, verbose: false }, configPath: "-h" });
    expect(parseArgs(["--config", "/etc/a", "status", "--json"])).toEqual({ command: { kind: "status", json: true }, configPath: "/etc/a" });
    expect(() => parseArgs(["status", "--config"])).toThrow("--config needs a FILE");
    expect(() => parseArgs(["--config="])).toThrow("--config needs a FILE");
    expect(parseArgs(["--config", "--help"]).command).toEqual({ kind: "pass", dryRun: false, verbose: false });
  });
});
