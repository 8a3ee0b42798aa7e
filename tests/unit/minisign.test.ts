// Unit tests of signed-release verification (SPEC §9) against signatures and checksum files made by the real minisign and sha256sum.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Sha256 } from "../../lib/hash.ts";
import { parseChecksums, parseSignature, parseTrustedKeys, SignatureError, verifyRelease, type ReleaseCheck, type TrustedKeys } from "../../lib/minisign.ts";
import { artifact } from "../fixture/bin-manager.ts";
import { makeKeyPair, sign, signRelease, timestampComment, type KeyPair, type SignedRelease } from "../fixture/minisign.ts";

const KEYS_FILE = "/etc/bin-proxy/trusted-keys";
const manager = artifact("manager build 2\n");
const worker = artifact("worker build 7\n");
let dir: string;
let key: KeyPair;
let otherKey: KeyPair;
let trusted: TrustedKeys;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "bin-proxy-minisign-"));
  key = makeKeyPair(dir);
  otherKey = makeKeyPair(dir);
  trusted = parseTrustedKeys(key.publicText, KEYS_FILE);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const check = (over: Partial<ReleaseCheck> = {}): ReleaseCheck => ({
  binaryName: "manager",
  cpuArch: "x86_64",
  target: manager.sha256 as Sha256,
  keys: trusted,
  notBefore: null,
  ...over,
});
const verify = (release: SignedRelease, over: Partial<ReleaseCheck> = {}) => verifyRelease(release.checksums, release.signature, check(over));
/** Asserts a SignatureError whose message matches. */
const refused = (run: () => unknown, message: RegExp) => {
  expect(run).toThrow(SignatureError);
  expect(run).toThrow(message);
};
const now = () => Math.floor(Date.now() / 1000);
const text = (s: string) => new TextEncoder().encode(s);

describe("verifyRelease: what is accepted", () => {
  test("a default (ED) signature: returns the key minisign printed and its timestamp", () => {
    const before = now();
    const result = verify(signRelease(dir, "manager", manager, key));
    expect(result.keyId).toBe(key.id);
    expect(result.timestamp).toBeGreaterThanOrEqual(before - 1);
    expect(result.timestamp).toBeLessThanOrEqual(now() + 1);
  });

  test("a legacy Ed signature (minisign -l)", () => {
    const release = signRelease(dir, "manager", manager, key, { legacy: true });
    expect(new TextDecoder().decode(release.signature).split("\n")[1]!.startsWith("RW")).toBe(true); // base64 of "Ed"
    expect(verify(release).keyId).toBe(key.id);
  });

  test("a keys file of two keys (a rotation), signed by the second", () => {
    const both = parseTrustedKeys(otherKey.publicText + key.publicText, KEYS_FILE);
    expect(both.keys.map((k) => k.id)).toEqual([otherKey.id, key.id]);
    expect(verify(signRelease(dir, "manager", manager, key), { keys: both }).keyId).toBe(key.id);
  });

  test("the file name NAME-linux-<cpuArch>, and sha256sum -b's *name marker", () => {
    expect(verify(signRelease(dir, "manager", manager, key, { fileName: "manager-linux-x86_64" })).keyId).toBe(key.id);
    expect(verify(signRelease(dir, "manager", manager, key, { fileName: "manager-linux-aarch64" }), { cpuArch: "aarch64" }).keyId).toBe(key.id);
    expect(verify(signRelease(dir, "manager", manager, key, { binaryMode: true })).keyId).toBe(key.id);
  });

  test("a signature exactly as old as the installed version's", () => {
    const at = now() - 3600;
    expect(verify(signRelease(dir, "manager", manager, key, { trustedComment: timestampComment(at, "manager.sha256") }), { notBefore: at }).timestamp).toBe(at);
  });
});

