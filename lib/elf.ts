// Owns the architecture check (SPEC §10): whether a downloaded ELF file is one this host can run, from its header.
import { closeSync, constants, openSync, readSync } from "node:fs";

/** ELF's identification and e_machine all lie in the first 20 bytes; 64 is the whole ELF64 header. */
export const ELF_HEADER_BYTES = 64;

class ElfError extends Error {}

const MAGIC = [0x7f, 0x45, 0x4c, 0x46]; // "\x7fELF"
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const ELFDATA2MSB = 2;
const E_MACHINE_OFFSET = 18;

/** e_machine values, named as `uname -m` names the machine, with ELF's own name for it. */
const MACHINES: Record<number, { uname: string; elf: string }> = {
  2: { uname: "sparc", elf: "SPARC" },
  3: { uname: "i386", elf: "Intel 80386" },
  8: { uname: "mips", elf: "MIPS" },
  20: { uname: "ppc", elf: "PowerPC" },
  21: { uname: "ppc64", elf: "PowerPC64" },
  22: { uname: "s390x", elf: "S/390" },
  40: { uname: "arm", elf: "ARM" },
  43: { uname: "sparc64", elf: "SPARC V9" },
  62: { uname: "x86_64", elf: "x86-64" },
  183: { uname: "aarch64", elf: "AArch64" },
  243: { uname: "riscv64", elf: "RISC-V" },
  258: { uname: "loongarch64", elf: "LoongArch" },
};

/** The e_machine a host runs natively, by its `uname -m`: the two architectures bin-proxy is built for. */
const HOST_MACHINE: Record<string, number> = { x86_64: 62, aarch64: 183 };

const machineName = (machine: number): string => {
  const known = MACHINES[machine];
  return known ? `${known.uname} (${known.elf})` : `e_machine ${machine}`;
};

/**
 * Judges the first bytes of a file (pure). null: this host can run it, or it is not ELF at all (a
 * script, which its interpreter runs wherever it is). Otherwise the error to fail the update with,
 * naming the file's architecture and the host's. Every ELF type is judged, not only executables:
 * a managed file built for another machine is the wrong file whatever its type. On a host whose
 * architecture bin-proxy does not know, nothing can be judged.
 */
export function elfMismatch(header: Uint8Array, hostArch: string): ElfError | null {
  if (header.length < MAGIC.length || MAGIC.some((byte, i) => header[i] !== byte)) return null;
  const hostMachine = HOST_MACHINE[hostArch];
  if (hostMachine === undefined) return null;
  const host = `this host is ${hostArch}`;
  if (header.length < E_MACHINE_OFFSET + 2) return new ElfError(`the download is a truncated ELF file (${header.length} bytes), ${host}`);
  const data = header[5];
  if (data !== ELFDATA2LSB && data !== ELFDATA2MSB) return new ElfError(`the download is an ELF file of unknown byte order (EI_DATA ${data}), ${host}`);
  const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
  const machine = view.getUint16(E_MACHINE_OFFSET, data === ELFDATA2LSB);
  const traits = [header[4] === ELFCLASS64 ? "" : header[4] === 1 ? "32-bit " : `ELFCLASS ${header[4]} `, data === ELFDATA2LSB ? "" : "big-endian "].join("");
  if (machine === hostMachine && traits === "") return null;
  return new ElfError(`the download is ${traits ? `a ${traits}` : "an "}ELF for ${machineName(machine)}, ${host}`);
}

/** The first ELF_HEADER_BYTES of the file at path (fewer for a shorter file); never follows a symlink. */
export function readElfHeader(path: string): Uint8Array {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const header = new Uint8Array(ELF_HEADER_BYTES);
    return header.subarray(0, readSync(fd, header, 0, ELF_HEADER_BYTES, 0));
  } finally {
    closeSync(fd);
  }
}

/** Throws ElfError when the file at path is an ELF this host cannot run (SPEC §10); call it before anything is swapped. */
export function assertRunsHere(path: string, hostArch: string): void {
  const mismatch = elfMismatch(readElfHeader(path), hostArch);
  if (mismatch) throw mismatch;
}
