// Resumable downloads (SPEC §13): a cut or killed download continues where it stopped, asking only for the rest; anything a server says that cannot be appended starts over from byte 0.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { appendFileSync, closeSync, existsSync, openSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { artifact, redirect, startBinManager, status, type Artifact, type Behaviour, type BinManager, type RangeSupport } from "../fixture/bin-manager.ts";
import { hostPool, runBinProxy, type Host } from "../fixture/host.ts";
import { startNginx } from "../fixture/nginx.ts";
import { events, expectDone, expectWhole, killPass, startPass, until } from "./invariants.ts";

const API = "/api/v1";
const MIB = 1 << 20;
/** The disk writer's block: a cut keeps whole ones only. */
const BLOCK = 4 * MIB;
const SIZE = 64 * MIB;
/** Where the link drops: about 60 % in, not on a block boundary. */
const CUT = Math.floor(SIZE * 0.6);

let bm: BinManager;
const hosts = hostPool();

function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(out.subarray(i, Math.min(n, i + 65536)));
  return out;
}

/** The 64 MiB target every case downloads (under its own binary name), and a second one. */
const BIG = artifact(randomBytes(SIZE));
const OTHER = artifact(randomBytes(3 * MIB + 5));

beforeAll(async () => {
  bm = await startBinManager();
});

afterAll(async () => {
  await bm.stop();
  hosts.cleanup();
});

beforeEach(() => bm.clearRequests());

interface World {
  host: Host;
  name: string;
  v1: Artifact;
  partial: string;
  /** What the partial keeps beside it: the validator of its first response. */
  info: string;
  primary: string;
  fallback: string;
}

/** A host whose binary `name` is at a small v1, the API naming BIG. */
function world(name: string): World {
  const host = hosts.make();
  const v1 = artifact(`#!/bin/sh\n# ${name} v1\n`);
  host.writeBinary(name, v1.bytes);
  host.writeManifest([{ serviceName: "", binaryName: name, version: v1.sha256, previousVersion: "", port: 0 }]);
  bm.setTarget(name, BIG);
  const partial = join(host.binDir, `.${name}.${BIG.sha256}.part`);
  return { host, name, v1, partial, info: `${partial}.meta`, primary: `${API}/download/${name}`, fallback: `${API}/releases/latest/${name}/download` };
}

/** A failed target is retried at once, so each pass here downloads. */
const pass = (w: World, extra: Record<string, string> = {}) => runBinProxy([], w.host.env(bm.api, { BIN_PROXY_RETRY_BACKOFF: "0", ...extra }));
const clean = { code: 0, stdout: "", stderr: "" };

/** The download requests of w, in order, as the server saw them: path and Range. */
const downloads = (w: World) =>
  bm.requests.filter((r) => r.path === w.primary || r.path === w.fallback).map((r) => ({ path: r.path, range: r.headers["range"] ?? null }));

const sizeOf = (path: string) => statSync(path, { throwIfNoEntry: false })?.size ?? -1;

/**
 * A pass whose every download is cut at CUT (the first answer and its resume, on both URLs): it
 * fails, leaving the binary as it was and the partial's whole blocks, which it returns.
 */
async function cutPass(w: World): Promise<number> {
  bm.interrupt(w.name, { at: CUT });
  try {
    expect((await pass(w)).code).toBe(1);
  } finally {
    bm.interrupt(w.name, null);
  }
  expectWhole(w.host, w.name, [w.v1, BIG]);
  expect(w.host.readManifest().binaries[0]!.version).toBe(w.v1.sha256);
  const kept = sizeOf(w.partial);
  expect(kept % BLOCK).toBe(0);
  expect(kept).toBeGreaterThanOrEqual(SIZE / 2);
  expect(kept).toBeLessThanOrEqual(CUT);
  expect(existsSync(w.info)).toBe(true);
  expect(statSync(w.partial).mode & 0o777).toBe(0o600);
  bm.clearRequests();
  rmSync(w.host.logFile); // the next pass's log is the one to read
  return kept;
}

