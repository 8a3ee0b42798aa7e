// End-to-end tests of signed releases (SPEC §9) against the compiled executable: signatures made by the real minisign, checked before a byte of the binary is fetched.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { API_PREFIX, artifact, startBinManager, type Artifact, type BinManager } from "../fixture/bin-manager.ts";
import { selfUpdateBuilds, hostPool, runBinProxy, serviceScript, type Host } from "../fixture/host.ts";
import { makeKeyPair, publishSigned, requireMinisign, sign, timestampComment, writeTrustedKeys, type ChecksumOptions, type KeyPair, type SignOptions } from "../fixture/minisign.ts";
import { formatSignedTime } from "../../lib/minisign.ts";
import { events, MANIFEST_LOCK, sha256 } from "./invariants.ts";

const MIB = 1 << 20;
/** This host's architecture as `uname -m` prints it, and one it is not. */
const ARCH = Bun.spawnSync(["uname", "-m"]).stdout.toString().trim();
const OTHER_ARCH = ARCH === "aarch64" ? "x86_64" : "aarch64";
/** Signing times of the rollback cases, as the README's example has them. */
const NOV_02 = Date.parse("2026-11-02T00:00:00Z") / 1000;
const NOV_10 = Date.parse("2026-11-10T00:00:00Z") / 1000;
const NOV_20 = Date.parse("2026-11-20T00:00:00Z") / 1000;

let scratch: string;
let bm: BinManager;
const hosts = hostPool();
/** The release key every world trusts; a second one for a rotation; one no host trusts. */
let release: KeyPair;
let rotated: KeyPair;
let stranger: KeyPair;

beforeAll(async () => {
  requireMinisign();
  scratch = mkdtempSync(join(tmpdir(), "bin-proxy-signatures-test-"));
  bm = await startBinManager();
  release = makeKeyPair(scratch);
  rotated = makeKeyPair(scratch);
  stranger = makeKeyPair(scratch);
});

