// Owns the verification of signed releases (SPEC §9), pure: minisign keys and signatures, checksum files, and every check on them.
import { createPublicKey, verify } from "node:crypto";
import { parseSha256, short, type Sha256 } from "./hash.ts";

/** A check of SPEC §9 that failed; its message names the check in words an operator can act on. */
export class SignatureError extends Error {}

/** A minisign key id as minisign prints it: the 8 id bytes as a little-endian number, in upper-case hex without leading zeros. */
export type KeyId = string;

export interface PublicKey {
  id: KeyId;
  /** The raw 32-byte Ed25519 public key. */
  key: Uint8Array;
}

export interface TrustedKeys {
  /** The file the keys were read from, named in the messages of refusals. */
  source: string;
  keys: PublicKey[];
}

export interface Signature {
  /** "ED": over the BLAKE2b-512 of the file (minisign's default); "Ed": over its bytes (legacy, `minisign -l`). */
  algorithm: "ED" | "Ed";
  keyId: KeyId;
  signature: Uint8Array;
  trustedComment: string;
  /** Over signature | trusted comment: binds the comment (and its timestamp) to the signature. */
  globalSignature: Uint8Array;
}

export interface ChecksumLine {
  sha256: Sha256;
  fileName: string;
}

/** What a release must be, for this host and binary, to be installed. */
export interface ReleaseCheck {
  /** The binary's name as the manifest names it. */
  binaryName: string;
  /** This host's architecture as `uname -m` prints it. */
  cpuArch: string;
  /** The SHA-256 the API names. */
  target: Sha256;
  keys: TrustedKeys;
  /** Unix seconds of the installed version's signature; an older signature is a rollback. null: no constraint. */
  notBefore: number | null;
}

export interface VerifiedRelease {
  keyId: KeyId;
  /** Unix seconds, from the trusted comment's `timestamp:`. */
  timestamp: number;
}

const UNTRUSTED_PREFIX = "untrusted comment:";
const TRUSTED_PREFIX = "trusted comment: ";
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const PUBLIC_KEY_BYTES = 2 + 8 + 32;
/** A secret key file's key line: algorithms (6), KDF salt and limits (48), key id, secret and public key, checksum (104). */
const SECRET_KEY_BYTES = 158;
const SIGNATURE_BYTES = 2 + 8 + 64;
const GLOBAL_SIGNATURE_BYTES = 64;

function decodeBase64(text: string): Uint8Array | null {
  return BASE64.test(text) && text.length % 4 === 0 ? Buffer.from(text, "base64") : null;
}

function keyIdOf(bytes: Uint8Array): KeyId {
  return Buffer.from(bytes).readBigUInt64LE().toString(16).toUpperCase();
}

function decodeText(bytes: Uint8Array, what: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new SignatureError(`${what} is not text (${bytes.length} bytes that are not UTF-8)`);
  }
}

const lines = (text: string): string[] => text.split("\n").map((line) => line.replace(/\r$/, ""));

/**
 * Reads a trusted-keys file: one or more public keys as `minisign -G` writes them (an
 * `untrusted comment:` line, then the base64 key line), concatenated for a key rotation. Comments
 * and blank lines are skipped; any other line must be a key. Throws an Error naming the line.
 */
export function parseTrustedKeys(text: string, source: string): TrustedKeys {
  const keys: PublicKey[] = [];
  let comment = "";
  lines(text).forEach((raw, index) => {
    const line = raw.trim();
    if (line === "") return;
    if (line.startsWith(UNTRUSTED_PREFIX)) {
      comment = line;
      return;
    }
    const where = `${source} line ${index + 1}`;
    const bytes = decodeBase64(line);
    if (/secret key/i.test(comment) || bytes?.length === SECRET_KEY_BYTES) {
      throw new Error(`${where} is a minisign secret key: give the public key (minisign.pub), never the secret one`);
    }
    if (!bytes || bytes.length !== PUBLIC_KEY_BYTES || bytes[0] !== 0x45 || bytes[1] !== 0x64) {
      // Only the line's start is quoted: whatever was put here by mistake may be secret.
      throw new Error(`${where} is not a minisign public key (want the base64 line minisign -G writes, starting with "RW"), got ${line.length} characters starting ${JSON.stringify(line.slice(0, 12))}`);
    }
    keys.push({ id: keyIdOf(bytes.subarray(2, 10)), key: bytes.slice(10) });
    comment = "";
  });
  if (keys.length === 0) throw new Error(`${source} holds no minisign public key (it is empty, or has comments only)`);
  return { source, keys };
}

