// The disk writer and block reader against real filesystems: a disk (O_DIRECT), ramfs (which refuses it) and a full tmpfs.
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, constants, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { DiskWriter, readBlocks } from "../lib/diskwrite.ts";
import { cachedBytes, mountedDir } from "./fixture/mount.ts";

const MIB = 1 << 20;
const BLOCK = 4 * MIB;
const cleanups: (() => void)[] = [];
afterAll(() => cleanups.reverse().forEach((c) => c()));

/**
 * A directory on a disk filesystem: under the build directory of the checkout rather than TMPDIR,
 * which is a tmpfs on many machines (whose pages are always in memory, so cannot show a bypass).
 */
function diskDir(): string {
  const parent = resolve(import.meta.dir, "..", "dist");
  mkdirSync(parent, { recursive: true });
  const dir = mkdtempSync(join(parent, ".diskwrite-test-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function ramfsDir(): string {
  const mounted = mountedDir("ramfs");
  cleanups.push(mounted.cleanup);
  return mounted.dir;
}

/** Does this directory's filesystem take O_DIRECT? Asked of the kernel directly, not of DiskWriter. */
function takesDirectIo(dir: string): boolean {
  const path = join(dir, "probe");
  closeSync(openSync(path, "w"));
  try {
    closeSync(openSync(path, constants.O_WRONLY | constants.O_DIRECT));
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EINVAL") return false;
    throw err;
  } finally {
    rmSync(path);
  }
}

const randomBytes = (n: number) => {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(out.subarray(i, Math.min(n, i + 65536)));
  return out;
};

/** Writes data through a DiskWriter in chunks of random sizes, as a network would deliver it. */
async function writeThrough(path: string, data: Uint8Array): Promise<boolean> {
  const fd = openSync(path, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600);
  const disk = new DiskWriter(fd);
  try {
    for (let at = 0; at < data.length; ) {
      const n = Math.min(data.length - at, 1 + Math.floor(Math.random() * 1.5 * MIB));
      await disk.write(data.subarray(at, at + n));
      at += n;
    }
    await disk.finish();
  } finally {
    await disk.settle();
    closeSync(fd);
  }
  return disk.direct;
}

const SIZES = [0, 1, 4095, 4096, 4097, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 4096, 5 * BLOCK + 12345];

const FILESYSTEMS = [
  ["a disk filesystem", diskDir],
  ["ramfs, which refuses O_DIRECT", ramfsDir],
] as const;

/** Hands data to disk in chunks of random sizes, as a network would deliver it. */
async function feed(disk: DiskWriter, data: Uint8Array): Promise<void> {
  for (let at = 0; at < data.length; ) {
    const n = Math.min(data.length - at, 1 + Math.floor(Math.random() * 1.5 * MIB));
    await disk.write(data.subarray(at, at + n));
    at += n;
  }
}

describe("DiskWriter", () => {
  test.each([
    ["a disk filesystem", diskDir, "its own answer"],
    ["ramfs, which refuses O_DIRECT", ramfsDir, false],
  ] as const)("on %s every size lands byte for byte", async (_, makeDir, expectDirect) => {
    const dir = makeDir();
    const direct = expectDirect === false ? false : takesDirectIo(dir);
    for (const size of SIZES) {
      const data = randomBytes(size);
      const path = join(dir, `file-${size}`);
      expect(await writeThrough(path, data)).toBe(direct);
      expect(statSync(path).size).toBe(size);
      expect(Buffer.compare(readFileSync(path), Buffer.from(data))).toBe(0);
    }
  });

  test("with O_DIRECT the blocks bypass the page cache: a big file leaves at most its unaligned tail cached", async () => {
    const dir = diskDir();
    if (!takesDirectIo(dir)) throw new Error(`${dir} is on a filesystem without O_DIRECT; this test needs one that has it (ext4, xfs, btrfs)`);
    const path = join(dir, "big");
    const size = 6 * BLOCK + 1000;
    expect(await writeThrough(path, randomBytes(size))).toBe(true);
    // The buffered tail is less than a block; a buffered writer would leave all 24 MiB cached.
    expect(cachedBytes(path)).toBeLessThan(BLOCK);
    expect(statSync(path).size).toBe(size);
  });

  test("a full disk: the write fails with ENOSPC soon after, nothing stays in flight, the file stops at the limit", async () => {
    const mounted = mountedDir("tmpfs", "size=2m,mode=0755");
    cleanups.push(mounted.cleanup);
    const path = join(mounted.dir, "big");
    const fd = openSync(path, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600);
    const disk = new DiskWriter(fd);
    const chunk = randomBytes(64 * 1024);
    let accepted = 0;
    const failure = await (async () => {
      try {
        for (; accepted < 64 * MIB; accepted += chunk.length) await disk.write(chunk);
        await disk.finish();
      } catch (err) {
        return err as NodeJS.ErrnoException;
      }
    })();
    await disk.settle();
    closeSync(fd);
    expect(failure?.code).toBe("ENOSPC");
    // Backpressure: it stops within the buffers' worth of the first failed block, not after 64 MiB.
    expect(accepted).toBeLessThanOrEqual(2 * MIB + 4 * BLOCK);
    expect(statSync(path).size).toBeLessThanOrEqual(2 * MIB);
  });

  test.each(FILESYSTEMS)("on %s a cut keeps whole blocks, each seen by onBlock, and a writer from there completes the file", async (_, makeDir) => {
    const dir = makeDir();
    const path = join(dir, "resumed");
    const data = randomBytes(5 * BLOCK + 12345);
    const cutAt = 3 * BLOCK + 777;
    const fd = openSync(path, constants.O_CREAT | constants.O_EXCL | constants.O_RDWR, 0o600);
    try {
      const seen: Uint8Array[] = [];
      const first = new DiskWriter(fd, { onBlock: (block) => seen.push(block.slice()) });
      await feed(first, data.subarray(0, cutAt));
      const kept = await first.abandonTail();
      // The block still filling is dropped: the file and what onBlock saw are the same whole blocks.
      expect(kept).toBe(3 * BLOCK);
      expect(statSync(path).size).toBe(kept);
      expect(Buffer.compare(Buffer.concat(seen), Buffer.from(data.subarray(0, kept)))).toBe(0);
      const rest = new DiskWriter(fd, { from: kept, onBlock: (block) => seen.push(block.slice()) });
      await feed(rest, data.subarray(kept));
      await rest.finish();
      expect(Buffer.compare(readFileSync(path), Buffer.from(data))).toBe(0);
      expect(Buffer.compare(Buffer.concat(seen), Buffer.from(data))).toBe(0);
    } finally {
      closeSync(fd);
    }
    expect(() => new DiskWriter(-1, { from: 100 })).toThrow(/not 4096-aligned/);
  });
});

describe("readBlocks", () => {
  test.each(FILESYSTEMS)("on %s hands over exactly the bytes asked for, in order, and fails on a file that ends before", async (_, makeDir) => {
    const dir = makeDir();
    const path = join(dir, "kept");
    const data = randomBytes(5 * BLOCK + 12345);
    writeFileSync(path, data);
    const fd = openSync(path, "r+");
    try {
      for (const [from, length] of [[0, 0], [0, data.length], [0, 3 * BLOCK], [3 * BLOCK, 2 * BLOCK + 12345], [4096, 10]]) {
        const got: Uint8Array[] = [];
        await readBlocks(fd, from!, length!, (block) => {
          expect(block.length).toBeLessThanOrEqual(BLOCK);
          got.push(block.slice());
        });
        expect(Buffer.compare(Buffer.concat(got), Buffer.from(data.subarray(from!, from! + length!)))).toBe(0);
      }
      await expect(readBlocks(fd, 0, data.length + 1, () => {})).rejects.toThrow(/file ends at byte/);
      await expect(readBlocks(fd, 100, 10, () => {})).rejects.toThrow(/not 4096-aligned/);
    } finally {
      closeSync(fd);
    }
  });

  test("with O_DIRECT, re-reading a big file leaves the page cache as it was", async () => {
    const dir = diskDir();
    if (!takesDirectIo(dir)) throw new Error(`${dir} is on a filesystem without O_DIRECT; this test needs one that has it (ext4, xfs, btrfs)`);
    const path = join(dir, "big");
    await writeThrough(path, randomBytes(6 * BLOCK));
    const fd = openSync(path, "r");
    try {
      let total = 0;
      await readBlocks(fd, 0, 6 * BLOCK, (block) => void (total += block.length));
      expect(total).toBe(6 * BLOCK);
    } finally {
      closeSync(fd);
    }
    expect(cachedBytes(path)).toBeLessThan(BLOCK);
  });
});