afterAll(async () => {
  await bm?.stop();
  hosts.cleanup();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

const short = (a: Artifact) => a.sha256.slice(0, 12);
const primary = (name: string) => `${API_PREFIX}/download/${name}`;
const fallback = (name: string) => `${API_PREFIX}/releases/latest/${name}/download`;
/** GETs of the binary itself (the paths without a suffix): what a refused target must never cost. */
const binaryGets = (name: string) => bm.count("GET", primary(name)) + bm.count("GET", fallback(name));
const gets = (path: string) => bm.count("GET", path);

/** One host managing one binary (`appN`, or bin-proxy itself) at `installed`, trusting the keys file `keysFile`. */
interface World {
  host: Host;
  name: string;
  binPath: string;
  keysFile: string;
  installed: Artifact;
  /** The bin-proxy that runs the passes: dist/bin-proxy, or an installed copy for self-update. */
  executable?: string;
}

let seq = 0;

function world(trusted: KeyPair[] = [release]): World {
  const host = hosts.make();
  const name = `app${++seq}`;
  const installed = artifact(serviceScript({ tag: `${name} v1` }));
  const binPath = host.writeBinary(name, installed.bytes);
  host.writeManifest([{ serviceName: "", binaryName: name, version: installed.sha256, previousVersion: "", port: 0 }]);
  return { host, name, binPath, keysFile: writeTrustedKeys(join(host.root, "etc", "trusted-keys"), ...trusted), installed };
}

const build = (w: World, tag: string) => artifact(serviceScript({ tag: `${w.name} ${tag}` }));
const env = (w: World, extra: Record<string, string> = {}) => w.host.env(bm.api, { BIN_PROXY_TRUSTED_KEYS: w.keysFile, ...extra });
const run = (w: World, args: string[] = [], extra: Record<string, string> = {}) => runBinProxy(args, env(w, extra), { executable: w.executable });
const entryOf = (w: World) => w.host.readManifest().binaries.find((b) => b.binaryName === w.name)!;
const recordPath = (w: World) => join(w.host.stateDir, "signatures", `${w.name}.json`);
const record = (w: World) => JSON.parse(readFileSync(recordPath(w), "utf8"));
/** The `timestamp:` minisign wrote into a signature's trusted comment. */
const signedAt = (signature: Uint8Array) => Number(/^trusted comment: timestamp:(\d+)/m.exec(new TextDecoder().decode(signature))![1]);

/** The API names art; with a signer, its checksum file and signature are published beside both download URLs. */
function offer(w: World, art: Artifact, signer?: KeyPair, opts: ChecksumOptions & SignOptions = {}) {
  bm.setTarget(w.name, art);
  for (const suffix of [".sha256", ".sha256.minisig"]) serveBeside(w.name, suffix, null);
  return signer ? publishSigned(bm, scratch, w.name, art, signer, opts) : null;
}

/** Serves bytes as `NAME{suffix}` beside both download URLs (null: not published there). */
function serveBeside(name: string, suffix: string, bytes: Uint8Array | null): void {
  bm.setPrimary(name + suffix, bytes);
  bm.setFallback(name + suffix, bytes);
}

/** What any pass adds under the host root: the log, the hash cache and the manifest's lock. */
const withPassFiles = (before: string[]) => [...new Set([...before, "log/bin-proxy.log", "state/hash-cache.json", `lock/${MANIFEST_LOCK}`])].sort();

/** A pass that installs `to` from `from`, signed by signer: one download, the signed time kept. */
async function expectInstalls(w: World, from: Artifact, to: Artifact, signer: KeyPair, signature: Uint8Array): Promise<void> {
  bm.clearRequests();
  const r = await run(w);
  if (r.code !== 0) throw new Error(`the pass exited ${r.code}:\n${r.stderr}\n${w.host.log()}`);
  expect(sha256(readFileSync(w.binPath))).toBe(to.sha256);
  expect(entryOf(w)).toMatchObject({ version: to.sha256, previousVersion: from.sha256 });
  expect(entryOf(w).hold).toBeUndefined();
  expect(binaryGets(w.name)).toBe(1);
  expect(record(w)).toMatchObject({ version: to.sha256, timestamp: signedAt(signature), keyId: signer.id });
  // The log says which key signed what was installed, and when it was signed.
  expect(events(w.host, "signature_verified").at(-1)).toMatchObject({ bin: w.name, target: to.sha256.slice(0, 12), key: signer.id, signed: formatSignedTime(signedAt(signature)) });
  // status says the same signed time, offline, and that signatures are required.
  const status = JSON.parse((await run(w, ["status", "--json"])).stdout) as { signaturesRequired: boolean; binaries: { name: string; signedAt: string | null }[] };
  expect(status.signaturesRequired).toBe(true);
  expect(status.binaries.find((b) => b.name === w.name)!.signedAt).toBe(formatSignedTime(signedAt(signature)));
}

/**
 * A pass refused target in its signature step: exit 1, the binary byte-identical, nothing left
 * behind, the manifest valid with target held, one log line naming the check, and not one GET of
 * the binary. Returns the line's error.
 */
async function expectRefused(w: World, target: Artifact, check: RegExp): Promise<string> {
  const before = w.host.listFiles();
  const recordBefore = existsSync(recordPath(w)) ? readFileSync(recordPath(w), "utf8") : null;
  bm.clearRequests();
  const r = await run(w);
  expect(r.code).toBe(1);
  expect(binaryGets(w.name)).toBe(0);
  expect(sha256(readFileSync(w.binPath))).toBe(w.installed.sha256);
  expect(w.host.listFiles()).toEqual(withPassFiles(before));
  expect(existsSync(recordPath(w)) ? readFileSync(recordPath(w), "utf8") : null).toBe(recordBefore);
  const entry = entryOf(w);
  expect(entry.version).toBe(w.installed.sha256);
  expect(entry.hold).toMatchObject({ version: target.sha256, failures: 1 });
  const failed = events(w.host, "update_failed").filter((e) => e.target === short(target));
  expect(failed).toHaveLength(1);
  expect(failed[0]).toMatchObject({ level: "error", bin: w.name, phase: "signature" });
  expect(failed[0]!.error).toMatch(check);
  expect(r.stderr).toContain(`bin=${w.name} event=update_failed phase=signature target=${short(target)}`);
  return failed[0]!.error!;
}

describe("a validly signed target is installed", () => {
  test("a default (ED) signature: the two small files are fetched first, then the binary, and its signed time is kept", async () => {
    const w = world();
    const next = build(w, "v2");
    const signed = offer(w, next, release)!;
    await expectInstalls(w, w.installed, next, release, signed.signature);
    expect(record(w)).toEqual({ version: next.sha256, timestamp: signedAt(signed.signature), keyId: release.id, previous: null });
    // Before the binary, and only the primary URL's files: the fallback's are not needed.
    const order = bm.requests.filter((q) => q.method === "GET" && q.path.startsWith(primary(w.name))).map((q) => q.path.slice(primary(w.name).length));
    expect(order.slice(-1)).toEqual([""]);
    expect(order.slice(0, -1).sort()).toEqual([".sha256", ".sha256.minisig"]);
    for (const q of bm.requests.filter((q) => q.path.startsWith(primary(w.name)))) expect(q.query).toEqual({ sha256: next.sha256 });
    expect(gets(fallback(w.name) + ".sha256") + gets(fallback(w.name) + ".sha256.minisig")).toBe(0);
    expect(w.host.log()).toMatch(new RegExp(`bin=${w.name} event=updated from=${short(w.installed)} to=${short(next)}`));
  });

  test("a signature record that cannot be read is ignored with a warning (no rollback limit then) and written anew by the update", async () => {
    const w = world();
    const v2 = build(w, "v2");
    await expectInstalls(w, w.installed, v2, release, offer(w, v2, release)!.signature);
    w.installed = v2;
    writeFileSync(recordPath(w), "{ not a record");
    const v3 = build(w, "v3");
    const signed = offer(w, v3, release)!;
    await expectInstalls(w, v2, v3, release, signed.signature);
    expect(events(w.host, "signature_record_ignored")).toHaveLength(1);
    expect(record(w)).toEqual({ version: v3.sha256, timestamp: signedAt(signed.signature), keyId: release.id, previous: null });
  });

  test("a keys file with two keys (a rotation), signed by the second", async () => {
    const w = world([release, rotated]);
    const next = build(w, "v2");
    const signed = offer(w, next, rotated)!;
    await expectInstalls(w, w.installed, next, rotated, signed.signature);
  });

  test("a legacy Ed signature (minisign -l)", async () => {
    const w = world();
    const next = build(w, "v2");
    const signed = offer(w, next, release, { legacy: true })!;
    await expectInstalls(w, w.installed, next, release, signed.signature);
  });

  test.each([
    [`the file name NAME-linux-${ARCH} (this host's architecture)`, (name: string): ChecksumOptions => ({ fileName: `${name}-linux-${ARCH}` })],
    ["sha256sum -b's binary-mode line (*NAME)", (): ChecksumOptions => ({ binaryMode: true })],
  ])("a checksum line with %s", async (_, opts) => {
    const w = world();
    const next = build(w, "v2");
    const signed = offer(w, next, release, opts(w.name))!;
    await expectInstalls(w, w.installed, next, release, signed.signature);
  });

  test("no .sha256.minisig on the primary URL: refused there, the fallback's files verify, and the binary is still fetched from the primary", async () => {
    const w = world();
    const next = build(w, "v2");
    const signed = offer(w, next, release)!;
    bm.setPrimary(`${w.name}.sha256.minisig`, null);
    await expectInstalls(w, w.installed, next, release, signed.signature);
    expect(gets(primary(w.name) + ".sha256.minisig")).toBe(1);
    expect(gets(fallback(w.name) + ".sha256")).toBe(1);
    expect(gets(fallback(w.name) + ".sha256.minisig")).toBe(1);
    // The download is bound by the signed hash whichever URL serves it: the code tries the primary first.
    expect(gets(primary(w.name))).toBe(1);
    expect(gets(fallback(w.name))).toBe(0);
    expect(readFileSync(w.binPath)).toEqual(Buffer.from(next.bytes));
    const attempts = events(w.host, "signature_attempt_failed");
    expect(attempts).toHaveLength(1);
    expect(attempts[0]).toMatchObject({ level: "warn", bin: w.name });
    expect(attempts[0]!.reason).toBe(`${w.name}.sha256.minisig: HTTP 404 (not published beside the binary)`);
  });
});

describe("a target not validly signed is refused before any download, and held", () => {
  test("no signature anywhere: both URLs' files are tried", async () => {
    const w = world();
    const next = build(w, "v2");
    offer(w, next);
    const error = await expectRefused(w, next, new RegExp(`^no valid signature for ${w.name} ${short(next)}: `));
    for (const base of [primary(w.name), fallback(w.name)]) {
      expect(gets(base + ".sha256")).toBe(1);
      expect(gets(base + ".sha256.minisig")).toBe(1);
      expect(error).toContain(`${bm.origin}${base}: ${w.name}.sha256: HTTP 404 (not published beside the binary); ${w.name}.sha256.minisig: HTTP 404`);
    }
    // The URLs are named without their query.
    expect(error).not.toContain("?sha256=");
    // Held: the next pass asks for nothing of it, not even the small files.
    bm.clearRequests();
    expect((await run(w)).code).toBe(0);
    expect(bm.requests.filter((q) => q.path.startsWith(primary(w.name)) || q.path.startsWith(fallback(w.name)))).toEqual([]);
  });

  test("the checksum file changed after signing", async () => {
    const w = world();
    const next = build(w, "v2");
    const signed = offer(w, next, release)!;
    const extra = new TextEncoder().encode(`${"0".repeat(64)}  ${w.name}\n`);
    serveBeside(w.name, ".sha256", Buffer.concat([signed.checksums, extra]));
    await expectRefused(w, next, new RegExp(`${w.name}\\.sha256 does not match its signature ${w.name}\\.sha256\\.minisig by key ${release.id}: the file was changed after signing`));
  });

  test("a tampered trusted comment (a forged timestamp)", async () => {
    const w = world();
    const next = build(w, "v2");
    const signed = offer(w, next, release)!;
    const forged = new TextDecoder().decode(signed.signature).replace(/timestamp:\d+/, "timestamp:9999999999");
    serveBeside(w.name, ".sha256.minisig", new TextEncoder().encode(forged));
    await expectRefused(w, next, new RegExp(`the trusted comment of ${w.name}\\.sha256\\.minisig does not match its global signature \\(key ${release.id}\\): the comment was changed after signing`));
  });

  test("a key the host does not trust", async () => {
    const w = world();
    const next = build(w, "v2");
    offer(w, next, stranger);
    await expectRefused(w, next, new RegExp(`${w.name}\\.sha256\\.minisig is signed by key ${stranger.id}, which is not in ${w.keysFile} \\(trusted: ${release.id}\\)`));
  });

  test("a checksum line for another binary's name (mix-and-match)", async () => {
    const w = world();
    const next = build(w, "v2");
    offer(w, next, release, { fileName: "worker" });
    await expectRefused(w, next, new RegExp(`${w.name}\\.sha256 names ${short(next)}… for 'worker', not '${w.name}' or '${w.name}-linux-${ARCH}'`));
  });

  test(`a checksum line for another architecture's file (NAME-linux-${OTHER_ARCH} on ${ARCH})`, async () => {
    const w = world();
    const next = build(w, "v2");
    offer(w, next, release, { fileName: `${w.name}-linux-${OTHER_ARCH}` });
    await expectRefused(w, next, new RegExp(`names ${short(next)}… for '${w.name}-linux-${OTHER_ARCH}' \\(a build for another architecture\\), not '${w.name}' or '${w.name}-linux-${ARCH}'`));
  });

  test("a compromised API naming a hash the signed checksum file does not list", async () => {
    const w = world();
    const genuine = build(w, "v2");
    const evil = build(w, "v2 with a backdoor");
    offer(w, genuine, release);
    bm.setTarget(w.name, evil);
    await expectRefused(w, evil, new RegExp(`${w.name}\\.sha256 lists '${w.name}' as ${short(genuine)}…, not the target ${short(evil)}…: the API names a version that was not signed`));
  });

  test("a signature older than the installed version's: refused as a rollback", async () => {
    const w = world();
    const newer = build(w, "v3");
    const signed = offer(w, newer, release, { trustedComment: timestampComment(NOV_20, `${w.name}.sha256`) })!;
    await expectInstalls(w, w.installed, newer, release, signed.signature);
    w.installed = newer;
    const older = build(w, "v2");
    offer(w, older, release, { trustedComment: timestampComment(NOV_02, `${w.name}.sha256`) });
    await expectRefused(
      w, older,
      new RegExp(`${w.name}\\.sha256 was signed 2026-11-02T00:00:00Z, older than the installed version's signature of 2026-11-20T00:00:00Z: refused as a rollback \\(bin-proxy rollback ${w.name} goes back on purpose\\)`),
    );
    expect(record(w)).toMatchObject({ version: newer.sha256, timestamp: NOV_20 });
  });

  const junk = new TextEncoder().encode("<html><body>404 Not Found</body></html>\n");
  const fiveMiB = new Uint8Array(5 * MIB).fill(0x41);
  test.each([
    [".sha256.minisig", "garbage (an HTML page)", junk, "\\.sha256\\.minisig is not a minisign signature \\(want 4 lines"],
    [".sha256.minisig", "empty", new Uint8Array(0), "\\.sha256\\.minisig is empty"],
    [".sha256.minisig", "5 MiB", fiveMiB, `\\.sha256\\.minisig: body of ${5 * MIB} bytes is over the 4096-byte limit`],
    [".sha256", "garbage (an HTML page)", junk, "\\.sha256 does not match its signature"],
    [".sha256", "empty", new Uint8Array(0), "\\.sha256 is empty"],
    [".sha256", "5 MiB", fiveMiB, `\\.sha256: body of ${5 * MIB} bytes is over the 65536-byte limit`],
  ])("a %s that is %s", async (suffix, _, bytes, check) => {
    const w = world();
    const next = build(w, "v2");
    offer(w, next, release);
    serveBeside(w.name, suffix, bytes);
    await expectRefused(w, next, new RegExp(`${w.name}${check}`));
  });

  test("a validly signed .sha256 that is not in sha256sum's format", async () => {
    const w = world();
    const next = build(w, "v2");
    offer(w, next, release);
    const file = join(mkdtempSync(join(scratch, "junk-")), `${w.name}.sha256`);
    writeFileSync(file, junk);
    const signature = sign(release, file);
    serveBeside(w.name, ".sha256", junk);
    serveBeside(w.name, ".sha256.minisig", signature);
    await expectRefused(w, next, new RegExp(`${w.name}\\.sha256 line 1 is not in sha256sum's format`));
  });
});

describe("a bad trusted-keys file is a configuration error: exit 2, nothing asked, nothing touched", () => {
  test.each([
    ["malformed", "untrusted comment: minisign public key\nnot-a-key-at-all\n", /is not a minisign public key/],
    ["empty", "", /holds no minisign public key \(it is empty/],
    ["a secret key given by mistake", null, /is a minisign secret key: give the public key/],
    ["missing", undefined, /cannot read BIN_PROXY_TRUSTED_KEYS .*(ENOENT|no such file)/i],
  ])("%s", async (_, text, cause) => {
    const w = world();
    if (text === undefined) rmSync(w.keysFile);
    else writeFileSync(w.keysFile, text ?? readFileSync(release.secretKey));
    const next = build(w, "v2");
    offer(w, next, release);
    const manifest = readFileSync(w.host.manifest, "utf8");
    const before = w.host.listFiles();
    bm.clearRequests();
    const r = await run(w);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("event=trusted_keys_invalid");
    expect(r.stderr).toMatch(cause);
    expect(events(w.host, "trusted_keys_invalid")[0]!.error).toMatch(cause);
    expect(bm.requests).toEqual([]);
    expect(readFileSync(w.host.manifest, "utf8")).toBe(manifest);
    expect(sha256(readFileSync(w.binPath))).toBe(w.installed.sha256);
    expect(w.host.listFiles()).toEqual([...new Set([...before, "log/bin-proxy.log"])].sort());
  });
});

describe("--dry-run says whether the signature verifies, fetching the two small files only", () => {
  async function dryRun(w: World): Promise<string> {
    const manifest = readFileSync(w.host.manifest, "utf8");
    const before = w.host.listFiles();
    bm.clearRequests();
    const r = await run(w, ["--dry-run"]);
    expect(r.code).toBe(0);
    expect(binaryGets(w.name)).toBe(0);
    expect(gets(primary(w.name) + ".sha256")).toBe(1);
    expect(gets(primary(w.name) + ".sha256.minisig")).toBe(1);
    expect(bm.requests.filter((q) => q.method !== "GET")).toEqual([]);
    expect(readFileSync(w.host.manifest, "utf8")).toBe(manifest);
    expect(w.host.listFiles()).toEqual(before);
    return r.stdout;
  }

  test("verifies: names the key and the signed time", async () => {
    const w = world();
    const next = build(w, "v2");
    offer(w, next, release, { trustedComment: timestampComment(NOV_20, `${w.name}.sha256`) });
    expect(await dryRun(w)).toBe(`${w.name}: would update ${short(w.installed)} -> ${short(next)}; signature verifies (key ${release.id}, signed 2026-11-20T00:00:00Z)\n`);
  });

  test("refused: says why", async () => {
    const w = world();
    const next = build(w, "v2");
    offer(w, next, stranger);
    const out = await dryRun(w);
    expect(out).toStartWith(`${w.name}: would update ${short(w.installed)} -> ${short(next)}; signature refused: no valid signature for ${w.name} ${short(next)}: `);
    expect(out).toContain(`is signed by key ${stranger.id}, which is not in ${w.keysFile}`);
    expect(out.split("\n")).toHaveLength(2);
  });
});

test("rollback NAME goes back to an older signed version (the operator's decision); the next pass's limit is the restored version's signed time", async () => {
  const w = world();
  const v2 = build(w, "v2");
  const v3 = build(w, "v3");
  let signed = offer(w, v2, release, { trustedComment: timestampComment(NOV_02, `${w.name}.sha256`) })!;
  await expectInstalls(w, w.installed, v2, release, signed.signature);
  signed = offer(w, v3, release, { trustedComment: timestampComment(NOV_20, `${w.name}.sha256`) })!;
  await expectInstalls(w, v2, v3, release, signed.signature);
  expect(record(w).previous).toEqual({ version: v2.sha256, timestamp: NOV_02, keyId: release.id });

  bm.clearRequests();
  const back = await run(w, ["rollback", w.name]);
  if (back.code !== 0) throw new Error(`rollback exited ${back.code}:\n${back.stderr}\n${w.host.log()}`);
  expect(sha256(readFileSync(w.binPath))).toBe(v2.sha256);
  expect(entryOf(w)).toMatchObject({ version: v2.sha256, previousVersion: v3.sha256, hold: { version: v3.sha256 } });
  expect(binaryGets(w.name)).toBe(0); // from the kept backup
  w.installed = v2;

  // Older than v2's own signature: refused, and the message names v2's time, not v3's.
  const v1b = build(w, "v1 signed again, before v2");
  offer(w, v1b, release, { trustedComment: timestampComment(NOV_02 - 86_400, `${w.name}.sha256`) });
  await expectRefused(w, v1b, /was signed 2026-11-01T00:00:00Z, older than the installed version's signature of 2026-11-02T00:00:00Z: refused as a rollback/);

  // Between v2 and v3: refused while v3 was installed, accepted now that v2 is.
  const v2b = build(w, "v2.1");
  signed = offer(w, v2b, release, { trustedComment: timestampComment(NOV_10, `${w.name}.sha256`) })!;
  await expectInstalls(w, v2, v2b, release, signed.signature);
  expect(record(w)).toEqual({ version: v2b.sha256, timestamp: NOV_10, keyId: release.id, previous: { version: v2.sha256, timestamp: NOV_02, keyId: release.id } });
});

describe("self-update follows the same rules", () => {
  const NAME = "bin-proxy";
  /** Stamped into the new build, so its --version tells it apart from the running one. */
  const NEXT_COMMIT = "next-signed-release";
  let current: Artifact;
  let currentPath: string;
  let next: Artifact;

  beforeAll(async () => {
    ({ next, current, currentPath } = await selfUpdateBuilds(scratch, NEXT_COMMIT));
  }, 300_000);

  /** A host whose bin-proxy, installed in a directory of its own, manages itself. */
  function selfWorld(): World {
    const host = hosts.make();
    const exe = join(host.root, "sbin", NAME);
    mkdirSync(dirname(exe));
    copyFileSync(currentPath, exe);
    chmodSync(exe, 0o755);
    host.writeManifest([{ serviceName: "", binaryName: NAME, version: current.sha256, previousVersion: "", port: 0 }]);
    return { host, name: NAME, binPath: exe, keysFile: writeTrustedKeys(join(host.root, "etc", "trusted-keys"), release), installed: current, executable: exe };
  }

  const versionOf = async (exe: string) => (await runBinProxy(["--version"], {}, { executable: exe })).stdout;

  test("a signed new bin-proxy replaces the running one", async () => {
    const w = selfWorld();
    const signed = offer(w, next, release, { fileName: `${NAME}-linux-${ARCH}` })!;
    await expectInstalls(w, current, next, release, signed.signature);
    expect(await versionOf(w.binPath)).toContain(`commit ${NEXT_COMMIT}`);
    expect(readdirSync(dirname(w.binPath))).toEqual([NAME]);
  }, 120_000);

  test("an unsigned new bin-proxy is refused: the running executable stays byte-identical and nothing is downloaded", async () => {
    const w = selfWorld();
    offer(w, next);
    await expectRefused(w, next, /^no valid signature for bin-proxy /);
    expect(await versionOf(w.binPath)).not.toContain(NEXT_COMMIT);
    expect(readdirSync(dirname(w.binPath))).toEqual([NAME]);
  }, 120_000);
});