describe("verifyRelease: each check refuses with a message naming it", () => {
  test("1. a key that is not trusted", () => {
    refused(() => verify(signRelease(dir, "manager", manager, otherKey)), new RegExp(`signed by key ${otherKey.id}, which is not in ${KEYS_FILE} \\(trusted: ${key.id}\\)`));
  });

  test("2. the checksum file changed after signing", () => {
    const release = signRelease(dir, "manager", manager, key);
    const changed = text(new TextDecoder().decode(release.checksums) + `${worker.sha256}  manager\n`);
    refused(() => verify({ ...release, checksums: changed }, { target: worker.sha256 as Sha256 }), /manager\.sha256 does not match its signature manager\.sha256\.minisig .*changed after signing/);
  });

  test("2. a legacy signature of another file", () => {
    const release = signRelease(dir, "manager", manager, key, { legacy: true });
    const other = signRelease(dir, "manager", worker, key, { fileName: "manager" });
    refused(() => verify({ checksums: other.checksums, signature: release.signature }, { target: worker.sha256 as Sha256 }), /does not match its signature/);
  });

  test("3. a trusted comment changed after signing (a later timestamp forged)", () => {
    const release = signRelease(dir, "manager", manager, key);
    const forged = new TextDecoder().decode(release.signature).replace(/timestamp:\d+/, "timestamp:9999999999");
    refused(() => verify({ ...release, signature: text(forged) }), /trusted comment of manager\.sha256\.minisig does not match its global signature .*changed after signing/);
  });

  test("4. a hash signed for another binary (mix-and-match)", () => {
    refused(
      () => verify(signRelease(dir, "worker", manager, key)),
      new RegExp(`manager\\.sha256 names ${manager.sha256.slice(0, 12)}… for 'worker', not 'manager' or 'manager-linux-x86_64'$`),
    );
  });

  test("4. a hash signed for another architecture", () => {
    refused(() => verify(signRelease(dir, "manager", manager, key, { fileName: "manager-linux-aarch64" })), /names .* for 'manager-linux-aarch64' \(a build for another architecture\), not 'manager' or 'manager-linux-x86_64'/);
  });

  test("4. a target the signed file does not list (the API names an unsigned version)", () => {
    const release = signRelease(dir, "manager", manager, key);
    refused(() => verify(release, { target: worker.sha256 as Sha256 }), new RegExp(`lists 'manager' as ${manager.sha256.slice(0, 12)}…, not the target ${worker.sha256.slice(0, 12)}…: the API names a version that was not signed`));
    const elsewhere = signRelease(dir, "worker", worker, key);
    refused(() => verify(elsewhere, { target: "f".repeat(64) as Sha256 }), /does not list the target ffffffffffff… nor any file named 'manager' or 'manager-linux-x86_64'/);
  });

  test("5. a signature older than the installed version's: a rollback", () => {
    const release = signRelease(dir, "manager", manager, key, { trustedComment: timestampComment(1793577600, "manager.sha256") }); // 2026-11-02
    refused(
      () => verify(release, { notBefore: 1795132800 }), // 2026-11-20
      /manager\.sha256 was signed 2026-11-02T00:00:00Z, older than the installed version's signature of 2026-11-20T00:00:00Z: refused as a rollback \(bin-proxy rollback manager goes back on purpose\)/,
    );
  });

  test("5. a trusted comment without a timestamp (minisign -t) cannot be ordered", () => {
    refused(() => verify(signRelease(dir, "manager", manager, key, { trustedComment: "release 2.0" })), /trusted comment of manager\.sha256\.minisig has no timestamp \("release 2\.0"\)/);
  });
});

