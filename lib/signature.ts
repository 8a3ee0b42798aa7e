// Owns the I/O of signed releases (SPEC §9): the trusted-keys file, fetching each URL's checksum file and signature, and the installed version's signed time.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError } from "./config.ts";
import { ensureDirectory, readTextNoFollow, writeFileAtomic } from "./fsx.ts";
import { parseSha256, short, type Sha256 } from "./hash.ts";
import { describe, exchange, type HttpPolicy } from "./http.ts";
import { isObject, type Json } from "./json.ts";
import { errorText } from "./log.ts";
import { nameProblem } from "./manifest.ts";
import { parseTrustedKeys, SignatureError, verifyRelease, type KeyId, type TrustedKeys, type VerifiedRelease } from "./minisign.ts";

const MAX_CHECKSUM_FILE_BYTES = 64 * 1024;
const MAX_SIGNATURE_FILE_BYTES = 4 * 1024;

/**
 * The trusted keys, or null when targets are not signature-checked: only the default file may be
 * absent. A file that is there (named or default) but unreadable, empty or malformed is a
 * configuration error, so a typo can never turn the checks off silently.
 */
export function loadTrustedKeys(trustedKeys: { path: string; required: boolean }): TrustedKeys | null {
  const { path, required } = trustedKeys;
  const label = required ? `BIN_PROXY_TRUSTED_KEYS ${path}` : `trusted-keys file ${path}`;
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw new ConfigError(`cannot read ${label}: ${errorText(err)}`);
  }
  try {
    return parseTrustedKeys(text, path);
  } catch (err) {
    throw new ConfigError(`${required ? "BIN_PROXY_TRUSTED_KEYS: " : ""}${(err as Error).message}`);
  }
}

/** The URL with suffix appended to its path; the query (`?sha256=T`) is kept. */
export function withPathSuffix(url: string, suffix: string): string {
  const u = new URL(url);
  u.pathname += suffix;
  return u.href;
}

/** GET of a small file under the API's HTTP rules: one timeout for the whole exchange, a size cap. */
function fetchSmall(url: string, maxBytes: number, label: string, policy: HttpPolicy): Promise<Uint8Array> {
  return exchange(url, { method: "GET" }, policy, label, maxBytes, async (res) => (res.status === 404 ? " (not published beside the binary)" : ""));
}

export interface SignedTargetRequest {
  /** The download URLs, tried in order (primary, then fallback); each one's files sit beside it. */
  urls: string[];
  binaryName: string;
  cpuArch: string;
  target: Sha256;
  keys: TrustedKeys;
  policy: HttpPolicy;
  /** Unix seconds of the installed version's signature (signedVersionOf), or null for no constraint. */
  notBefore: number | null;
  /** Called when a URL's files are missing or fail a check and the next URL is tried. */
  onAttemptFailed?: (url: string, reason: string) => void;
}

export interface SignedTarget extends VerifiedRelease {
  /** The download URL whose checksum file and signature verified (logged; the binary is still fetched primary first, as its signed hash binds the bytes whichever URL serves them). */
  url: string;
}

/**
 * Fetches `{url}.sha256` and `{url}.sha256.minisig` of each URL in turn and returns the first that
 * passes every check of SPEC §9. Throws a SignatureError naming every URL's failure otherwise.
 * Only these two small files are fetched: a target that is not validly signed costs no download.
 */
export async function verifySignedTarget(req: SignedTargetRequest): Promise<SignedTarget> {
  const failures: string[] = [];
  for (const url of req.urls) {
    try {
      const [checksums, signature] = await Promise.allSettled([
        fetchSmall(withPathSuffix(url, ".sha256"), MAX_CHECKSUM_FILE_BYTES, `${req.binaryName}.sha256`, req.policy),
        fetchSmall(withPathSuffix(url, ".sha256.minisig"), MAX_SIGNATURE_FILE_BYTES, `${req.binaryName}.sha256.minisig`, req.policy),
      ]);
      if (checksums.status === "rejected" || signature.status === "rejected") {
        throw new SignatureError([checksums, signature].flatMap((r) => (r.status === "rejected" ? [errorText(r.reason)] : [])).join("; "));
      }
      return { url, ...verifyRelease(checksums.value, signature.value, req) };
    } catch (err) {
      const reason = errorText(err);
      failures.push(`${describe(url)}: ${reason}`);
      req.onAttemptFailed?.(url, reason);
    }
  }
  throw new SignatureError(`no valid signature for ${req.binaryName} ${short(req.target)}: ${failures.join("; ")}`);
}

