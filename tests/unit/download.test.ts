// Unit tests of the download's pure decisions: what a response to a resumed request means, which validator is kept, and which partial files a pass keeps.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  judgeAnswer, judgePartial, keptBytes, parseContentRange, parsePartialInfo, partialPath, removePartials, resumablePartial, validatorOf, type Resume,
} from "../../lib/download.ts";
import { parseSha256, type Sha256 } from "../../lib/hash.ts";

/** MAX_DOWNLOAD_BYTES, as large as any test here needs. */
const MAX = 1 << 30;

const BLOCK = 4 << 20;
const sha = (c: string) => parseSha256(c.repeat(64))!;
const headers = (h: Record<string, string>) => new Headers(h);
const asked: Resume = { offset: 8 * BLOCK, validator: '"abc"' };
const range = (first: number, total: number) => ({ "content-range": `bytes ${first}-${total - 1}/${total}` });

describe("judgeAnswer", () => {
  test("a 206 from exactly the kept bytes, to the end, of the same file, unencoded: appended", () => {
    expect(judgeAnswer(206, headers({ ...range(asked.offset, 100 << 20), etag: '"abc"' }), asked)).toEqual({ kind: "append", total: 100 << 20 });
    // A 206 without a validator of its own is judged by If-Range, which the server honoured.
    expect(judgeAnswer(206, headers({ "content-range": `bytes ${asked.offset}-${asked.offset + 99}/*` }), asked)).toEqual({ kind: "append", total: null });
  });

  test.each([
    ["starts elsewhere", { ...range(0, 100 << 20) }, /starts at byte 0, not 33554432/],
    ["stops before the end", { "content-range": `bytes ${asked.offset}-${asked.offset + 10}/${100 << 20}` }, /ends at byte/],
    ["has no Content-Range", {}, /without a usable Content-Range/],
    ["has a malformed one", { "content-range": "bytes=33554432-" }, /without a usable Content-Range/],
    ["carries another validator", { ...range(asked.offset, 100 << 20), etag: '"new"' }, /the file changed/],
    ["is gzip-encoded", { ...range(asked.offset, 100 << 20), "content-encoding": "gzip" }, /gzip-encoded/],
  ])("a 206 that %s: asked again without Range", (_, h, why) => {
    const answer = judgeAnswer(206, headers(h), asked);
    expect(answer.kind).toBe("ask-whole");
    expect(answer.kind === "ask-whole" && answer.why).toMatch(why);
  });

  test("416 to a Range: asked again without it; 200: the whole file, from byte 0", () => {
    expect(judgeAnswer(416, headers({}), asked).kind).toBe("ask-whole");
    expect(judgeAnswer(200, headers({}), asked)).toEqual({ kind: "whole", why: expect.stringContaining("answered 200 to the range") });
    expect(judgeAnswer(200, headers({}), null)).toEqual({ kind: "whole", why: null });
  });

  test("errors: 5xx, 408 and 429 may pass, others do not; 206 or 416 to a request without Range is refused", () => {
    for (const s of [500, 502, 503, 408, 429]) expect(judgeAnswer(s, headers({}), null)).toEqual({ kind: "refused", status: s, transient: true });
    for (const s of [404, 403, 410]) expect(judgeAnswer(s, headers({}), asked)).toEqual({ kind: "refused", status: s, transient: false });
    expect(judgeAnswer(206, headers(range(0, 10)), null)).toEqual({ kind: "refused", status: 206, transient: false });
    expect(judgeAnswer(416, headers({}), null)).toEqual({ kind: "refused", status: 416, transient: false });
  });
});

test("validatorOf: a strong ETag, else Last-Modified; a weak ETag is no validator of bytes", () => {
  expect(validatorOf(headers({ etag: '"x1"', "last-modified": "Wed, 01 Jan 2026 00:00:00 GMT" }))).toBe('"x1"');
  expect(validatorOf(headers({ etag: 'W/"x1"', "last-modified": "Wed, 01 Jan 2026 00:00:00 GMT" }))).toBe("Wed, 01 Jan 2026 00:00:00 GMT");
  expect(validatorOf(headers({ etag: "unquoted" }))).toBeNull();
  expect(validatorOf(headers({}))).toBeNull();
});

test("parseContentRange", () => {
  expect(parseContentRange("bytes 5-9/10")).toEqual({ first: 5, last: 9, total: 10 });
  expect(parseContentRange("bytes 5-9/*")).toEqual({ first: 5, last: 9, total: null });
  for (const bad of [null, "", "bytes */10", "bytes 9-5/10", "bytes 5-10/10", "items 5-9/10"]) expect(parseContentRange(bad)).toBeNull();
});