/** Reads a `.minisig` file: untrusted comment, signature, trusted comment, global signature. */
export function parseSignature(bytes: Uint8Array, what: string): Signature {
  if (bytes.length === 0) throw new SignatureError(`${what} is empty`);
  const [untrusted, sigLine, trusted, globalLine, ...rest] = lines(decodeText(bytes, what));
  const shape = `${what} is not a minisign signature (want 4 lines: untrusted comment, signature, trusted comment, global signature)`;
  if (untrusted === undefined || sigLine === undefined || trusted === undefined || globalLine === undefined || rest.some((line) => line.trim() !== "")) {
    throw new SignatureError(shape);
  }
  if (!untrusted.startsWith(UNTRUSTED_PREFIX)) throw new SignatureError(`${shape}: line 1 does not start with "${UNTRUSTED_PREFIX}"`);
  if (!trusted.startsWith(TRUSTED_PREFIX)) throw new SignatureError(`${shape}: line 3 does not start with "${TRUSTED_PREFIX}"`);
  const sig = decodeBase64(sigLine.trim());
  if (!sig || sig.length !== SIGNATURE_BYTES) throw new SignatureError(`${shape}: line 2 is not the base64 of a signature`);
  const algorithm = String.fromCharCode(sig[0]!, sig[1]!);
  if (algorithm !== "ED" && algorithm !== "Ed") throw new SignatureError(`${what} uses signature algorithm ${JSON.stringify(algorithm)}; only minisign's "ED" and legacy "Ed" are known`);
  const globalSignature = decodeBase64(globalLine.trim());
  if (!globalSignature || globalSignature.length !== GLOBAL_SIGNATURE_BYTES) throw new SignatureError(`${shape}: line 4 is not the base64 of a global signature`);
  return {
    algorithm,
    keyId: keyIdOf(sig.subarray(2, 10)),
    signature: sig.slice(10),
    trustedComment: trusted.slice(TRUSTED_PREFIX.length),
    globalSignature,
  };
}

function verifyEd25519(key: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  const publicKey = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(key).toString("base64url") }, format: "jwk" });
  return verify(null, message, publicKey, signature);
}

/**
 * Checks 1–3 of SPEC §9: the key is trusted, the signature verifies over the file, and the global
 * signature over the trusted comment. Returns the key that signed.
 */
function verifySignature(file: Uint8Array, sig: Signature, keys: TrustedKeys, names: { file: string; signature: string }): KeyId {
  const candidates = keys.keys.filter((k) => k.id === sig.keyId);
  if (candidates.length === 0) {
    throw new SignatureError(`${names.signature} is signed by key ${sig.keyId}, which is not in ${keys.source} (trusted: ${keys.keys.map((k) => k.id).join(", ")})`);
  }
  const message = sig.algorithm === "ED" ? new Bun.CryptoHasher("blake2b512").update(file).digest() : file;
  const signer = candidates.find((k) => verifyEd25519(k.key, message, sig.signature));
  if (!signer) {
    throw new SignatureError(`${names.file} does not match its signature ${names.signature} by key ${sig.keyId}: the file was changed after signing, or the signature is another file's`);
  }
  const comment = Buffer.from(sig.trustedComment);
  if (!verifyEd25519(signer.key, Buffer.concat([sig.signature, comment]), sig.globalSignature)) {
    throw new SignatureError(`the trusted comment of ${names.signature} does not match its global signature (key ${sig.keyId}): the comment was changed after signing`);
  }
  return signer.id;
}

/** The trusted comment's `timestamp:<unix seconds>`, which minisign writes unless `-t` replaces the comment. */
function signedTimestamp(trustedComment: string, what: string): number {
  const match = /(?:^|\s)timestamp:(\d{1,12})(?=\s|$)/.exec(trustedComment);
  if (!match) {
    throw new SignatureError(
      `the trusted comment of ${what} has no timestamp (${JSON.stringify(trustedComment.slice(0, 80))}), so a rollback cannot be told apart: sign without -t, or with a -t comment that includes timestamp:<unix time>`,
    );
  }
  return Number(match[1]);
}

