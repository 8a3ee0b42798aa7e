// Owns bin-manifests.json: validating it into typed entries once, and rewriting it atomically under a lock.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "./fsx.ts";
import { parseSha256, type Sha256 } from "./hash.ts";
import { isObject, isTime, type Json } from "./json.ts";
import { jsonErrorPosition } from "./jsonpos.ts";
import { withExclusiveLock } from "./flock.ts";
import type { Logger } from "./log.ts";

/** A target that failed on this host and is not retried before `until` (null: until the API moves on). */
export interface Hold {
  version: Sha256;
  failures: number;
  until: string | null;
}

export interface Entry {
  binaryName: string;
  serviceName: string;
  version: Sha256 | null;
  previousVersion: Sha256 | null;
  port: number;
  hold: Hold | null;
  /** The API's name of `version` (its release name), when bin-proxy installed it; absent when not known. */
  versionName?: string;
  /** Earlier holds still in force on other versions (a rollback keeps the hold on a broken target); absent when none. */
  otherHolds?: Hold[];
}

export interface RejectedEntry {
  label: string;
  reason: string;
}

export interface NodeInfo {
  cpuArch: string;
  osRelease: string;
  nodeName: string;
  binProxyVersion: string;
}

export interface Manifest {
  entries: Entry[];
  rejected: RejectedEntry[];
  nodeInfo: Partial<NodeInfo>;
}

export class ManifestError extends Error {}

const PLAIN_NAME = /^[A-Za-z0-9._-]+$/;
/** Lock and partial file names add ~75 characters to a name; stay well inside NAME_MAX (255). */
const MAX_NAME = 150;

/** Why name is not usable as a file or program name, or null when it is. */
export function nameProblem(name: string): string | null {
  if (!PLAIN_NAME.test(name) || name === "." || name === "..") return `not a plain name (allowed: A-Z a-z 0-9 . _ -)`;
  if (name.length > MAX_NAME) return `longer than ${MAX_NAME} characters`;
  return null;
}

function optionalSha(entry: Json, key: string, where: string): Sha256 | null {
  const value = entry[key];
  if (value === undefined || value === "") return null;
  const sha = parseSha256(value);
  if (!sha) throw new ManifestError(`${where}: ${key} must be "" or a SHA-256 (64 hex digits), got ${JSON.stringify(value)}`);
  return sha;
}

function parseHold(value: unknown, where: string): Hold | null {
  if (value === undefined || value === null) return null;
  const version = isObject(value) ? parseSha256(value.version) : null;
  // failures counts failed attempts (0 for a rollback's hold): a count, as the metrics show it.
  if (!isObject(value) || !version || !Number.isSafeInteger(value.failures) || (value.failures as number) < 0 || !(value.until === null || isTime(value.until))) {
    throw new ManifestError(`${where}: hold must be {version, failures, until}, got ${JSON.stringify(value)}`);
  }
  return { version, failures: value.failures as number, until: value.until as string | null };
}

/**
 * Validates a manifest's text. Structure and types that are wrong make the whole file unusable
 * (ManifestError: a configuration error, and the file is never rewritten); a name that is not a
 * plain file name rejects only its entry, so one bad line cannot stop the other binaries.
 */