describe("a download cut short continues where it stopped", () => {
  test("cut after ~60 %: the partial's whole blocks are kept, and the next pass transfers only the rest", async () => {
    const w = world("cut");
    bm.interrupt(w.name, { at: CUT });
    try {
      expect((await pass(w)).code).toBe(1);
    } finally {
      bm.interrupt(w.name, null);
    }
    // Each URL: its first answer, then one resume from the whole blocks kept.
    const first = downloads(w);
    expect(first.map((d) => d.path)).toEqual([w.primary, w.primary, w.fallback, w.fallback]);
    expect(first[0]!.range).toBeNull();
    for (const d of first.slice(1)) expect(d.range).toMatch(/^bytes=\d+-$/);
    const kept = sizeOf(w.partial);
    expect(kept % BLOCK).toBe(0);
    expect(kept).toBeGreaterThanOrEqual(SIZE / 2);
    expect(first.at(-1)!.range).toBe(`bytes=${kept}-`);
    expectWhole(w.host, w.name, [w.v1, BIG]);
    expect(existsSync(w.info)).toBe(true);
    // --dry-run and status show what a pass would resume.
    const dry = await runBinProxy(["--dry-run"], w.host.env(bm.api));
    // The whole size is known only when the server announced it (this fixture streams without a Content-Length).
    const status = JSON.parse((await runBinProxy(["status", "--json"], w.host.env(bm.api))).stdout) as { binaries: { partial: { version: string; bytes: number; total: number | null } }[] };
    const { total } = status.binaries[0]!.partial;
    expect(status.binaries[0]!.partial).toEqual({ version: BIG.sha256, bytes: kept, total });
    expect(total === null || total === SIZE).toBe(true);
    expect(dry.stdout).toBe(`${w.name}: would update ${w.v1.sha256.slice(0, 12)} -> ${BIG.sha256.slice(0, 12)} (resuming a partial download: ${kept} of ${total ?? "?"} bytes kept)\n`);

    bm.clearRequests();
    expect(await pass(w)).toEqual(clean);
    expect(w.host.log()).toMatch(new RegExp(`event=download_resumed url=\\S+ what="resumed at byte ${kept}`));
    expect(downloads(w)).toEqual([{ path: w.primary, range: `bytes=${kept}-` }]);
    expect(bm.requests.find((r) => r.path === w.primary)!.headers["if-range"]).toMatch(/^"[0-9a-f]{16}-0"$/);
    expect(bm.served(w.primary)).toBe(SIZE - kept);
    expectDone(w.host, w.name, w.v1, BIG);
  }, 60_000);

  test("kill -9 mid-download: the next pass transfers only the rest", async () => {
    const w = world("killed");
    const wholeBlocks = CUT - (CUT % BLOCK);
    // The server goes silent at CUT; the pass has then written every whole block before it.
    bm.interrupt(w.name, { at: CUT, how: "stall", times: 1 });
    const running = startPass(w.host, bm.api, { BIN_PROXY_RETRY_BACKOFF: "0" });
    try {
      await until(() => sizeOf(w.partial) >= wholeBlocks, () => `the partial at ${wholeBlocks} bytes (${sizeOf(w.partial)})\n${w.host.log()}`);
    } finally {
      expect((await killPass(running)).code).toBe(137);
      bm.interrupt(w.name, null);
    }
    expectWhole(w.host, w.name, [w.v1, BIG]);
    const kept = sizeOf(w.partial);
    expect(kept).toBe(wholeBlocks);

    bm.clearRequests();
    expect(await pass(w)).toEqual(clean);
    expect(downloads(w)).toEqual([{ path: w.primary, range: `bytes=${kept}-` }]);
    expect(bm.served(w.primary)).toBe(SIZE - kept);
    expectDone(w.host, w.name, w.v1, BIG);
  }, 60_000);

  for (const [how, extra, reason] of [
    ["the connection reset", {}, /body cut short after \d+ bytes: ECONNRESET/],
    ["a silence past HTTP_TIMEOUT", { HTTP_TIMEOUT: "2" }, /no data within 2s/],
  ] as const) {
    test(`within one pass, ${how} is resumed once from the same URL before the fallback`, async () => {
      const w = world(how.startsWith("the") ? "resetinpass" : "silentinpass");
      bm.interrupt(w.name, { at: CUT, how: how.startsWith("the") ? "cut" : "stall", times: 1 });
      expect(await pass(w, extra)).toEqual(clean);
      const seen = downloads(w);
      expect(seen.map((d) => d.path)).toEqual([w.primary, w.primary]);
      const resumedAt = Number(/^bytes=(\d+)-$/.exec(seen[1]!.range ?? "")?.[1]);
      expect(resumedAt % BLOCK).toBe(0);
      expect(resumedAt).toBeGreaterThanOrEqual(SIZE / 2);
      expect(resumedAt).toBeLessThanOrEqual(CUT);
      expect(bm.served(w.primary)).toBe(CUT + SIZE - resumedAt);
      expect(bm.served(w.fallback)).toBe(0);
      const failed = events(w.host, "download_attempt_failed");
      expect(failed).toHaveLength(1);
      expect(failed[0]!.reason).toMatch(reason);
      expect(failed[0]!.reason).toEndWith(`; resuming from byte ${resumedAt}`);
      expectDone(w.host, w.name, w.v1, BIG);
    }, 60_000);
  }

  test("within one pass, a cut before the first whole block is on disk is tried again from byte 0 on the same URL", async () => {
    const w = world("smallcut");
    bm.setTarget(w.name, OTHER);
    bm.interrupt(w.name, { at: 600_000, times: 1 });
    expect(await pass(w)).toEqual(clean);
    expect(downloads(w)).toEqual([{ path: w.primary, range: null }, { path: w.primary, range: null }]);
    expect(events(w.host, "download_attempt_failed").map((e) => e.reason)).toEqual([expect.stringMatching(/^body cut short after \d+ bytes: .*; resuming from byte 0$/)]);
    expectDone(w.host, w.name, w.v1, OTHER);
  }, 60_000);

  // The kept bytes are re-hashed from disk while the rest arrives (tests/download.test.ts has blocks landing first, in process).
  test("over a slow link the rest arrives after the re-hash of the kept bytes ended: each block is hashed as it comes", async () => {
    const w = world("rehashslow");
    const kept = await cutPass(w);
    bm.throttle(48 * MIB);
    try {
      expect(await pass(w)).toEqual(clean);
    } finally {
      bm.throttle(null);
    }
    expect(downloads(w)).toEqual([{ path: w.primary, range: `bytes=${kept}-` }]);
    expect(bm.served(w.primary)).toBe(SIZE - kept);
    expectDone(w.host, w.name, w.v1, BIG);
  }, 60_000);

  test("a server that sends Last-Modified and no ETag is resumed with that date", async () => {
    const w = world("lastmodified");
    bm.setRanges(w.name, { validator: "last-modified" });
    const kept = await cutPass(w);
    expect(await pass(w)).toEqual(clean);
    expect(downloads(w)).toEqual([{ path: w.primary, range: `bytes=${kept}-` }]);
    expect(bm.requests.find((r) => r.path === w.primary)!.headers["if-range"]).toMatch(/ GMT$/);
    expect(bm.served(w.primary)).toBe(SIZE - kept);
    expectDone(w.host, w.name, w.v1, BIG);
  }, 60_000);

  test("a partial that already holds the whole file (killed before its install) is installed without a request", async () => {
    const w = world("complete");
    writeFileSync(w.partial, BIG.bytes, { mode: 0o600 });
    expect(await pass(w)).toEqual(clean);
    expect(downloads(w)).toEqual([]);
    expectDone(w.host, w.name, w.v1, BIG);
  }, 60_000);
});