/** A version whose signature bin-proxy verified, and when it was signed. */
export interface SignedVersion {
  version: Sha256;
  /** Unix seconds, from the signature's trusted comment. */
  timestamp: number;
  keyId: KeyId;
}

/**
 * What is kept per binary: the version installed last, and the one it replaced (the manifest's
 * previousVersion), so that after `bin-proxy rollback NAME` the restored version's own signed time
 * is the constraint.
 */
export interface SignatureRecord extends SignedVersion {
  previous: SignedVersion | null;
}

export type StoredSignature =
  | { kind: "none" }
  | { kind: "invalid"; path: string; reason: string }
  | { kind: "found"; record: SignatureRecord };

/** Where a binary's record is kept: `BIN_PROXY_STATE_DIR/signatures/NAME.json`. */
export function signatureRecordPath(stateDir: string, name: string): string {
  const problem = nameProblem(name);
  if (problem) throw new Error(`binary name ${JSON.stringify(name)} is ${problem}`);
  return join(stateDir, "signatures", `${name}.json`);
}

function parseSignedVersion(value: unknown): SignedVersion {
  const version = isObject(value) ? parseSha256(value.version) : null;
  if (!isObject(value) || !version || !Number.isSafeInteger(value.timestamp) || (value.timestamp as number) < 0 || typeof value.keyId !== "string" || !/^[0-9A-F]{1,16}$/.test(value.keyId)) {
    throw new Error(`want {version: <sha256>, timestamp: <unix seconds>, keyId: <minisign key id>}, got ${JSON.stringify(value)?.slice(0, 200)}`);
  }
  return { version, timestamp: value.timestamp as number, keyId: value.keyId };
}

function parseSignatureRecord(text: string): SignatureRecord {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error("not valid JSON");
  }
  const current = parseSignedVersion(value);
  const previous = (value as Json).previous;
  return { ...current, previous: previous === undefined || previous === null ? null : parseSignedVersion(previous) };
}

/** Reads a binary's record; a missing file is "none", anything unusable is "invalid" (no constraint: the caller logs it). */
export function readSignatureRecord(stateDir: string, name: string): StoredSignature {
  const path = signatureRecordPath(stateDir, name);
  let text: string;
  try {
    text = readTextNoFollow(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { kind: "none" };
    return { kind: "invalid", path, reason: errorText(err) };
  }
  try {
    return { kind: "found", record: parseSignatureRecord(text) };
  } catch (err) {
    return { kind: "invalid", path, reason: (err as Error).message };
  }
}

/** The signed time kept for version (the installed one, as a rule), or null when none is known. */
export function signedVersionOf(stored: StoredSignature, version: Sha256 | null): SignedVersion | null {
  if (stored.kind !== "found" || version === null) return null;
  const { previous, ...current } = stored.record;
  if (current.version === version) return current;
  return previous?.version === version ? previous : null;
}

/**
 * Records a verified version before it is swapped in, with the signed version it replaces: whether
 * the swap then succeeds or is rolled back, the record covers whichever version ends up installed.
 */
export function writeSignatureRecord(stateDir: string, name: string, installing: SignedVersion, replaced: SignedVersion | null): void {
  const path = signatureRecordPath(stateDir, name);
  ensureDirectory(join(stateDir, "signatures"));
  const record: SignatureRecord = { ...installing, previous: replaced && replaced.version !== installing.version ? replaced : null };
  writeFileAtomic(path, JSON.stringify(record) + "\n");
}