export function parseManifest(text: string): Manifest {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    const at = jsonErrorPosition(text);
    throw new ManifestError(`not valid JSON${at ? ` at line ${at.line}, column ${at.column}` : ""}: ${(err as Error).message}`);
  }
  if (!isObject(doc)) throw new ManifestError("must be a JSON object");
  if (!Array.isArray(doc.binaries)) throw new ManifestError(`"binaries" must be an array`);
  if (doc.nodeInfo !== undefined && !isObject(doc.nodeInfo)) throw new ManifestError(`"nodeInfo" must be an object`);
  const entries: Entry[] = [];
  const rejected: RejectedEntry[] = [];
  const seen = new Set<string>();
  doc.binaries.forEach((raw, index) => {
    const where = `binaries[${index}]`;
    if (!isObject(raw)) throw new ManifestError(`${where} must be an object`);
    const { binaryName, serviceName = "", port = 0 } = raw;
    if (typeof binaryName !== "string") throw new ManifestError(`${where}: binaryName must be a string`);
    if (typeof serviceName !== "string") throw new ManifestError(`${where}: serviceName must be a string`);
    if (typeof port !== "number" || !Number.isInteger(port) || port < 0 || port > 65535) {
      throw new ManifestError(`${where}: port must be a whole number 0-65535, got ${JSON.stringify(port)}`);
    }
    if (seen.has(binaryName)) throw new ManifestError(`${where}: binaryName ${JSON.stringify(binaryName)} appears twice`);
    seen.add(binaryName);
    const entry: Entry = {
      binaryName,
      serviceName,
      version: optionalSha(raw, "version", where),
      previousVersion: optionalSha(raw, "previousVersion", where),
      port,
      hold: parseHold(raw.hold, where),
    };
    if (typeof raw.versionName === "string" && raw.versionName !== "") entry.versionName = raw.versionName.slice(0, 200);
    if (raw.otherHolds !== undefined) {
      if (!Array.isArray(raw.otherHolds)) throw new ManifestError(`${where}: otherHolds must be an array of holds`);
      entry.otherHolds = raw.otherHolds.map((h, i) => parseHold(h, `${where}.otherHolds[${i}]`)).filter((h): h is Hold => h !== null);
    }
    const problem = nameProblem(binaryName) ?? (serviceName && nameProblem(serviceName));
    if (problem) rejected.push({ label: JSON.stringify(binaryName).slice(0, 80), reason: `${where}: ${problem}` });
    else entries.push(entry);
  });
  return { entries, rejected, nodeInfo: (doc.nodeInfo ?? {}) as Partial<NodeInfo> };
}

export function readManifest(path: string): Manifest {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new ManifestError(`cannot read ${path}: ${(err as Error).message}`);
  }
  return parseManifest(text);
}

/** The manifest, or null after logging why it cannot be used (a configuration error: exit 2). */
export function readManifestOrLog(path: string, log: Logger): Manifest | null {
  try {
    return readManifest(path);
  } catch (err) {
    if (!(err instanceof ManifestError)) throw err;
    log.error("manifest_invalid", { manifest: path, error: err.message });
    return null;
  }
}

/** A change to the manifest: fields set on one entry (undefined removes a field), or new node info. */
export type ManifestEdit =
  | { binaryName: string; fields: { version?: Sha256 | null; previousVersion?: Sha256 | null; hold?: Hold | null; otherHolds?: Hold[] | null; versionName?: string | null } }
  | { nodeInfo: NodeInfo };

function applyEdit(doc: Json, edit: ManifestEdit): void {
  if ("nodeInfo" in edit) {
    doc.nodeInfo = { ...(isObject(doc.nodeInfo) ? doc.nodeInfo : {}), ...edit.nodeInfo };
    return;
  }
  const entry = (doc.binaries as Json[]).find((e) => e.binaryName === edit.binaryName);
  if (!entry) return; // removed from the manifest while we worked: nothing to record
  for (const [key, value] of Object.entries(edit.fields)) {
    if (key === "hold" || key === "otherHolds" || key === "versionName") {
      if (value) entry[key] = value;
      else delete entry[key];
    } else {
      entry[key] = value ?? "";
    }
  }
}

function indentOf(text: string): string {
  return /\n([ \t]+)"/.exec(text)?.[1] ?? "  ";
}

/**
 * Applies edits to the manifest as it is on disk now (another pass may have written it since we
 * read it), under a lock so concurrent passes never lose each other's changes. The file is written
 * only when its content changes, keeping every field bin-proxy does not know and the entry order.
 * Returns whether it was written.
 */
export function updateManifest(path: string, lockDir: string, edits: ManifestEdit[]): boolean {
  if (edits.length === 0) return false;
  return withExclusiveLock(join(lockDir, ".bin-proxy-manifest.lock"), () => {
    const text = readFileSync(path, "utf8");
    parseManifest(text); // never rewrite a file that has become invalid
    const doc = JSON.parse(text) as Json;
    const before = JSON.stringify(doc);
    for (const edit of edits) applyEdit(doc, edit);
    if (JSON.stringify(doc) === before) return false;
    writeFileAtomic(path, JSON.stringify(doc, null, indentOf(text)) + "\n");
    return true;
  });
}