describe("through a real cluster cache (nginx proxy_cache)", () => {
  test("a partial cut at the origin is resumed through the cache: on its miss and on its hit", async () => {
    const nginx = await startNginx({ upstream: bm.origin });
    const viaCache = { DOWNLOAD_BASE_URL: `${nginx.url}${API}/download` };
    try {
      // A miss: nginx fetches the whole file from the origin once, and answers the Range from it.
      const miss = world("viamiss");
      await cutPass(miss);
      expect(await pass(miss, viaCache)).toEqual(clean);
      expect(nginx.cacheLog()).toEqual([`MISS ${miss.primary}?sha256=${BIG.sha256}`]);
      expect(bm.served(miss.primary)).toBe(SIZE);
      expect(events(miss.host, "download_attempt_failed")).toEqual([]);
      expectDone(miss.host, miss.name, miss.v1, BIG);

      // A hit: another host's download filled the cache; the origin is not asked at all.
      const hit = world("viahit");
      await cutPass(hit);
      await (await fetch(`${nginx.url}${hit.primary}?sha256=${BIG.sha256}`)).arrayBuffer();
      bm.setPrimary(hit.name, status(500));
      bm.clearRequests();
      try {
        expect(await pass(hit, viaCache)).toEqual(clean);
      } finally {
        bm.setPrimary(hit.name, null);
      }
      expect(nginx.cacheLog().at(-1)).toBe(`HIT ${hit.primary}?sha256=${BIG.sha256}`);
      expect(downloads(hit)).toEqual([]);
      expect(events(hit.host, "download_attempt_failed")).toEqual([]);
      expectDone(hit.host, hit.name, hit.v1, BIG);
    } finally {
      await nginx.stop();
    }
  }, 60_000);
});

