// The file primitives every writer shares: a temp file left by a dead process of our pid never stops a write, nor redirects it.
import { afterAll, describe, expect, test } from "bun:test";
import { lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tempPathFor, writeFileAtomic } from "../../lib/fsx.ts";

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
    writeFileAtomic(dest, "metrics\n", { mode: 0o644 }, { sync: "none", ownMeta: true });
    expect(readFileSync(victim, "utf8")).toBe("keep me");
    expect(readFileSync(dest, "utf8")).toBe("metrics\n");
    expect(lstatSync(dest).isSymbolicLink()).toBe(false);
    expect(readdirSync(dir).sort()).toEqual(["bin_proxy.prom", "victim"]);
  });

  test("text is written as UTF-8", () => {
    const dest = join(freshDir(), "note");
    writeFileAtomic(dest, 'version="v2 β"\n');
    expect(readFileSync(dest)).toEqual(Buffer.from('version="v2 β"\n', "utf8"));
  });
});
