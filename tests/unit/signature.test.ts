// Tests of signed releases' I/O: the trusted-keys file, fetching checksum files and signatures from the fake bin-manager, and the signed-time store.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError } from "../../lib/config.ts";
import type { Sha256 } from "../../lib/hash.ts";
import type { HttpPolicy } from "../../lib/http.ts";
import { SignatureError, type TrustedKeys } from "../../lib/minisign.ts";
import {
  loadTrustedKeys, readSignatureRecord, signatureRecordPath, signedVersionOf, verifySignedTarget, withPathSuffix, writeSignatureRecord,
  type SignedTargetRequest, type SignedVersion,
} from "../../lib/signature.ts";
import { artifact, garbage, huge, startBinManager, stallHeaders, type BinManager } from "../fixture/bin-manager.ts";
import { makeKeyPair, publishSigned, timestampComment, writeTrustedKeys, type KeyPair } from "../fixture/minisign.ts";

const TOKEN = "tok-signature-test";
const manager = artifact("manager build 3\n");
let dir: string;
let bm: BinManager;
let key: KeyPair;
let keys: TrustedKeys;
let policy: HttpPolicy;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "bin-proxy-signature-"));
  bm = await startBinManager();
  key = makeKeyPair(dir);
  keys = loadTrustedKeys({ path: writeTrustedKeys(join(dir, "trusted-keys"), key), required: true })!;
  policy = { token: TOKEN, tokenOrigin: bm.origin, timeoutMs: 5000, proxy: { http: undefined, https: undefined, noProxy: undefined } };
});
afterAll(async () => {
  await bm.stop();
  rmSync(dir, { recursive: true, force: true });
});

const FILES = ["manager.sha256", "manager.sha256.minisig"];
beforeEach(() => {
  for (const name of FILES) {
    bm.setPrimary(name, null);
    bm.setFallback(name, null);
    bm.override("GET", `/api/v1/download/${name}`, null);
  }
  bm.setTarget("manager", manager);
  bm.clearRequests();
});

const primary = () => `${bm.api}/download/manager?sha256=${manager.sha256}`;
const fallback = () => `${bm.api}/releases/latest/manager/download?sha256=${manager.sha256}`;
const request = (over: Partial<SignedTargetRequest> = {}): SignedTargetRequest => ({
  urls: [primary(), fallback()],
  binaryName: "manager",
  cpuArch: "x86_64",
  target: manager.sha256 as Sha256,
  keys,
  policy,
  notBefore: null,
  ...over,
});
const refusal = async (req: SignedTargetRequest): Promise<SignatureError> => {
  const err = await verifySignedTarget(req).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(SignatureError);
  return err as SignatureError;
};
/** No request for the binary itself: a target that is not validly signed costs no download. */
const noBinaryDownloaded = () => {
  expect(bm.count("GET", "/api/v1/download/manager")).toBe(0);
  expect(bm.count("GET", "/api/v1/releases/latest/manager/download")).toBe(0);
};

describe("withPathSuffix", () => {
  test("appends to the path and keeps the query", () => {
    expect(withPathSuffix("https://h/api/download/manager?sha256=ab&x=1", ".sha256")).toBe("https://h/api/download/manager.sha256?sha256=ab&x=1");
    expect(withPathSuffix("https://h/releases/latest/m/download", ".sha256.minisig")).toBe("https://h/releases/latest/m/download.sha256.minisig");
  });
});

