// Unit tests of the architecture check: real executables of both architectures, crafted headers and scripts.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assertRunsHere, ELF_HEADER_BYTES, elfMismatch, readElfHeader } from "../../lib/elf.ts";
import { hostCpuArch } from "../../lib/nodeinfo.ts";

/** An aarch64 ELF whatever the machine running the tests: the loader of Debian's libc6-arm64-cross. */
const AARCH64_ELF = "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1";
const HOST = hostCpuArch();
const OTHER = HOST === "x86_64" ? "aarch64" : "x86_64";
const ELF_NAMES: Record<string, string> = { x86_64: "x86_64 (x86-64)", aarch64: "aarch64 (AArch64)" };

const dir = mkdtempSync(join(tmpdir(), "bin-proxy-elf-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function aarch64Elf(): string {
  if (!existsSync(AARCH64_ELF)) throw new Error(`${AARCH64_ELF} not found: install Debian's libc6-arm64-cross (.ci/run does)`);
  return AARCH64_ELF;
}

/** An ELF header of the given class (1: 32-bit, 2: 64-bit), byte order (1: little, 2: big) and e_machine. */
function craftedHeader(elfClass: number, data: number, machine: number): Uint8Array {
  const header = new Uint8Array(ELF_HEADER_BYTES);
  header.set([0x7f, 0x45, 0x4c, 0x46, elfClass, data, 1]);
  new DataView(header.buffer).setUint16(16, 2, data === 1); // ET_EXEC
  new DataView(header.buffer).setUint16(18, machine, data === 1);
  return header;
}

describe("real executables", () => {
  test("the host's own /bin/true runs here", () => {
    expect(elfMismatch(readElfHeader("/bin/true"), HOST)).toBeNull();
    expect(() => assertRunsHere("/bin/true", HOST)).not.toThrow();
  });

  test("an aarch64 ELF runs on aarch64 and is refused on x86_64, naming both", () => {
    const header = readElfHeader(aarch64Elf());
    expect(elfMismatch(header, "aarch64")).toBeNull();
    expect(elfMismatch(header, "x86_64")?.message).toBe("the download is an ELF for aarch64 (AArch64), this host is x86_64");
  });

  test("the host's /bin/true is refused on the other architecture", () => {
    expect(elfMismatch(readElfHeader("/bin/true"), OTHER)?.message).toBe(`the download is an ELF for ${ELF_NAMES[HOST]}, this host is ${OTHER}`);
    expect(() => assertRunsHere("/bin/true", OTHER)).toThrow(`this host is ${OTHER}`);
  });
});

describe("crafted headers", () => {
  test("a 32-bit ELF is refused on a 64-bit host, even of the same family", () => {
    expect(elfMismatch(craftedHeader(1, 1, 3), "x86_64")?.message).toBe("the download is a 32-bit ELF for i386 (Intel 80386), this host is x86_64");
    expect(elfMismatch(craftedHeader(1, 1, 62), "x86_64")?.message).toBe("the download is a 32-bit ELF for x86_64 (x86-64), this host is x86_64");
  });

  test("a big-endian ELF of the host's machine is refused", () => {
    expect(elfMismatch(craftedHeader(2, 2, 183), "aarch64")?.message).toBe("the download is a big-endian ELF for aarch64 (AArch64), this host is aarch64");
  });

  test("a 64-bit little-endian ELF of the host's machine passes; an unknown machine is named by its number", () => {
    expect(elfMismatch(craftedHeader(2, 1, 62), "x86_64")).toBeNull();
    expect(elfMismatch(craftedHeader(2, 1, 9999), "x86_64")?.message).toBe("the download is an ELF for e_machine 9999, this host is x86_64");
  });

  test("a truncated ELF header is refused; an unknown byte order too", () => {
    expect(elfMismatch(craftedHeader(2, 1, 62).subarray(0, 10), "x86_64")?.message).toBe("the download is a truncated ELF file (10 bytes), this host is x86_64");
    expect(elfMismatch(craftedHeader(2, 7, 62), "x86_64")?.message).toBe("the download is an ELF file of unknown byte order (EI_DATA 7), this host is x86_64");
  });

  test("on a host of an architecture bin-proxy is not built for, nothing is judged", () => {
    expect(elfMismatch(craftedHeader(2, 1, 62), "riscv64")).toBeNull();
  });
});

describe("files that are not ELF pass", () => {
  test("a shell script, an empty file, a file of three bytes", () => {
    const script = join(dir, "script");
    writeFileSync(script, "#!/bin/sh\necho hello\n");
    expect(() => assertRunsHere(script, "x86_64")).not.toThrow();
    expect(elfMismatch(new Uint8Array(0), "x86_64")).toBeNull();
    expect(elfMismatch(new Uint8Array([0x7f, 0x45, 0x4c]), "x86_64")).toBeNull();
  });
});

describe("reading the header", () => {
  test("reads the first 64 bytes, fewer of a shorter file", () => {
    expect(readElfHeader("/bin/true")).toHaveLength(ELF_HEADER_BYTES);
    const short = join(dir, "short");
    writeFileSync(short, "#!");
    expect(Buffer.from(readElfHeader(short)).toString()).toBe("#!");
  });

  test("never follows a symlink", () => {
    const link = join(dir, "link");
    symlinkSync("/bin/true", link);
    expect(() => readElfHeader(link)).toThrow(/ELOOP/);
  });
});
