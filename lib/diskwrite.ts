// Owns streaming a large file to and from disk: whole aligned blocks written (or read) in order on a background thread, with O_DIRECT where the filesystem allows it.
import { read, write } from "node:fs";
import { ptr } from "bun:ffi";
import { setDirectIo, startWriteback } from "./libc.ts";

/**
 * One write. A multiple of every block size O_DIRECT asks buffers, lengths and offsets to be aligned
 * to. A file cut short holds a whole number of them: only its last write can be shorter.
 */
export const BLOCK = 4 << 20;
const ALIGNMENT = 4096;
/** One being written while the other fills: more only costs memory, as the network and hash are the slower side. */
const BUFFERS = 2;

/**
 * Writes a stream of bytes to fd from offset `from` (0, or the end of the whole blocks a cut left)
 * while the caller goes on receiving: the bytes are copied into a few fixed buffers and each full
 * buffer is written by Bun's I/O threads, one write at a time and in order. Memory is those
 * buffers, whatever the file's size. `onBlock` sees each block just before its write, in file
 * order: a hash fed there covers exactly the bytes handed to the disk, so that after a cut it
 * still matches the file (see abandonTail).
 *
 * With O_DIRECT the blocks go from these buffers to the disk without passing through the page
 * cache: a GiB binary neither evicts the host's working set nor leaves a GiB of dirty pages for
 * the fsync before the install to wait on. Where the filesystem refuses O_DIRECT the same writes
 * go through the page cache, each block handed to the disk as soon as it is written.
 *
 * The caller must `settle()` before closing fd, even after a failure: a write still in flight on
 * a closed descriptor number could land in whatever file is opened next with that number.
 */
export class DiskWriter {
  readonly direct: boolean;
  private readonly spare: Uint8Array[];
  private current: Uint8Array;
  private filled = 0;
  /** Where the next block goes: the end of the bytes handed to the disk. */
  private written: number;
  /** The end of the bytes whose writes are done (they are written in order). */
  private done: number;
  /** The writes submitted and not yet done, oldest first; each settles once its buffer is spare again. */
  private readonly inFlight: Promise<void>[] = [];
  private failure: Error | null = null;
  private readonly onBlock: (block: Uint8Array) => void;

  constructor(
    private readonly fd: number,
    opts: { from?: number; onBlock?: (block: Uint8Array) => void } = {},
  ) {
    this.written = opts.from ?? 0;
    this.done = this.written;
    if (this.written % ALIGNMENT !== 0) throw new Error(`DiskWriter: offset ${this.written} is not ${ALIGNMENT}-aligned`);
    this.onBlock = opts.onBlock ?? (() => {});
    this.direct = setDirectIo(fd, true);
    this.spare = Array.from({ length: BUFFERS }, alignedBuffer);
    this.current = this.spare.pop()!;
  }

  /** Takes a copy of data; resolves once there is room for more. Rejects with the first failed write. */
  async write(data: Uint8Array): Promise<void> {
    for (let taken = 0; taken < data.length; ) {
      const n = Math.min(data.length - taken, BLOCK - this.filled);
      this.current.set(data.subarray(taken, taken + n), this.filled);
      this.filled += n;
      taken += n;
      if (this.filled === BLOCK) await this.submitCurrent();
    }
    if (this.failure) throw this.failure;
  }

  /** Writes what is left and waits for every write: the file then holds exactly the bytes given. */
  async finish(): Promise<void> {
    // Only the last block can be a length O_DIRECT refuses; it goes through the page cache.
    if (this.direct && this.filled % ALIGNMENT !== 0) this.enqueue(async () => void setDirectIo(this.fd, false));
    if (this.filled > 0) await this.submitCurrent();
    await this.settle();
    if (this.failure) throw this.failure;
  }

  /**
   * After a cut: the writes in flight are awaited, and the block still filling is never written.
   * The returned offset is then the end of what this writer put on disk, whole blocks every one
   * seen by onBlock; a write that failed is thrown instead (the disk's failure, not the network's).
   */
  async abandonTail(): Promise<number> {
    await this.settle();
    if (this.failure) throw this.failure;
    return this.written;
  }

  /** The end of the bytes on disk, and of those handed to the disk (the same once nothing is in flight). */
  get progress(): { landed: number; submitted: number } {
    return { landed: this.done, submitted: this.written };
  }