describe("verifySignedTarget against the fake bin-manager", () => {
  test("a release signed on the primary: verified from its two small files, query kept, token sent to the API", async () => {
    publishSigned(bm, dir, "manager", manager, key);
    const result = await verifySignedTarget(request());
    expect(result).toMatchObject({ url: primary(), keyId: key.id });
    const asked = bm.requests.map((r) => [r.path, r.query.sha256, r.headers.authorization]);
    expect(asked.sort()).toEqual([
      ["/api/v1/download/manager.sha256", manager.sha256, `Bearer ${TOKEN}`],
      ["/api/v1/download/manager.sha256.minisig", manager.sha256, `Bearer ${TOKEN}`],
    ]);
    noBinaryDownloaded();
  });

  test("no .minisig on the primary (404): the fallback's files are tried, and verify", async () => {
    publishSigned(bm, dir, "manager", manager, key);
    bm.setPrimary("manager.sha256.minisig", null);
    const failed: string[] = [];
    const result = await verifySignedTarget(request({ onAttemptFailed: (url, reason) => failed.push(`${url} ${reason}`) }));
    expect(result.url).toBe(fallback());
    expect(failed).toEqual([`${primary()} manager.sha256.minisig: HTTP 404 (not published beside the binary)`]);
    expect(bm.count("GET", "/api/v1/releases/latest/manager/download.sha256.minisig")).toBe(1);
    noBinaryDownloaded();
  });

  test("no signature anywhere: one SignatureError naming both URLs, no download", async () => {
    const err = await refusal(request());
    expect(err.message).toMatch(new RegExp(`^no valid signature for manager ${manager.sha256.slice(0, 12)}: `));
    expect(err.message).toContain(`${bm.api}/download/manager: manager.sha256: HTTP 404 (not published beside the binary); manager.sha256.minisig: HTTP 404`);
    expect(err.message).toContain(`${bm.api}/releases/latest/manager/download: manager.sha256: HTTP 404`);
    expect(err.message).not.toContain("?sha256="); // URLs are logged without their query
    noBinaryDownloaded();
  });

  test("a check that fails on both URLs is named for each", async () => {
    publishSigned(bm, dir, "manager", manager, key, { fileName: "worker" });
    const err = await refusal(request());
    expect(err.message.match(/manager\.sha256 names [0-9a-f]{12}… for 'worker', not 'manager' or 'manager-linux-x86_64'/g)).toHaveLength(2);
    noBinaryDownloaded();
  });

  test.each([
    ["a .minisig of 5 MiB", "manager.sha256.minisig", /manager\.sha256\.minisig: body of \d+ bytes is over the 4096-byte limit/],
    ["a .sha256 of 5 MiB", "manager.sha256", /manager\.sha256: body of \d+ bytes is over the 65536-byte limit/],
  ])("%s is refused by its announced size, unread", async (_, name, message) => {
    publishSigned(bm, dir, "manager", manager, key);
    bm.setPrimary(name, huge(5 * 1024 * 1024));
    bm.setFallback(name, huge(5 * 1024 * 1024));
    expect((await refusal(request())).message).toMatch(message);
    noBinaryDownloaded();
  });

  test("an endless .sha256 that announces no size is cut at the cap", async () => {
    publishSigned(bm, dir, "manager", manager, key);
    const chunk = new Uint8Array(16384).fill(0x61);
    bm.override("GET", "/api/v1/download/manager.sha256", () => new Response(new ReadableStream({ pull: (c) => c.enqueue(chunk.slice()) })));
    const failed: string[] = [];
    const result = await verifySignedTarget(request({ onAttemptFailed: (_, reason) => failed.push(reason) }));
    expect(failed).toEqual(["manager.sha256: body is over the 65536-byte limit"]);
    expect(result.url).toBe(fallback());
  });

  test("a .minisig that is an HTML error page, and one that never answers", async () => {
    publishSigned(bm, dir, "manager", manager, key);
    bm.setPrimary("manager.sha256.minisig", garbage());
    bm.setFallback("manager.sha256.minisig", stallHeaders());
    const err = await refusal(request({ policy: { ...policy, timeoutMs: 300 } }));
    expect(err.message).toContain(`${bm.api}/download/manager: manager.sha256.minisig is not a minisign signature`);
    expect(err.message).toContain(`${bm.api}/releases/latest/manager/download: GET ${bm.api}/releases/latest/manager/download.sha256.minisig: timed out`);
  });

  test("the installed version's signed time refuses an older signature: a rollback", async () => {
    const stateDir = mkdtempSync(join(dir, "state-"));
    const installed = { version: "a".repeat(64) as Sha256, timestamp: 1795132800, keyId: key.id };
    writeSignatureRecord(stateDir, "manager", installed, null);
    const notBefore = signedVersionOf(readSignatureRecord(stateDir, "manager"), installed.version)?.timestamp ?? null;
    publishSigned(bm, dir, "manager", manager, key, { trustedComment: timestampComment(1793577600, "manager.sha256") });
    const err = await refusal(request({ notBefore }));
    expect(err.message).toContain("manager.sha256 was signed 2026-11-02T00:00:00Z, older than the installed version's signature of 2026-11-20T00:00:00Z: refused as a rollback");
    publishSigned(bm, dir, "manager", manager, key); // signed now: newer
    expect((await verifySignedTarget(request({ notBefore }))).timestamp).toBeGreaterThan(1795132800);
  });
});

