// Owns SHA-256: the validated Sha256 type, hashing a file in constant memory, and the stat-keyed hash cache.
import { closeSync, openSync, readFileSync, readSync, statSync, type BigIntStats } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "./fsx.ts";

/** A SHA-256 as 64 lowercase hex digits; only parseSha256 makes one. */
export type Sha256 = string & { readonly __sha256: unique symbol };

export function parseSha256(value: unknown): Sha256 | null {
  if (typeof value !== "string" || !/^[0-9a-fA-F]{64}$/.test(value)) return null;
  return value.toLowerCase() as Sha256;
}

/** The first 12 hex digits, as logs and tables show a version. */
export function short(sha: string): string {
  return sha.slice(0, 12);
}

const CHUNK = 1 << 20;

export function hashFile(path: string): Sha256 {
  const hasher = new Bun.CryptoHasher("sha256");
  const fd = openSync(path, "r");
  try {
    const buffer = Buffer.allocUnsafe(CHUNK);
    for (let n; (n = readSync(fd, buffer, 0, CHUNK, null)) > 0; ) hasher.update(buffer.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hasher.digest("hex") as Sha256;
}

/** Where the hash cache is kept, under BIN_PROXY_STATE_DIR. */
export function hashCachePath(stateDir: string): string {
  return join(stateDir, "hash-cache.json");
}

interface CacheEntry {
  identity: string;
  sha256: string;
}

/** Everything that changes when a file's content can have changed: a rewrite in place moves mtime and ctime. */
function identity(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/**
 * Hashes files, remembering each result under the file's identity so that an unchanged file is
 * never read again: the every-minute no-op pass then costs a stat per binary, not a read.
 */
export class HashCache {
  private entries: Record<string, CacheEntry>;
  private dirty = false;

  private constructor(private readonly path: string, entries: Record<string, CacheEntry>) {
    this.entries = entries;
  }

  /** A missing or damaged cache file is an empty cache: it only ever costs a re-hash. */
  static load(path: string): HashCache {
    try {
      const parsed: unknown = JSON.parse(readFileSync(path, "utf8"));
      if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) {
        return new HashCache(path, parsed as Record<string, CacheEntry>);
      }
    } catch {
      // fall through to an empty cache
    }
    return new HashCache(path, {});
  }

  /** The SHA-256 of the file at path, or null when there is no file. */
  hash(path: string): Sha256 | null {
    let st: BigIntStats;
    try {
      st = statSync(path, { bigint: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw err;
    }
    const id = identity(st);
    const cached = this.entries[path];
    const known = cached?.identity === id ? parseSha256(cached.sha256) : null;
    if (known) return known;
    const sha = hashFile(path);
    this.remember(path, id, sha);
    return sha;
  }

  /** Records a hash bin-proxy already knows (it just verified the file it installed). */
  record(path: string, sha: Sha256): void {
    this.remember(path, identity(statSync(path, { bigint: true })), sha);
  }

  private remember(path: string, id: string, sha: Sha256): void {
    this.entries[path] = { identity: id, sha256: sha };
    this.dirty = true;
  }

  /** Written only when something was learnt; a failure to write costs a re-hash next time, nothing more. */
  save(): void {
    if (!this.dirty) return;
    try {
      writeFileAtomic(this.path, JSON.stringify(this.entries) + "\n", { mode: 0o600 });
      this.dirty = false;
    } catch {
      // The cache is an optimisation; the pass's outcome does not depend on it.
    }
  }
}