/** A Unix time as the log shows it. */
export function formatSignedTime(unixSeconds: number): string {
  return new Date(unixSeconds * 1000).toISOString().replace(".000Z", "Z");
}

/** Check 5: a signature older than the installed version's is a rollback attack. */
function checkNotRollback(timestamp: number, notBefore: number | null, binaryName: string): void {
  if (notBefore !== null && timestamp < notBefore) {
    throw new SignatureError(
      `${binaryName}.sha256 was signed ${formatSignedTime(timestamp)}, older than the installed version's signature of ${formatSignedTime(notBefore)}: refused as a rollback (bin-proxy rollback ${binaryName} goes back on purpose)`,
    );
  }
}

/** Reads a checksum file in `sha256sum`'s format: `<64 hex>  <file name>`, or ` *<file name>` (binary mode). */
export function parseChecksums(text: string, what: string): ChecksumLine[] {
  const parsed: ChecksumLine[] = [];
  lines(text).forEach((line, index) => {
    if (line.trim() === "") return;
    const match = /^([0-9a-fA-F]{64}) [ *](.+)$/.exec(line);
    if (!match) throw new SignatureError(`${what} line ${index + 1} is not in sha256sum's format (<64 hex digits>  <file name>): ${JSON.stringify(line.slice(0, 80))}`);
    parsed.push({ sha256: parseSha256(match[1])!, fileName: match[2]! });
  });
  if (parsed.length === 0) throw new SignatureError(`${what} lists no checksum (it is empty)`);
  return parsed;
}

/** The file names a binary's release may carry: its own, or `name-linux-<cpuArch>` (one file per architecture). */
function releaseFileNames(binaryName: string, cpuArch: string): string[] {
  return [binaryName, `${binaryName}-linux-${cpuArch}`];
}

/**
 * Check 4: a line whose hash is the target and whose file name is this binary's (for this
 * architecture). A hash signed for another binary or architecture is refused (mix-and-match), and
 * so is a target the signed file does not list (an API naming what the release never signed).
 */
function checkListed(checksums: ChecksumLine[], check: Pick<ReleaseCheck, "binaryName" | "cpuArch" | "target">, what: string): void {
  const names = releaseFileNames(check.binaryName, check.cpuArch);
  if (checksums.some((line) => line.sha256 === check.target && names.includes(line.fileName))) return;
  const wanted = names.map((name) => `'${name}'`).join(" or ");
  const sameHash = checksums.find((line) => line.sha256 === check.target);
  if (sameHash) {
    const otherArch = sameHash.fileName.startsWith(`${check.binaryName}-linux-`) ? " (a build for another architecture)" : "";
    throw new SignatureError(`${what} names ${short(check.target)}… for '${sameHash.fileName}'${otherArch}, not ${wanted}`);
  }
  const sameName = checksums.find((line) => names.includes(line.fileName));
  if (sameName) {
    throw new SignatureError(`${what} lists '${sameName.fileName}' as ${short(sameName.sha256)}…, not the target ${short(check.target)}…: the API names a version that was not signed`);
  }
  throw new SignatureError(`${what} does not list the target ${short(check.target)}… nor any file named ${wanted}: the API names a version that was not signed`);
}

/**
 * Every check of SPEC §9, in its order, on the fetched checksum file and its signature. Returns who
 * signed and when; throws a SignatureError naming the first check that failed.
 */
export function verifyRelease(checksumFile: Uint8Array, signatureFile: Uint8Array, check: ReleaseCheck): VerifiedRelease {
  const names = { file: `${check.binaryName}.sha256`, signature: `${check.binaryName}.sha256.minisig` };
  if (checksumFile.length === 0) throw new SignatureError(`${names.file} is empty`);
  const sig = parseSignature(signatureFile, names.signature);
  const keyId = verifySignature(checksumFile, sig, check.keys, names);
  checkListed(parseChecksums(decodeText(checksumFile, names.file), names.file), check, names.file);
  const timestamp = signedTimestamp(sig.trustedComment, names.signature);
  checkNotRollback(timestamp, check.notBefore, check.binaryName);
  return { keyId, timestamp };
}