describe("verifyRelease: files that are not what they claim", () => {
  const good = () => signRelease(dir, "manager", manager, key);

  test.each([
    ["empty", "", /manager\.sha256\.minisig is empty/],
    ["an HTML error page", "<html><body>404</body></html>\n", /is not a minisign signature \(want 4 lines/],
    ["a signature line that is not base64", "untrusted comment: x\n!!!!\ntrusted comment: t\nAAAA\n", /line 2 is not the base64 of a signature/],
    ["no trusted comment", "untrusted comment: x\nRUQ=\nsomething\nAAAA\n", /line 3 does not start with "trusted comment: "/],
    ["a fifth line", "untrusted comment: x\nRUQ=\ntrusted comment: t\nAAAA\nmore\n", /want 4 lines/],
    ["bytes that are not text", new Uint8Array([0xff, 0xfe, 0x00]), /manager\.sha256\.minisig is not text/],
  ])("a .minisig that is %s", (_, body, message) => {
    refused(() => verify({ ...good(), signature: typeof body === "string" ? text(body) : body }), message);
  });

  test("a .minisig of an unknown algorithm", () => {
    const lines = new TextDecoder().decode(good().signature).split("\n");
    const raw = Buffer.from(lines[1]!, "base64");
    raw.write("XX", 0);
    lines[1] = raw.toString("base64");
    refused(() => verify({ ...good(), signature: text(lines.join("\n")) }), /uses signature algorithm "XX"/);
  });

  test("an empty .sha256", () => refused(() => verify({ ...good(), checksums: new Uint8Array() }), /manager\.sha256 is empty/));

  test("a garbage .sha256: refused by its signature", () => {
    refused(() => verify({ ...good(), checksums: text("<html>oops</html>\n") }), /does not match its signature/);
  });

  test.each([
    ["an HTML page", "<html>oops</html>\n", /manager\.sha256 line 1 is not in sha256sum's format \(<64 hex digits>  <file name>\): "<html>oops<\/html>"/],
    ["blank lines only", "\n\n", /manager\.sha256 lists no checksum/],
  ])("a validly signed .sha256 that is %s", (_, body, message) => {
    const path = join(mkdtempSync(join(dir, "garbage-")), "manager.sha256");
    writeFileSync(path, body);
    refused(() => verify({ checksums: readFileSync(path), signature: sign(key, path) }), message);
  });

  test("parseChecksums reads sha256sum's lines, upper-case hex lowered", () => {
    expect(parseChecksums(`${manager.sha256.toUpperCase()}  manager\r\n${worker.sha256} *worker\n`, "x")).toEqual([
      { sha256: manager.sha256 as Sha256, fileName: "manager" },
      { sha256: worker.sha256 as Sha256, fileName: "worker" },
    ]);
  });
});

describe("parseTrustedKeys", () => {
  test("comments and blank lines around the keys are skipped", () => {
    expect(parseTrustedKeys(`\n${key.publicText}\n\n`, KEYS_FILE).keys.map((k) => k.id)).toEqual([key.id]);
  });

  test.each([
    ["empty", "", /holds no minisign public key \(it is empty, or has comments only\)/],
    ["comments only", "untrusted comment: minisign public key 0000000000000000\n", /holds no minisign public key/],
    ["a line that is not base64", "untrusted comment: x\nnot a key\n", new RegExp(`${KEYS_FILE} line 2 is not a minisign public key`)],
    ["a key cut short", "untrusted comment: x\nRWRgL4HyEy7W+om3iP+LSdEXnM1v\n", /line 2 is not a minisign public key/],
  ])("%s is refused", (_, body, message) => {
    expect(() => parseTrustedKeys(body, KEYS_FILE)).toThrow(message);
  });

  test("a secret key given by mistake is named as such, and none of it is quoted", () => {
    const secret = readFileSync(key.secretKey, "utf8");
    const keyLine = secret.split("\n")[1]!;
    for (const text of [secret, keyLine]) {
      let message = "";
      try {
        parseTrustedKeys(text, KEYS_FILE);
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message).toMatch(/line 2 is a minisign secret key: give the public key|line 1 is a minisign secret key/);
      expect(message).not.toContain(keyLine.slice(0, 8));
    }
  });

  test("a signature's key id is read as minisign prints it", () => {
    expect(parseSignature(signRelease(dir, "manager", manager, key).signature, "x").keyId).toBe(key.id);
  });
});