  /** Resolves when the oldest write in flight is done (at once when none is); rejects with a failed write. */
  async nextLanding(): Promise<void> {
    await this.inFlight[0];
    if (this.failure) throw this.failure;
  }

  /** Waits until no write is in flight; their failures are kept for write() and finish() to report. */
  async settle(): Promise<void> {
    await Promise.all(this.inFlight);
  }

  private async submitCurrent(): Promise<void> {
    const buffer = this.current;
    const length = this.filled;
    const offset = this.written;
    this.written += length;
    this.onBlock(buffer.subarray(0, length));
    this.enqueue(async () => {
      try {
        if (this.failure) return; // a block after a failed one would leave a hole
        await writeFully(this.fd, buffer.subarray(0, length), offset);
        this.done = offset + length;
        if (!this.direct) startWriteback(this.fd, offset, length);
      } finally {
        this.spare.push(buffer);
      }
    });
    // No spare buffer means every one is in flight: the oldest write frees one.
    while (this.spare.length === 0) await this.inFlight[0];
    this.current = this.spare.pop()!;
    this.filled = 0;
  }

  /** Runs job after every job enqueued before it; its failure is recorded, never thrown here. */
  private enqueue(job: () => Promise<void>): void {
    const previous = this.inFlight.at(-1) ?? Promise.resolve();
    const done = previous
      .then(job)
      .catch((err: unknown) => {
        this.failure ??= err instanceof Error ? err : new Error(String(err));
      })
      .finally(() => this.inFlight.splice(this.inFlight.indexOf(done), 1));
    this.inFlight.push(done);
  }
}

/** A BLOCK-sized buffer whose address is ALIGNMENT-aligned, as O_DIRECT requires. */
function alignedBuffer(): Uint8Array {
  const raw = new Uint8Array(BLOCK + ALIGNMENT);
  const skip = (ALIGNMENT - (ptr(raw) % ALIGNMENT)) % ALIGNMENT;
  return raw.subarray(skip, skip + BLOCK);
}

/** pwrite on an I/O thread, until all of data is written or the kernel says why not. */
async function writeFully(fd: number, data: Uint8Array, offset: number): Promise<void> {
  for (let done = 0; done < data.length; ) {
    done += await new Promise<number>((resolve, reject) =>
      write(fd, data, done, data.length - done, offset + done, (err, n) => (err ? reject(err) : resolve(n))),
    );
  }
}

/**
 * Hands `length` bytes of fd from offset `from` (ALIGNMENT-aligned) to `each`, in order, in blocks
 * of at most BLOCK bytes (each valid only during its call), reading the next block while `each`
 * works on the current one. With O_DIRECT where the filesystem allows it: re-reading a GiB partial
 * file leaves the page cache as the download left it. Throws when the file ends before.
 */
export async function readBlocks(fd: number, from: number, length: number, each: (block: Uint8Array) => void): Promise<void> {
  if (from % ALIGNMENT !== 0) throw new Error(`readBlocks: offset ${from} is not ${ALIGNMENT}-aligned`);
  const direct = setDirectIo(fd, true);
  const buffers = Array.from({ length: BUFFERS }, alignedBuffer);
  // A read is always a whole aligned block (short at the end of the file), so O_DIRECT takes it.
  const readAt = (offset: number, into: Uint8Array) =>
    new Promise<number>((resolve, reject) => read(fd, into, 0, BLOCK, offset, (err, n) => (err ? reject(err) : resolve(n))));
  try {
    const end = from + length;
    let next = length > 0 ? readAt(from, buffers[0]!) : null;
    for (let offset = from, i = 0; next; i++) {
      const n = await next;
      const take = Math.min(n, end - offset);
      if (n < Math.min(BLOCK, end - offset)) throw new Error(`file ends at byte ${offset + n}, before ${end}`);
      const block = buffers[i % BUFFERS]!;
      offset += take;
      next = offset < end ? readAt(offset, buffers[(i + 1) % BUFFERS]!) : null;
      try {
        each(block.subarray(0, take));
      } catch (err) {
        await next?.catch(() => {}); // never leave a read in flight into a buffer we drop
        throw err;
      }
    }
  } finally {
    if (direct) setDirectIo(fd, false);
  }
}