describe("loadTrustedKeys", () => {
  const file = (name: string, text: string) => {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  };

  test("the default file missing: null (not signature-checked)", () => {
    expect(loadTrustedKeys({ path: join(dir, "no-such-default"), required: false })).toBeNull();
  });

  test("two keys, for a rotation", () => {
    const next = makeKeyPair(dir);
    const loaded = loadTrustedKeys({ path: writeTrustedKeys(join(dir, "two-keys"), key, next), required: true });
    expect(loaded!.keys.map((k) => k.id)).toEqual([key.id, next.id]);
  });

  test.each([
    ["a named file that is missing", () => ({ path: join(dir, "missing-keys"), required: true }), /^cannot read BIN_PROXY_TRUSTED_KEYS .*missing-keys: ENOENT/],
    ["a named file that is empty", () => ({ path: file("empty-keys", ""), required: true }), /^BIN_PROXY_TRUSTED_KEYS: .*empty-keys holds no minisign public key/],
    ["a named file with a malformed key", () => ({ path: file("bad-keys", "untrusted comment: k\nRWQ-not-a-key\n"), required: true }), /^BIN_PROXY_TRUSTED_KEYS: .*bad-keys line 2 is not a minisign public key/],
    ["the default file, present but malformed", () => ({ path: file("bad-default", "hello\n"), required: false }), /bad-default line 1 is not a minisign public key/],
    ["the default path, a directory", () => ({ path: mkdtempSync(join(dir, "keys-dir-")), required: false }), /^cannot read trusted-keys file .*EISDIR/],
  ])("%s is a ConfigError", (_, choice, message) => {
    const run = () => loadTrustedKeys(choice());
    expect(run).toThrow(ConfigError);
    expect(run).toThrow(message);
  });
});

describe("the signed-time store", () => {
  const A = "a".repeat(64) as Sha256;
  const B = "b".repeat(64) as Sha256;
  const C = "c".repeat(64) as Sha256;
  const signedA: SignedVersion = { version: A, timestamp: 1795000000, keyId: "1A2B3C4D5E6F7081" };
  const signedB: SignedVersion = { version: B, timestamp: 1795100000, keyId: "1A2B3C4D5E6F7081" };
  let stateDir: string;
  beforeEach(() => {
    stateDir = mkdtempSync(join(dir, "state-"));
  });

  test("nothing recorded: none, so no constraint", () => {
    const stored = readSignatureRecord(stateDir, "manager");
    expect(stored).toEqual({ kind: "none" });
    expect(signedVersionOf(stored, A)).toBeNull();
  });

  test("a record covers the version installed and the one it replaced (after a rollback), nothing else", () => {
    writeSignatureRecord(stateDir, "manager", signedB, signedA);
    expect(readdirSync(stateDir)).toEqual(["signatures"]);
    expect(readdirSync(join(stateDir, "signatures"))).toEqual(["manager.json"]);
    const stored = readSignatureRecord(stateDir, "manager");
    expect(signedVersionOf(stored, B)).toEqual(signedB);
    expect(signedVersionOf(stored, A)).toEqual(signedA);
    expect(signedVersionOf(stored, C)).toBeNull();
    expect(signedVersionOf(stored, null)).toBeNull();
  });

  test("re-recording the same version keeps no previous of itself", () => {
    writeSignatureRecord(stateDir, "manager", signedA, signedA);
    const stored = readSignatureRecord(stateDir, "manager");
    expect(stored).toEqual({ kind: "found", record: { ...signedA, previous: null } });
  });

  test.each([
    ["not JSON", "{", /not valid JSON/],
    ["a version that is not a hash", JSON.stringify({ ...signedA, version: "v1" }), /want \{version/],
    ["a timestamp that is not a number", JSON.stringify({ ...signedA, timestamp: "yesterday" }), /want \{version/],
    ["a bad previous", JSON.stringify({ ...signedA, previous: { version: B } }), /want \{version/],
  ])("a record that is %s is invalid: no constraint, a reason for the log", (_, text, reason) => {
    mkdirSync(join(stateDir, "signatures"));
    writeFileSync(signatureRecordPath(stateDir, "manager"), text);
    const stored = readSignatureRecord(stateDir, "manager");
    expect(stored.kind).toBe("invalid");
    expect(stored.kind === "invalid" && stored.reason).toMatch(reason);
    expect(signedVersionOf(stored, A)).toBeNull();
  });

  test("a symlink planted as the record is not followed", () => {
    mkdirSync(join(stateDir, "signatures"));
    const elsewhere = join(dir, "elsewhere.json");
    writeFileSync(elsewhere, JSON.stringify(signedA));
    symlinkSync(elsewhere, signatureRecordPath(stateDir, "manager"));
    const stored = readSignatureRecord(stateDir, "manager");
    expect(stored.kind === "invalid" && stored.reason).toMatch(/ELOOP/);
    writeSignatureRecord(stateDir, "manager", signedB, null); // replaces the link, never writes through it
    expect(JSON.parse(readFileSync(elsewhere, "utf8"))).toEqual(signedA);
    expect(signedVersionOf(readSignatureRecord(stateDir, "manager"), B)).toEqual(signedB);
  });

  test("a name that is not a plain file name never reaches a path", () => {
    expect(() => signatureRecordPath(stateDir, "../escape")).toThrow(/not a plain name/);
    expect(() => writeSignatureRecord(stateDir, "..", signedA, null)).toThrow(/not a plain name/);
  });
});