describe("what cannot be appended starts over from byte 0, and still installs byte for byte", () => {
  const cases: [string, Partial<RangeSupport>, "one" | "two"][] = [
    ["a 200 to the Range (ranges ignored)", { ranges: "ignore" }, "one"],
    ["a changed validator (If-Range no longer matches: 200)", { changing: true }, "one"],
    ["a 206 carrying another validator (If-Range ignored)", { changing: true, ifRange: false }, "two"],
    ["a Content-Range that starts elsewhere", { ranges: "elsewhere" }, "two"],
    ["416", { ranges: "unsatisfiable" }, "two"],
  ];
  for (const [what, support, requests] of cases) {
    test(what, async () => {
      const w = world(`zero${cases.findIndex((c) => c[0] === what)}`);
      const kept = await cutPass(w);
      bm.setRanges(w.name, support);
      try {
        expect(await pass(w)).toEqual(clean);
      } finally {
        bm.setRanges(w.name, null);
      }
      const seen = downloads(w);
      // The Range is asked first; a 200 is the whole file already, anything else is asked again without one.
      expect(seen).toEqual(requests === "one" ? [{ path: w.primary, range: `bytes=${kept}-` }] : [{ path: w.primary, range: `bytes=${kept}-` }, { path: w.primary, range: null }]);
      expect(bm.served(w.primary)).toBeGreaterThanOrEqual(SIZE);
      expect(events(w.host, "download_attempt_failed")).toEqual([]);
      expectDone(w.host, w.name, w.v1, BIG);
    }, 60_000);
  }

  test("a server without validators: a cut keeps nothing to resume, and the next pass asks for the whole file", async () => {
    const w = world("novalidator");
    bm.setRanges(w.name, { validator: "none" });
    try {
      bm.interrupt(w.name, { at: CUT });
      expect((await pass(w)).code).toBe(1);
      bm.interrupt(w.name, null);
      // Without a validator nothing was resumed, within the pass or after it.
      expect(downloads(w)).toEqual([{ path: w.primary, range: null }, { path: w.fallback, range: null }]);
      expectWhole(w.host, w.name, [w.v1, BIG]);
      expect(readdirSync(w.host.binDir)).toEqual([w.name]);
      bm.clearRequests();
      expect(await pass(w)).toEqual(clean);
      expect(downloads(w)).toEqual([{ path: w.primary, range: null }]);
      expectDone(w.host, w.name, w.v1, BIG);
    } finally {
      bm.setRanges(w.name, null);
      bm.interrupt(w.name, null);
    }
  }, 60_000);

  test("a torn partial (its last block overwritten): the resumed file does not match, and one fresh download installs it", async () => {
    const w = world("torn");
    const kept = await cutPass(w);
    const fd = openSync(w.partial, "r+");
    writeSync(fd, randomBytes(BLOCK), 0, BLOCK, kept - BLOCK);
    closeSync(fd);
    expect(await pass(w)).toEqual(clean);
    expect(downloads(w)).toEqual([{ path: w.primary, range: `bytes=${kept}-` }, { path: w.primary, range: null }]);
    expect(bm.served(w.primary)).toBe(SIZE - kept + SIZE);
    const failed = events(w.host, "download_attempt_failed");
    expect(failed.map((e) => e.reason)).toEqual([expect.stringMatching(/^content does not match: .*; downloading it again from byte 0$/)]);
    expectDone(w.host, w.name, w.v1, BIG);
  }, 60_000);

  test("a torn tail (bytes past the last whole block) is dropped: only whole blocks are resumed from", async () => {
    const w = world("torntail");
    const kept = await cutPass(w);
    appendFileSync(w.partial, randomBytes(123_457));
    expect(await pass(w)).toEqual(clean);
    expect(downloads(w)).toEqual([{ path: w.primary, range: `bytes=${kept}-` }]);
    expect(bm.served(w.primary)).toBe(SIZE - kept);
    expectDone(w.host, w.name, w.v1, BIG);
  }, 60_000);
});

