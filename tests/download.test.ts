// downloadVerified in process against the fake bin-manager: a kept partial is re-hashed from disk while the rest already lands, and the hash is right whichever comes first.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { closeSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { join, resolve } from "node:path";
import { discard, downloadVerified, partialPath } from "../lib/download.ts";
import type { Sha256 } from "../lib/hash.ts";
import { artifact, startBinManager, type BinManager } from "./fixture/bin-manager.ts";

const MIB = 1 << 20;
const BLOCK = 4 * MIB;
/** Large enough that re-hashing what is kept of it takes longer than the first blocks of the rest take to land. */
const SIZE = 256 * MIB;

let bm: BinManager;
let dir: string;
const bytes = new Uint8Array(SIZE);
for (let i = 0; i < SIZE; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
const target = artifact(bytes);

beforeAll(async () => {
  bm = await startBinManager();
  bm.setTarget("app", target);
  // On a disk filesystem (TMPDIR may be a tmpfs, whose reads cost nothing), as the pass's BIN_DIR is.
  const parent = resolve(import.meta.dir, "..", "dist");
  mkdirSync(parent, { recursive: true });
  dir = mkdtempSync(join(parent, ".download-test-"));
});

afterAll(async () => {
  await bm.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("while 60 % kept is re-hashed from disk, the blocks of the rest that land are read back; later ones are hashed as they come", async () => {
  const bin = join(dir, "app");
  const partial = partialPath(bin, target.sha256 as Sha256);
  const probe = await fetch(`${bm.api}/download/app`, { headers: { range: `bytes=${SIZE - 1}-` } });
  await probe.arrayBuffer();
  const kept = Math.floor((SIZE * 0.6) / BLOCK) * BLOCK;
  const fd = openSync(partial, "w", 0o600);
  writeSync(fd, bytes, 0, kept, 0);
  fsyncSync(fd);
  closeSync(fd);
  writeFileSync(`${partial}.meta`, JSON.stringify({ validator: probe.headers.get("etag"), total: SIZE }));
  bm.clearRequests();
  const notes: string[] = [];
  const failures: string[] = [];
  const download = await downloadVerified({
    urls: [`${bm.api}/download/app`],
    expected: target.sha256 as Sha256,
    tempPath: partial,
    maxBytes: 2 * SIZE,
    idleTimeoutMs: 30_000,
    policy: { token: undefined, tokenOrigin: "", timeoutMs: 30_000, proxy: { http: undefined, https: undefined, noProxy: undefined } },
    onAttemptFailed: (_url, reason) => failures.push(reason),
    onResume: (_url, what) => notes.push(what),
  });
  try {
    expect(failures).toEqual([]);
    expect(notes).toEqual([`resumed at byte ${kept} of ${SIZE}`]);
    expect(bm.requests.map((r) => r.headers["range"])).toEqual([`bytes=${kept}-`]);
    expect(bm.served("/api/v1/download/app")).toBe(SIZE - kept);
    expect(download.bytes).toBe(SIZE);
    expect(Buffer.compare(readFileSync(partial), Buffer.from(bytes))).toBe(0);
  } finally {
    discard(download);
  }
}, 60_000);
