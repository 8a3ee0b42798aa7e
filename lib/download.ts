// Owns downloading: streaming a binary into an exclusive temp file while hashing it, verified, with fallback.
import { closeSync, readdirSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { createExclusive, removeIfPresent } from "./fsx.ts";
import { DiskWriter } from "./diskwrite.ts";
import { parseSha256, short, type Sha256 } from "./hash.ts";
import { describe, fetchFailure, request, type HttpPolicy } from "./http.ts";
import { errorText } from "./log.ts";

export interface DownloadRequest {
  /** Tried in order until one serves the expected bytes. */
  urls: string[];
  expected: Sha256;
  /** Beside the destination (same filesystem, so the install is a rename). */
  tempPath: string;
  maxBytes: number;
  /** Limit for the headers, and for each silence between body chunks. */
  idleTimeoutMs: number;
  policy: HttpPolicy;
  /** Called when an attempt fails and the next URL is tried. */
  onAttemptFailed: (url: string, reason: string) => void;
}

/** A verified download: the temp file, still open so the install can fsync it without reopening. */
export interface Downloaded {
  /** -1 once closed, or handed to the install. */
  fd: number;
  tempPath: string;
  bytes: number;
  url: string;
}

export class DownloadError extends Error {}

export async function downloadVerified(req: DownloadRequest): Promise<Downloaded> {
  const reasons: string[] = [];
  for (const url of req.urls) {
    try {
      return await downloadOnce(url, req);
    } catch (err) {
      const reason = errorText(err);
      reasons.push(`${describe(url)}: ${reason}`);
      req.onAttemptFailed(url, reason);
    }
  }
  throw new DownloadError(`no source served ${short(req.expected)}: ${reasons.join("; ")}`);
}

async function downloadOnce(url: string, req: DownloadRequest): Promise<Downloaded> {
  removeIfPresent(req.tempPath); // a leftover of a killed run of this version: we hold its lock now
  const fd = createExclusive(req.tempPath, 0o600);
  const disk = new DiskWriter(fd);
  const controller = new AbortController();
  let timer: Timer | undefined;
  const arm = (what: string) => {
    clearTimeout(timer);
    timer = setTimeout(() => controller.abort(new Error(`${what} within ${req.idleTimeoutMs / 1000}s`)), req.idleTimeoutMs);
  };
  try {
    arm("no response headers");
    const res = await request(url, { method: "GET", signal: controller.signal }, req.policy);
    if (!res.ok) {
      await res.body?.cancel();
      throw new DownloadError(`HTTP ${res.status}`);
    }
    const declared = Number(res.headers.get("content-length"));
    if (declared > req.maxBytes) {
      await res.body?.cancel();
      throw new DownloadError(`size ${declared} bytes is over MAX_DOWNLOAD_BYTES (${req.maxBytes})`);
    }
    if (!res.body) throw new DownloadError("empty response");
    // Hashing here while the disk writes in the background: the download costs about the slower of the two.
    const hasher = new Bun.CryptoHasher("sha256");
    let bytes = 0;
    const reader = res.body.getReader();
    try {
      for (;;) {
        arm("no data");
        const { done, value } = await reader.read().catch((err: unknown) => {
          throw new DownloadError(`body cut short after ${bytes} bytes: ${fetchFailure(err)}`);
        });
        if (done) break;
        bytes += value.length;
        if (bytes > req.maxBytes) throw new DownloadError(`more than MAX_DOWNLOAD_BYTES (${req.maxBytes}) bytes`);
        hasher.update(value);
        await disk.write(value);
      }
    } catch (err) {
      await reader.cancel().catch(() => {});
      throw controller.signal.aborted ? controller.signal.reason : err;
    }
    clearTimeout(timer); // the last writes are the disk's time, not the server's
    await disk.finish();
    const actual = hasher.digest("hex");
    if (actual !== req.expected) throw new DownloadError(`content does not match: expected ${short(req.expected)}, got ${short(actual)} (${bytes} bytes)`);
    return { fd, tempPath: req.tempPath, bytes, url };
  } catch (err) {
    await disk.settle();
    closeSync(fd);
    removeIfPresent(req.tempPath);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** Undoes a download: the temp file is closed (unless the install took it) and removed. */
export function discard(download: Downloaded): void {
  // Never close a number twice: by now it may be another file's, or a socket's.
  if (download.fd >= 0) closeSync(download.fd);
  download.fd = -1;
  removeIfPresent(download.tempPath);
}

/** The download in progress of one version: beside the binary, named so a newer pass can find and remove it. */
export function partialPath(binPath: string, sha: Sha256): string {
  return join(dirname(binPath), `.${basename(binPath)}.${sha}.part`);
}

/** The version fileName is the download of, when it is exactly a partial file of binary name (never of `name.x`). */
export function partialVersion(fileName: string, name: string): Sha256 | null {
  const prefix = `.${name}.`;
  if (!fileName.startsWith(prefix) || !fileName.endsWith(".part")) return null;
  const hex = fileName.slice(prefix.length, -".part".length);
  return parseSha256(hex) === hex ? (hex as Sha256) : null;
}

/**
 * Removes every partial download of the binary at binPath and returns their versions. Only the
 * holder of the binary's lock calls it, once the runs downloading other versions are ended: what
 * is left is then a killed run's.
 */
export function removePartials(binPath: string): Sha256[] {
  const removed: Sha256[] = [];
  for (const file of readdirSync(dirname(binPath))) {
    const version = partialVersion(file, basename(binPath));
    if (version && removeIfPresent(join(dirname(binPath), file))) removed.push(version);
  }
  return removed;
}