/** A pass while the primary and fallback URLs serve what is given: it fails; afterwards they serve the target again. */
async function failingPass(w: World, primary: Behaviour | Uint8Array, fallback: Behaviour | Uint8Array): Promise<void> {
  bm.setPrimary(w.name, primary);
  bm.setFallback(w.name, fallback);
  try {
    expect((await pass(w)).code).toBe(1);
  } finally {
    bm.setPrimary(w.name, null);
    bm.setFallback(w.name, null);
  }
}

describe("what is not resumed is removed", () => {
  test("the partial of another target is removed, with what it kept beside it", async () => {
    const w = world("moved");
    await cutPass(w);
    bm.setTarget(w.name, OTHER);
    expect(await pass(w)).toEqual(clean);
    expect(events(w.host, "partial_removed").map((e) => e.version)).toEqual([BIG.sha256.slice(0, 12)]);
    expect(downloads(w)).toEqual([{ path: w.primary, range: null }]);
    expectDone(w.host, w.name, w.v1, OTHER);
  }, 60_000);

  for (const [name, what, primary] of [
    ["gone", "404 from both URLs", status(404)],
    ["wrong", "wrong content, then 404", randomBytes(SIZE)],
    // The redirect is refused by bin-proxy's own rules: it would be refused at every pass, so the bytes are worth nothing.
    ["astray", "a redirect to a non-http URL, then 404", redirect("ftp://mirror.example/x")],
  ] as const) {
    test(`a download failing for another reason than a cut (${what}) leaves no file behind, kept partial included`, async () => {
      const w = world(name);
      await cutPass(w);
      await failingPass(w, primary, status(404));
      expectWhole(w.host, w.name, [w.v1, BIG]);
      expect(readdirSync(w.host.binDir)).toEqual([w.name]);
    }, 60_000);
  }
});

describe("a server that does not answer keeps the partial for a later pass", () => {
  test("both URLs answer 503 after a cut: the partial and what it keeps beside it stay, and the next pass resumes", async () => {
    const w = world("down");
    const kept = await cutPass(w);
    await failingPass(w, status(503), status(503));
    expectWhole(w.host, w.name, [w.v1, BIG]);
    expect(sizeOf(w.partial)).toBe(kept);
    expect(existsSync(w.info)).toBe(true);

    bm.clearRequests();
    expect(await pass(w)).toEqual(clean);
    expect(downloads(w)).toEqual([{ path: w.primary, range: `bytes=${kept}-` }]);
    expectDone(w.host, w.name, w.v1, BIG);
  }, 60_000);
});

describe("the fake bin-manager's ranges", () => {
  test("206 from N with If-Range, 200 when it no longer matches, 416 past the end; bytes sent are counted", async () => {
    bm.setTarget("fx", OTHER);
    const url = `${bm.api}/download/fx`;
    const path = `${API}/download/fx`;
    const whole = await fetch(url);
    const etag = whole.headers.get("etag")!;
    expect([whole.status, whole.headers.get("accept-ranges"), (await whole.arrayBuffer()).byteLength]).toEqual([200, "bytes", OTHER.bytes.length]);
    const part = await fetch(url, { headers: { range: "bytes=1000-", "if-range": etag } });
    expect([part.status, part.headers.get("content-range"), part.headers.get("etag")]).toEqual([206, `bytes 1000-${OTHER.bytes.length - 1}/${OTHER.bytes.length}`, etag]);
    expect(Buffer.from(await part.arrayBuffer())).toEqual(Buffer.from(OTHER.bytes.subarray(1000)));
    const stale = await fetch(url, { headers: { range: "bytes=1000-", "if-range": '"not-it"' } });
    expect([stale.status, (await stale.arrayBuffer()).byteLength]).toEqual([200, OTHER.bytes.length]);
    const past = await fetch(url, { headers: { range: `bytes=${OTHER.bytes.length}-` } });
    expect([past.status, past.headers.get("content-range")]).toEqual([416, `bytes */${OTHER.bytes.length}`]);
    expect(bm.served(path)).toBe(3 * OTHER.bytes.length - 1000);
    bm.setRanges("fx", { changing: true });
    const tags = [];
    for (let i = 0; i < 2; i++) {
      const res = await fetch(url);
      await res.arrayBuffer();
      tags.push(res.headers.get("etag"));
    }
    expect(tags[0]).not.toBe(tags[1]);
    bm.setRanges("fx", null);
    bm.setTarget("fx", null);
  });
});
