// Owns downloading: streaming a binary into its partial file while hashing it, resumed where a cut left it, verified, with fallback.
import { closeSync, constants, fstatSync, ftruncateSync, lstatSync, openSync, readdirSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { createExclusive, readTextNoFollow, removeIfPresent, writeFileAtomic } from "./fsx.ts";
import { BLOCK, DiskWriter, readBlocks } from "./diskwrite.ts";
import { parseSha256, short, type Sha256 } from "./hash.ts";
import { describe, fetchFailure, HttpError, request, type HttpPolicy } from "./http.ts";
import { isObject } from "./json.ts";
import { tryFlock } from "./libc.ts";
import { errorText } from "./log.ts";

export interface DownloadRequest {
  /** Tried in order until one serves the expected bytes. */
  urls: string[];
  expected: Sha256;
  /** Beside the destination (same filesystem, so the install is a rename): partialPath(). */
  tempPath: string;
  maxBytes: number;
  /** Limit for the headers, and for each silence between body chunks. */
  idleTimeoutMs: number;
  policy: HttpPolicy;
  /** Called when an attempt fails; the reason says what comes next when it is not the next URL. */
  onAttemptFailed: (url: string, reason: string) => void;
  /** Told how kept bytes were used: resumed from byte N, or started over from 0 and why. */
  onResume?: (url: string, what: string) => void;
  /** Told the size of every chunk of body received, kept or not (the metrics count bytes transferred). */
  onReceived?: (bytes: number) => void;
}

/** A verified download: the temp file, still open so the install can fsync it without reopening. */
export interface Downloaded {
  /** -1 once closed, or handed to the install. */
  fd: number;
  tempPath: string;
  bytes: number;
}

/**
 * Why an attempt failed decides what happens to the partial file: a cut (the body stopped: reset,
 * silence) is resumed; an unavailable server (no answer, 5xx) leaves it for the next try; anything
 * else (404, wrong content, too big, the disk) means its bytes are worth nothing.
 */
type FailureKind = "cut" | "unavailable" | "refused" | "mismatch";

export class DownloadError extends Error {
  constructor(message: string, readonly kind: FailureKind = "refused") {
    super(message);
  }
}

/** A validator and the request it allows: the rest of the file from offset, if it is still the same file. */
export interface Resume {
  offset: number;
  validator: string;
}

/** What the kept partial file says about itself, beside it (the validator must outlive the pass). */
export interface PartialInfo {
  validator: string;
  /** The whole file's size, when the first response said it. */
  total: number | null;
}

/** What a response means for the partial file. */
export type Answer =
  /** A 206 from exactly where we are: append its body. */
  | { kind: "append"; total: number | null }
  /** A 200: its body is the whole file, from byte 0 (why: what it says about a Range we sent). */
  | { kind: "whole"; why: string | null }
  /** A range answer that cannot be appended: drop the partial and ask again without Range. */
  | { kind: "ask-whole"; why: string }
  | { kind: "refused"; status: number; transient: boolean };

interface HeaderSource {
  get(name: string): string | null;
}

/** The strong ETag, else the Last-Modified date, a response carries; null when it has neither. */
export function validatorOf(headers: HeaderSource): string | null {
  const etag = headers.get("etag")?.trim() ?? "";
  // If-Range takes only a strong entity tag; a weak one (W/"…", as a compressing proxy makes) says nothing about bytes.
  if (/^"[\x21\x23-\x7e\x80-\xff]*"$/.test(etag)) return etag;
  const modified = headers.get("last-modified")?.trim() ?? "";
  return /^[\x20-\x7e]{1,100}$/.test(modified) ? modified : null;
}

/** `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`), or null when it is not that. */
export function parseContentRange(value: string | null): { first: number; last: number; total: number | null } | null {
  const m = /^bytes (\d{1,15})-(\d{1,15})\/(\d{1,15}|\*)$/.exec(value?.trim() ?? "");
  if (!m) return null;
  const [first, last, total] = [Number(m[1]), Number(m[2]), m[3] === "*" ? null : Number(m[3])];
  return last < first || (total !== null && last >= total) ? null : { first, last, total };
}

/** Judges a response to a request that asked for `asked` (null: the whole file); pure. */
export function judgeAnswer(status: number, headers: HeaderSource, asked: Resume | null): Answer {
  if (status === 206) {
    if (!asked) return { kind: "refused", status, transient: false };
    const range = parseContentRange(headers.get("content-range"));
    if (!range) return { kind: "ask-whole", why: `206 without a usable Content-Range (${JSON.stringify(headers.get("content-range"))})` };
    if (range.first !== asked.offset) return { kind: "ask-whole", why: `Content-Range starts at byte ${range.first}, not ${asked.offset}` };
    if (range.total !== null && range.last !== range.total - 1) return { kind: "ask-whole", why: `Content-Range ends at byte ${range.last} of ${range.total}` };
    const validator = validatorOf(headers);
    if (validator !== null && validator !== asked.validator) return { kind: "ask-whole", why: `the file changed (${validator}, not ${asked.validator})` };
    const encoding = headers.get("content-encoding")?.trim().toLowerCase() ?? "identity";
    if (encoding !== "identity") return { kind: "ask-whole", why: `a range of ${encoding}-encoded bytes` };
    return { kind: "append", total: range.total };
  }
  if (asked && status === 416) return { kind: "ask-whole", why: "416: the range is not satisfiable" };
  if (status >= 200 && status < 300) return { kind: "whole", why: asked ? `answered ${status} to the range (the file changed, or ranges are not served)` : null };
  return { kind: "refused", status, transient: status === 408 || status === 429 || status >= 500 };
}

/** The partial info as stored, validated where it enters; null when it is not usable. */
export function parsePartialInfo(text: string): PartialInfo | null {
  try {
    const doc: unknown = JSON.parse(text);
    if (!isObject(doc)) return null;
    const { validator, total } = doc;
    // Sent back as a header: printable ASCII only, so nothing stored can smuggle a line into a request.
    if (typeof validator !== "string" || !/^[\x20-\x7e]{1,300}$/.test(validator)) return null;
    if (total !== null && !(Number.isSafeInteger(total) && (total as number) >= 0)) return null;
    return { validator, total: total as number | null };
  } catch {
    return null;
  }
}

/**
 * What a partial of size bytes, with info or none beside it, is worth to the next download (pure):
 * start over; resume from its whole blocks, when its response announced more and named a validator
 * (not worth hashing before asking for the rest); or hash it whole (all the bytes announced, or no
 * validator to resume with): it is the target, or worth nothing.
 */
export function judgePartial(size: number, info: PartialInfo | null, maxBytes: number): { kind: "restart" } | { kind: "resume"; kept: number } | { kind: "hash-whole" } {
  if (size === 0 || size > maxBytes) return { kind: "restart" };
  const kept = keptBytes(size);
  if (info && kept > 0 && size !== info.total) return { kind: "resume", kept };
  return { kind: "hash-whole" };
}

/** The bytes of a partial file of `size` bytes that are kept: its whole blocks (a torn tail is never trusted). */
export function keptBytes(size: number): number {
  return size - (size % BLOCK);
}

/**
 * The partial file of one target, owned by this run: its fd (flocked, so no other run takes it
 * over while it is written), the bytes on disk so far and their running hash, and the validator
 * of the response they came from.
 */
class PartialFile {
  hasher = new Bun.CryptoHasher("sha256");
  bytes = 0;
  info: PartialInfo | null = null;
  /** Holds bytes no response of the current URL served in this call: a mismatch may be theirs. */
  inherited = false;
  /** The writer of the response being received: a catch-up reads its blocks back once they land. */
  disk: DiskWriter | null = null;
  /**
   * The hash covers the file's first `hashed` bytes. While kept bytes are re-hashed from disk, the
   * rest is already being received: its blocks are only written, and the re-hash catches up with
   * them from disk. From then on (`live`) each block is hashed as it is handed to the disk.
   */
  private hashed = 0;
  private live = true;
  private catchingUp: Promise<void> | null = null;
  private stopping = false;

  private constructor(readonly path: string, readonly fd: number) {}

  /**
   * Takes over the partial file a cut or a kill left, or creates an empty one. Its whole blocks
   * are re-hashed in the background (see hashedAll) while the rest is asked for. A partial that
   * already hashes to expected (killed between its check and the install) is complete: `bytes`
   * is then its size and `info` null.
   */
  static async open(path: string, expected: Sha256, maxBytes: number): Promise<{ partial: PartialFile; complete: boolean }> {
    const fd = takeExisting(path);
    if (fd === null) {
      removeIfPresent(infoPath(path));
      return { partial: PartialFile.create(path), complete: false };
    }
    const partial = new PartialFile(path, fd);
    try {
      const size = fstatSync(fd).size;
      const info = readPartialInfo(path);
      const worth = judgePartial(size, info, maxBytes);
      if (worth.kind === "restart") {
        await partial.restart();
        return { partial, complete: false };
      }
      if (worth.kind === "resume") {
        ftruncateSync(fd, worth.kept); // a torn tail is dropped, never trusted
        partial.resumeFrom(worth.kept, info!);
        return { partial, complete: false };
      }
      const whole = new Bun.CryptoHasher("sha256");
      await readBlocks(fd, 0, size, (block) => whole.update(block));
      if (whole.digest("hex") === expected) {
        partial.bytes = size;
        return { partial, complete: true };
      }
      await partial.restart();
      return { partial, complete: false };
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  private static create(path: string): PartialFile {
    const fd = createExclusive(path, 0o600);
    if (!tryFlock(fd)) {
      closeSync(fd);
      throw new DownloadError(`${path} was taken by another run as soon as it was created`);
    }
    return new PartialFile(path, fd);
  }

  /** Keeps the first `kept` bytes, to be re-hashed from disk while the rest arrives. */
  private resumeFrom(kept: number, info: PartialInfo): void {
    this.bytes = kept;
    this.info = info;
    this.inherited = true;
    this.live = false;
    this.catchingUp = this.catchUp();
    this.catchingUp.catch(() => {}); // awaited, and its failure reported, by hashedAll or a restart
  }

  /** Hashes what is on disk past `hashed`, until it has caught up with every block handed to the disk. */
  private async catchUp(): Promise<void> {
    // Its own open file: O_DIRECT is set per open file, and the writer sets its own.
    const reader = openSync(`/proc/self/fd/${this.fd}`, constants.O_RDONLY);
    try {
      while (!this.stopping) {
        const { landed, submitted } = this.disk?.progress ?? { landed: this.bytes, submitted: this.bytes };
        if (this.hashed < landed) {
          await readBlocks(reader, this.hashed, landed - this.hashed, (block) => {
            if (this.stopping) throw new Error("re-hash stopped");
            this.hasher.update(block);
          });
          this.hashed = landed;
        } else if (this.hashed === submitted) {
          this.live = true; // in the same tick as the check: no block is handed to the disk in between
          return;
        } else {
          await this.disk!.nextLanding();
        }
      }
    } finally {
      closeSync(reader);
    }
  }

  /** Sees each block as it is handed to the disk: hashed now, unless a catch-up will read it back. */
  onBlock(block: Uint8Array): void {
    if (!this.live) return;
    this.hasher.update(block);
    this.hashed += block.length;
  }

  /** Resolves once the hash covers every byte handed to the disk; rejects when the re-hash failed. */
  async hashedAll(): Promise<void> {
    await this.catchingUp;
  }

  private async stopCatchUp(): Promise<void> {
    if (!this.catchingUp) return;
    this.stopping = true;
    await this.catchingUp.catch(() => {});
    this.catchingUp = null;
    this.stopping = false;
  }

  /** Back to an empty file: never a mix of two responses' bytes. */
  async restart(): Promise<void> {
    await this.stopCatchUp();
    removeIfPresent(infoPath(this.path));
    ftruncateSync(this.fd, 0);
    this.hasher = new Bun.CryptoHasher("sha256");
    this.bytes = 0;
    this.hashed = 0;
    this.live = true;
    this.info = null;
    this.inherited = false;
  }

  /** A whole-file response starts: its validator is kept beside the file (before any of its bytes), so a later pass can resume it. */
  begin(validator: string | null, total: number | null): void {
    this.info = validator === null ? null : { validator, total };
    if (this.info) writeFileAtomic(infoPath(this.path), JSON.stringify(this.info) + "\n", { mode: 0o600 });
    else removeIfPresent(infoPath(this.path));
  }

  /** What a request for the rest may ask, or null when the next request must be for the whole file. */
  resume(): Resume | null {
    return this.bytes > 0 && this.info ? { offset: this.bytes, validator: this.info.validator } : null;
  }

  /** Whether a later pass can resume it. */
  resumable(): boolean {
    return this.resume() !== null;
  }

  async close(): Promise<void> {
    await this.stopCatchUp();
    closeSync(this.fd);
  }

  async remove(): Promise<void> {
    await this.close();
    removeIfPresent(this.path);
    removeIfPresent(infoPath(this.path));
  }

  /** Done and verified: the info beside it is no longer needed (nothing removes it once the file is renamed away). */
  verified(): void {
    removeIfPresent(infoPath(this.path));
  }
}

/**
 * Opens the partial file at path for reuse: only a regular file of ours, linked once (a hard link
 * could be a backup's), that no live run holds. Anything else there is removed (unlink never
 * follows a symlink) and null returned; so is a file a live run still writes, which keeps its
 * bytes and finds at its install that the name is no longer its file.
 */
function takeExisting(path: string): number | null {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDWR | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return null;
    if (code !== "ELOOP" && code !== "EISDIR" && code !== "ENXIO") throw err;
    removeIfPresent(path);
    return null;
  }
  const st = fstatSync(fd);
  if (st.isFile() && st.nlink === 1 && st.uid === process.geteuid!() && tryFlock(fd)) return fd;
  closeSync(fd);
  removeIfPresent(path);
  return null;
}

function infoPath(partial: string): string {
  return `${partial}.meta`;
}

/** The info beside a partial; null when there is none, or it is not a plain file of a valid info (a symlink is never followed). */
function readPartialInfo(partial: string): PartialInfo | null {
  try {
    return parsePartialInfo(readTextNoFollow(infoPath(partial), 4096));
  } catch {
    return null;
  }
}

export async function downloadVerified(req: DownloadRequest): Promise<Downloaded> {
  const reasons: string[] = [];
  let partial: PartialFile | null = null;
  // A partial is kept past a failed call only when something may still come back (a cut, a server down).
  let worthKeeping = false;
  for (const url of req.urls) {
    let resumes = 1;
    for (;;) {
      try {
        if (!partial) {
          const opened = await PartialFile.open(req.tempPath, req.expected, req.maxBytes);
          partial = opened.partial;
          if (opened.complete) {
            partial.verified();
            req.onResume?.(url, `the kept ${partial.bytes} bytes are the whole file`);
            return { fd: partial.fd, tempPath: req.tempPath, bytes: partial.bytes };
          }
        }
        await receive(url, partial, req);
        const received = partial;
        await received.hashedAll().catch(async (err: unknown) => {
          await received.restart(); // the hash no longer says what the file holds
          throw err;
        });
        const actual = partial.hasher.digest("hex");
        if (actual !== req.expected) {
          throw new DownloadError(`content does not match: expected ${short(req.expected)}, got ${short(actual)} (${partial.bytes} bytes)`, "mismatch");
        }
        partial.verified();
        return { fd: partial.fd, tempPath: req.tempPath, bytes: partial.bytes };
      } catch (err) {
        const kind = err instanceof DownloadError ? err.kind : "refused";
        let reason = errorText(err);
        let again = false;
        // A server that sent a validator can be resumed from; before a whole block is kept that is from byte 0.
        if (kind === "cut" && partial?.info && resumes-- > 0) {
          reason += `; resuming from byte ${partial.bytes}`;
          again = true;
        } else if (kind === "mismatch" && partial?.inherited) {
          // Bytes kept from before may be torn (power loss) or another server's: one fresh download decides.
          reason += "; downloading it again from byte 0";
          again = true;
        }
        if (kind === "mismatch") await partial!.restart();
        worthKeeping ||= kind === "cut" || kind === "unavailable";
        req.onAttemptFailed(url, reason);
        if (again) continue;
        reasons.push(`${describe(url)}: ${errorText(err)}`);
        break;
      }
    }
    if (partial && partial.bytes > 0) partial.inherited = true;
  }
  if (partial) {
    if (worthKeeping && partial.resumable()) await partial.close();
    else await partial.remove();
  }
  throw new DownloadError(`no source served ${short(req.expected)}: ${reasons.join("; ")}`);
}

/**
 * One request into the partial file: for the rest of it when it can be resumed, else for the
 * whole file. Resolves once the body ended with every byte on disk (hashed, or left to the
 * re-hash's catch-up: see hashedAll).
 */
async function receive(url: string, partial: PartialFile, req: DownloadRequest): Promise<void> {
  if (partial.bytes > 0 && !partial.resumable()) await partial.restart();
  const asked = partial.resume();
  const controller = new AbortController();
  let timer: Timer | undefined;
  const arm = (what: string) => {
    clearTimeout(timer);
    timer = setTimeout(() => controller.abort(new Error(`${what} within ${req.idleTimeoutMs / 1000}s`)), req.idleTimeoutMs);
  };
  let disk: DiskWriter | undefined;
  try {
    arm("no response headers");
    // identity: a range counts bytes as stored, and an encoded answer could not be appended to decoded bytes.
    const headers = asked ? { range: `bytes=${asked.offset}-`, "if-range": asked.validator, "accept-encoding": "identity" } : undefined;
    // A refused redirect or the token rule will refuse again: only a failure that may pass keeps the partial.
    const res = await request(url, { method: "GET", signal: controller.signal, headers }, req.policy).catch((err: unknown) => {
      throw new DownloadError(errorText(err), err instanceof HttpError && !err.transient ? "refused" : "unavailable");
    });
    const answer = judgeAnswer(res.status, res.headers, asked);
    if (answer.kind !== "append" && answer.kind !== "whole") await res.body?.cancel();
    if (answer.kind === "refused") throw new DownloadError(`HTTP ${res.status}`, answer.transient ? "unavailable" : "refused");
    if (answer.kind === "ask-whole") {
      req.onResume?.(url, `started over from byte 0: ${answer.why}`);
      await partial.restart();
      clearTimeout(timer);
      return await receive(url, partial, req);
    }
    if (!res.body) throw new DownloadError("empty response");
    // An encoded body is decoded by fetch: its Content-Length is not the file's size.
    const encoded = (res.headers.get("content-encoding")?.trim().toLowerCase() ?? "identity") !== "identity";
    const declared = answer.kind === "append" ? answer.total : encoded ? null : Number(res.headers.get("content-length") ?? NaN);
    const total = Number.isSafeInteger(declared) ? declared : null;
    if (total !== null && total > req.maxBytes) {
      await res.body?.cancel();
      throw new DownloadError(`size ${total} bytes is over MAX_DOWNLOAD_BYTES (${req.maxBytes})`);
    }
    if (answer.kind === "whole") {
      if (partial.bytes > 0) {
        req.onResume?.(url, `started over from byte 0: ${answer.why}`);
        await partial.restart();
      }
      partial.begin(validatorOf(res.headers), total);
    } else {
      req.onResume?.(url, `resumed at byte ${partial.bytes}${total === null ? "" : ` of ${total}`}`);
    }
    // Each block is hashed as it is handed to the disk, which writes it in the background while the next bytes arrive.
    disk = partial.disk = new DiskWriter(partial.fd, { from: partial.bytes, onBlock: (block) => partial.onBlock(block) });
    const from = partial.bytes;
    let received = 0;
    const reader = res.body.getReader();
    try {
      for (;;) {
        arm("no data");
        const { done, value } = await reader.read().catch((err: unknown) => {
          throw new DownloadError(`body cut short after ${received} bytes: ${fetchFailure(err)}`, "cut");
        });
        if (done) break;
        received += value.length;
        req.onReceived?.(value.length);
        if (from + received > req.maxBytes) throw new DownloadError(`more than MAX_DOWNLOAD_BYTES (${req.maxBytes}) bytes`);
        await disk.write(value);
      }
      if (total !== null && from + received < total) throw new DownloadError(`body ended after ${received} bytes, at byte ${from + received} of ${total}`, "cut");
      clearTimeout(timer); // the last writes are the disk's time, not the server's
      await disk.finish();
      partial.bytes = from + received;
    } catch (err) {
      await reader.cancel().catch(() => {});
      const failure = controller.signal.aborted ? new DownloadError(errorText(controller.signal.reason), "cut") : err;
      if (failure instanceof DownloadError && failure.kind === "cut") {
        // The whole blocks written stay, with the hash of exactly them: what the next request resumes from.
        partial.bytes = await disk.abandonTail().catch(async (diskErr: unknown) => {
          await partial.restart();
          throw diskErr;
        });
      } else {
        // Too big, or the disk failed: what was written since `from` is worth nothing, and the hash has moved past it.
        await disk.settle();
        await partial.restart();
      }
      throw failure;
    }
  } catch (err) {
    await disk?.settle();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** Undoes a download: the temp file is closed (unless the install took it) and removed, with what is kept beside it. */
export function discard(download: Downloaded): void {
  // Never close a number twice: by now it may be another file's, or a socket's.
  if (download.fd >= 0) closeSync(download.fd);
  download.fd = -1;
  removeIfPresent(download.tempPath);
  removeIfPresent(infoPath(download.tempPath));
}

/** The download in progress of one version: beside the binary, named so a newer pass can find and remove it. */
export function partialPath(binPath: string, sha: Sha256): string {
  return join(dirname(binPath), `.${basename(binPath)}.${sha}.part`);
}

/** The version fileName is the download of, when it is exactly a partial file of binary name (never of `name.x`). */
export function partialVersion(fileName: string, name: string): Sha256 | null {
  return versionIn(fileName, `.${name}.`, ".part");
}

function versionIn(fileName: string, prefix: string, suffix: string): Sha256 | null {
  if (!fileName.startsWith(prefix) || !fileName.endsWith(suffix)) return null;
  const hex = fileName.slice(prefix.length, -suffix.length);
  return parseSha256(hex) === hex ? (hex as Sha256) : null;
}

/** What a partial file of binary name keeps beside it: its info, and that info's temp file while it is rewritten. */
function partialInfoVersion(fileName: string, name: string): Sha256 | null {
  const temp = /^(.+)\.\d+\.tmp$/.exec(fileName)?.[1];
  return temp === undefined ? versionIn(fileName, `.${name}.`, ".part.meta") : versionIn(temp, `..${name}.`, ".part.meta");
}

/**
 * Removes every partial download of the binary at binPath but keep's (the target being
 * downloaded, which is resumed), with what is kept beside them, and returns their versions. Only
 * the holder of the binary's lock calls it, once the runs downloading other versions are ended:
 * what is left is then a killed run's.
 */
export function removePartials(binPath: string, keep?: Sha256): Sha256[] {
  const dir = dirname(binPath);
  const name = basename(binPath);
  const removed: Sha256[] = [];
  for (const file of readdirSync(dir)) {
    const version = partialVersion(file, name);
    if (version && version !== keep && removeIfPresent(join(dir, file))) removed.push(version);
  }
  for (const file of readdirSync(dir)) {
    const version = partialInfoVersion(file, name);
    // An info's temp file is only there while its writer holds the lock we now hold; an info without its partial is nobody's.
    const orphan = version !== null && (version !== keep || file.endsWith(".tmp") || !isFile(join(dir, `.${name}.${version}.part`)));
    if (orphan) removeIfPresent(join(dir, file));
  }
  return removed;
}

function isFile(path: string): boolean {
  return statSync(path, { throwIfNoEntry: false })?.isFile() ?? false;
}

/**
 * What a pass would resume of version sha of the binary at binPath: the bytes it would keep, and
 * the whole size when known; null when there is nothing to resume. Reads only (for --dry-run and
 * status); whether the kept bytes are right is only known once they are re-hashed.
 */
export function resumablePartial(binPath: string, sha: Sha256, maxBytes: number): { bytes: number; total: number | null; validator: string } | null {
  const path = partialPath(binPath, sha);
  let size: number;
  try {
    const st = lstatSync(path);
    if (!st.isFile()) return null;
    size = st.size;
  } catch {
    return null;
  }
  // As the download will judge it; a partial to hash whole is only shown when it holds every byte announced.
  const info = readPartialInfo(path);
  const worth = judgePartial(size, info, maxBytes);
  if (!info || worth.kind === "restart" || (worth.kind === "hash-whole" && size !== info.total)) return null;
  return { bytes: worth.kind === "resume" ? worth.kept : size, total: info.total, validator: info.validator };
}