test("parsePartialInfo: only a printable validator and a whole size, or null", () => {
  expect(parsePartialInfo('{"validator":"\\"a\\"","total":10}')).toEqual({ validator: '"a"', total: 10 });
  expect(parsePartialInfo('{"validator":"d","total":null}')).toEqual({ validator: "d", total: null });
  for (const bad of ["", "{", "[]", '{"total":1}', '{"validator":"a\\r\\nx: y","total":1}', '{"validator":"a","total":-1}', '{"validator":"a","total":1.5}']) {
    expect(parsePartialInfo(bad)).toBeNull();
  }
});

test("keptBytes: whole blocks only", () => {
  expect([0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 7].map(keptBytes)).toEqual([0, 0, 0, BLOCK, BLOCK, 3 * BLOCK]);
});

describe("partial files on disk", () => {
  const dir = mkdtempSync(join(tmpdir(), "bin-proxy-download-unit-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, "app");
  const [target, other] = [sha("a"), sha("b")];
  const plant = (file: string, content: string | Uint8Array = "") => writeFileSync(join(dir, file), content);

  test("removePartials keeps the target's partial and its info, removes every other and every orphan info or info temp file", () => {
    plant(`.app.${target}.part`, "kept");
    plant(`.app.${target}.part.meta`, '{"validator":"v","total":null}');
    plant(`.app.${other}.part`, "old");
    plant(`.app.${other}.part.meta`);
    plant(`..app.${other}.part.meta.123.tmp`);
    plant(`..app.${target}.part.meta.456.tmp`);
    plant(`.app.${sha("c")}.part.meta`); // its partial is gone
    plant(`.app-extra.${other}.part`); // another binary's
    plant(`..x.${other}.part.meta`); // binary ".x"'s info, not app's
    expect(removePartials(bin, target as Sha256)).toEqual([other]);
    expect(readdirSync(dir).sort()).toEqual([`..x.${other}.part.meta`, `.app-extra.${other}.part`, `.app.${target}.part`, `.app.${target}.part.meta`].sort());
    expect(removePartials(bin)).toEqual([target]);
    expect(existsSync(join(dir, `.app.${target}.part.meta`))).toBe(false);
  });

  test("resumablePartial: the whole blocks kept and the size, only with a validator beside them", () => {
    const partial = partialPath(bin, target);
    expect(resumablePartial(bin, target, MAX)).toBeNull();
    writeFileSync(partial, new Uint8Array(2 * BLOCK + 100));
    expect(resumablePartial(bin, target, MAX)).toBeNull(); // nothing to ask If-Range with
    writeFileSync(`${partial}.meta`, JSON.stringify({ validator: '"v"', total: 10 * BLOCK }));
    expect(resumablePartial(bin, target, MAX)).toEqual({ bytes: 2 * BLOCK, total: 10 * BLOCK, validator: '"v"' });
    writeFileSync(`${partial}.meta`, JSON.stringify({ validator: '"v"', total: 2 * BLOCK + 100 }));
    expect(resumablePartial(bin, target, MAX)).toEqual({ bytes: 2 * BLOCK + 100, total: 2 * BLOCK + 100, validator: '"v"' });
    writeFileSync(partial, new Uint8Array(100));
    expect(resumablePartial(bin, target, MAX)).toBeNull(); // less than a block: nothing would be kept
    // An info that is a symlink (even to a valid one) is never followed.
    writeFileSync(partial, new Uint8Array(BLOCK));
    writeFileSync(join(dir, "elsewhere"), JSON.stringify({ validator: '"v"', total: null }));
    rmSync(`${partial}.meta`);
    symlinkSync(join(dir, "elsewhere"), `${partial}.meta`);
    expect(resumablePartial(bin, target, MAX)).toBeNull();
    // Larger than MAX_DOWNLOAD_BYTES allows: the download starts over, so nothing is shown as kept.
    rmSync(`${partial}.meta`);
    writeFileSync(`${partial}.meta`, JSON.stringify({ validator: '"v"', total: 10 * BLOCK }));
    writeFileSync(partial, new Uint8Array(2 * BLOCK));
    expect(resumablePartial(bin, target, MAX)).toEqual({ bytes: 2 * BLOCK, total: 10 * BLOCK, validator: '"v"' });
    expect(resumablePartial(bin, target, 2 * BLOCK - 1)).toBeNull();
  });

  test("judgePartial: start over, resume from whole blocks, or hash whole, as the download does", () => {
    const info = { validator: '"v"', total: 10 * BLOCK };
    expect(judgePartial(0, info, MAX)).toEqual({ kind: "restart" });
    expect(judgePartial(11 * BLOCK, info, 10 * BLOCK)).toEqual({ kind: "restart" });
    expect(judgePartial(2 * BLOCK + 100, info, MAX)).toEqual({ kind: "resume", kept: 2 * BLOCK });
    expect(judgePartial(10 * BLOCK, info, MAX)).toEqual({ kind: "hash-whole" }); // every byte announced
    expect(judgePartial(2 * BLOCK, null, MAX)).toEqual({ kind: "hash-whole" }); // no validator to resume with
    expect(judgePartial(100, info, MAX)).toEqual({ kind: "hash-whole" }); // not a whole block
  });
});
