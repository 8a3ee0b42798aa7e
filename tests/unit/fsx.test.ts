// The file primitives every writer shares: a temp file left by a dead process of our pid never stops a write, nor redirects it.
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, existsSync, fstatSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { appendText, readTextIfPresent, readTextNoFollow, sweepOrphanTemps, tempPathFor, writeFileAtomic } from "../../lib/fsx.ts";
import { exchangeNames } from "../../lib/libc.ts";

const dirs: string[] = [];
const freshDir = () => {
  const dir = mkdtempSync(join(tmpdir(), "bin-proxy-fsx-"));
  dirs.push(dir);
  return dir;
};
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe("writeFileAtomic", () => {
  test("a temp file of this pid left by a dead process is replaced, and nothing is left beside the file", () => {
    const dir = freshDir();
    const dest = join(dir, "state.json");
    writeFileSync(tempPathFor(dest), "half a file from a process that was killed");
    writeFileAtomic(dest, "whole\n", { mode: 0o600 });
    expect(readFileSync(dest, "utf8")).toBe("whole\n");
    expect(statSync(dest).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir)).toEqual(["state.json"]);
  });

  test("a symlink where the temp file goes is removed, not followed: what it points at is untouched", () => {
    const dir = freshDir();
    const victim = join(dir, "victim");
    writeFileSync(victim, "keep me");
    const dest = join(dir, "bin_proxy.prom");
    symlinkSync(victim, tempPathFor(dest));
    writeFileAtomic(dest, "metrics\n", { mode: 0o644 }, "unsynced");
    expect(readFileSync(victim, "utf8")).toBe("keep me");
    expect(readFileSync(dest, "utf8")).toBe("metrics\n");
    expect(lstatSync(dest).isSymbolicLink()).toBe(false);
    expect(readdirSync(dir).sort()).toEqual(["bin_proxy.prom", "victim"]);
  });

  test("an unsynced replacement swaps the names: a reader of the old file keeps it whole, and nothing is left beside the new one", () => {
    const dir = freshDir();
    const dest = join(dir, "bin_proxy.prom");
    writeFileAtomic(dest, "first\n", { mode: 0o644 }, "unsynced");
    const before = statSync(dest).ino;
    const reader = openSync(dest, "r");
    try {
      writeFileAtomic(dest, "second\n", { mode: 0o644 }, "unsynced");
      expect(readFileSync(dest, "utf8")).toBe("second\n");
      expect(statSync(dest).ino).not.toBe(before);
      expect(readFileSync(reader, "utf8")).toBe("first\n");
      expect(fstatSync(reader).nlink).toBe(0); // the old file is gone from every name
    } finally {
      closeSync(reader);
    }
    expect(readdirSync(dir)).toEqual(["bin_proxy.prom"]);
    expect(statSync(dest).mode & 0o777).toBe(0o644);
  });

  test("anything but a regular file at dest is replaced by a rename, as a synced write does: a symlink itself, never what it points at; a directory is refused and stays", () => {
    const dir = freshDir();
    const victim = join(dir, "victim");
    writeFileSync(victim, "keep me");
    const dest = join(dir, "bin_proxy.prom");
    symlinkSync(victim, dest);
    writeFileAtomic(dest, "metrics\n", { mode: 0o644 }, "unsynced");
    expect(lstatSync(dest).isFile()).toBe(true);
    expect(readFileSync(victim, "utf8")).toBe("keep me");
    const asDir = join(dir, "dir.prom");
    mkdirSync(asDir);
    writeFileSync(join(asDir, "inside"), "kept");
    expect(() => writeFileAtomic(asDir, "metrics\n", { mode: 0o644 }, "unsynced")).toThrow(/EISDIR|EEXIST|ENOTEMPTY/);
    expect(readFileSync(join(asDir, "inside"), "utf8")).toBe("kept");
    expect(readdirSync(dir).sort()).toEqual(["bin_proxy.prom", "dir.prom", "victim"]);
  });

  test("exchangeNames swaps two files in one step; with a name missing it says so and changes nothing", () => {
    const dir = freshDir();
    const [a, b] = [join(dir, "a"), join(dir, "b")];
    writeFileSync(a, "A");
    writeFileSync(b, "B");
    expect(exchangeNames(a, b)).toBe(true);
    expect([readFileSync(a, "utf8"), readFileSync(b, "utf8")]).toEqual(["B", "A"]);
    expect(exchangeNames(a, join(dir, "missing"))).toBe(false);
    expect(readdirSync(dir).sort()).toEqual(["a", "b"]);
  });

  test("a leftover that cannot be removed (a directory under a dead run's temp name) never stops the write", () => {
    const dir = freshDir();
    const dest = join(dir, "bin_proxy.prom");
    const stuck = join(dir, ".bin_proxy.prom.999999999.tmp");
    mkdirSync(join(stuck, "inside"), { recursive: true });
    expect(sweepOrphanTemps(dest)).toEqual([]);
    writeFileAtomic(dest, "metrics\n", { mode: 0o644 }, "unsynced");
    expect(readFileSync(dest, "utf8")).toBe("metrics\n");
    expect(existsSync(join(stuck, "inside"))).toBe(true);
  });

  test("text is written as UTF-8", () => {
    const dest = join(freshDir(), "note");
    writeFileAtomic(dest, 'version="v2 β"\n');
    expect(readFileSync(dest)).toEqual(Buffer.from('version="v2 β"\n', "utf8"));
  });
});

describe("appendText: the event log and the metrics pass log", () => {
  test("appends, creating the file with its mode; never through a symlink, never waiting on a FIFO without a reader", () => {
    const dir = freshDir();
    const log = join(dir, "log");
    appendText(log, "one\n", 0o640);
    appendText(log, "two\n", 0o600);
    expect(readFileSync(log, "utf8")).toBe("one\ntwo\n");
    expect(statSync(log).mode & 0o777).toBe(0o640);
    const victim = join(dir, "victim");
    writeFileSync(victim, "keep me");
    symlinkSync(victim, join(dir, "link"));
    expect(() => appendText(join(dir, "link"), "x\n", 0o600)).toThrow(/ELOOP/);
    expect(spawnSync("mkfifo", [join(dir, "fifo")]).status).toBe(0);
    expect(() => appendText(join(dir, "fifo"), "x\n", 0o600)).toThrow(/ENXIO/);
    expect(readFileSync(victim, "utf8")).toBe("keep me");
  });
});

describe("readTextNoFollow: the small files bin-proxy keeps, read without being led anywhere", () => {
  test("a symlink, a FIFO (which would block the pass) and an oversized file are refused; a missing file is null for readTextIfPresent", () => {
    const dir = freshDir();
    const real = join(dir, "real");
    writeFileSync(real, "kept\n");
    expect(readTextNoFollow(real)).toBe("kept\n");
    symlinkSync(real, join(dir, "link"));
    expect(() => readTextNoFollow(join(dir, "link"))).toThrow(/ELOOP/);
    expect(spawnSync("mkfifo", [join(dir, "fifo")]).status).toBe(0);
    expect(() => readTextNoFollow(join(dir, "fifo"))).toThrow("is not a regular file");
    expect(() => readTextNoFollow(real, 4)).toThrow("is larger than 4 bytes");
    expect(readTextIfPresent(join(dir, "missing"))).toBeNull();
    expect(() => readTextIfPresent(join(dir, "link"))).toThrow(/ELOOP/);
  });
});
