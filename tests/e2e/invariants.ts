// Shared by the concurrency and crash tests: gates a test holds (real flocks, a held-back download), fast polling, and the invariants raced or killed passes must leave.
import { expect } from "bun:test";
import { dlopen, FFIType } from "bun:ffi";
import { closeSync, constants, existsSync, openSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import type { Artifact, BinManager } from "../fixture/bin-manager.ts";
import { spawnBinProxy, type Host } from "../fixture/host.ts";

export const MANIFEST_LOCK = ".bin-proxy-manifest.lock";
export const now = () => Math.floor(Date.now() / 1000);
export const sha256 = (bytes: Uint8Array) => new Bun.CryptoHasher("sha256").update(bytes).digest("hex");

const libc = dlopen("libc.so.6", { flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 } });

/** Takes the flock of fd (throwing when someone holds it); the returned function releases it, once. */
function holdFlock(fd: number, what: string): () => void {
  if (libc.symbols.flock(fd, 2 /* LOCK_EX */ | 4 /* LOCK_NB */) !== 0) {
    closeSync(fd);
    throw new Error(`${what} is locked by someone else`);
  }
  let held = true;
  return () => {
    if (held) closeSync(fd);
    held = false;
  };
}

/** Holds the lock directory's own flock, as a pass does while it takes, releases or sweeps a lock: passes wait at those points. */
export function holdLockDir(host: Host): () => void {
  return holdFlock(openSync(host.lockDir, constants.O_RDONLY | constants.O_DIRECTORY), host.lockDir);
}

/** Holds the flock of an existing file, as a live process holding a lock does. */
export function holdFileLock(path: string): () => void {
  return holdFlock(openSync(path, constants.O_RDONLY), path);
}

/** Holds the manifest's flock: a pass waits (up to 10 s) before it can rewrite the manifest. */
export function holdManifestLock(host: Host): () => void {
  return holdFlock(openSync(join(host.lockDir, MANIFEST_LOCK), constants.O_CREAT | constants.O_RDWR, 0o600), MANIFEST_LOCK);
}

export interface Gate {
  /** Lets request n (every request when n is omitted) send the rest of its body. */
  open(n?: number): void;
  /**
   * Request n has sent the bytes before its cut and the pass pid is writing partial: it is in the
   * middle of that download. (The partial file's size says nothing: the pass writes whole 4 MiB
   * blocks as they fill, and a body's end.)
   */
  downloading(pid: number, partial: string, n?: number): boolean;
}

/**
 * Serves name's downloads held back: the n-th request gets bytes[0..cuts[n]), then the rest once
 * open(n) is called (open() lifts every gate); requests past the cuts are served whole. A pass is
 * then mid-download for as long as the test wants, having received exactly cuts[n] bytes.
 */
export function gatedDownload(bm: BinManager, name: string, bytes: Uint8Array, ...cuts: number[]): Gate {
  const opens: (() => void)[] = [];
  const gates = cuts.map(() => new Promise<void>((resolve) => opens.push(resolve)));
  const sent: boolean[] = [];
  let requests = 0;
  bm.override("GET", `/api/v1/download/${name}`, () => {
    const n = requests++;
    const at = cuts[n] ?? bytes.length;
    return new Response(
      new ReadableStream<Uint8Array>({
        async start(c) {
          c.enqueue(bytes.slice(0, at));
          sent[n] = true;
          await gates[n];
          try {
            c.enqueue(bytes.slice(at));
            c.close();
          } catch {
            // the pass is gone (killed or ended) and its connection with it
          }
        },
      }),
      { headers: { "content-type": "application/octet-stream" } },
    );
  });
  return {
    open: (n?: number) => (n === undefined ? opens : [opens[n]!]).forEach((open) => open()),
    downloading: (pid: number, partial: string, n = 0) => sent[n] === true && hasOpen(pid, partial),
  };
}

/**
 * Polls cond until it holds. `fast` yields to the event loop between looks instead of sleeping, to
 * catch states that last milliseconds (the fixture server shares this event loop, so it keeps serving).
 */
export async function until(cond: () => boolean, what: () => string, opts: { timeoutMs?: number; fast?: boolean } = {}): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what()}`);
    await (opts.fast ? new Promise((resolve) => setImmediate(resolve)) : Bun.sleep(20));
  }
}

/** Whether process pid has path open, as /proc shows. */
export function hasOpen(pid: number, path: string): boolean {
  try {
    return readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${fd}`) === path;
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}

export interface Run {
  pid: number;
  code: number;
  stdout: string;
  stderr: string;
}

export interface Started {
  pid: number;
  done: Promise<Run>;
  proc: ReturnType<typeof spawnBinProxy>;
}

/** Starts a pass without waiting; `done` resolves when it exits. */
export function startPass(host: Host, api: string, extra: Record<string, string> = {}): Started {
  const proc = spawnBinProxy([], host.env(api, extra));
  const done = Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]).then(([stdout, stderr, code]) => ({ pid: proc.pid, code, stdout, stderr }));
  return { pid: proc.pid, done, proc };
}

/**
 * SIGKILL of exactly that pass, not its children (kill -9 of the pass, as an operator or the OOM
 * killer would). Through its Subprocess, which never signals a pid it has already reaped.
 */
export async function killPass(pass: Started): Promise<Run> {
  pass.proc.kill("SIGKILL");
  return pass.done;
}

/** Log lines of one event, as field maps (logfmt, values unquoted). */
export function events(host: Host, event: string): Record<string, string>[] {
  const text = existsSync(host.logFile) ? readFileSync(host.logFile, "utf8") : "";
  return text
    .split("\n")
    .filter((line) => line.includes(` event=${event} `) || line.endsWith(` event=${event}`))
    .map((line) => {
      const fields: Record<string, string> = {};
      for (const m of line.matchAll(/ ([A-Za-z_]+)=("(?:[^"\\]|\\.)*"|\S+)/g)) fields[m[1]!] = m[2]!.startsWith('"') ? (JSON.parse(m[2]!) as string) : m[2]!;
      return fields;
    });
}

/**
 * What a killed pass must leave, whatever instant it died: the binary whole (byte-identical to one
 * of the versions) and the manifest valid JSON naming one of them. Returns which versions they are.
 */
export function expectWhole(host: Host, name: string, versions: Artifact[]): { onDisk: string; recorded: string } {
  const shas = versions.map((v) => v.sha256);
  const onDisk = sha256(readFileSync(join(host.binDir, name)));
  expect(shas).toContain(onDisk);
  const doc = JSON.parse(readFileSync(host.manifest, "utf8")) as { binaries: { binaryName: string; version: string }[] };
  const recorded = doc.binaries.find((b) => b.binaryName === name)!.version;
  expect(shas).toContain(recorded);
  return { onDisk, recorded };
}

/**
 * After a pass that completed: the binary at `to`, recorded with `from` as its previous version,
 * and nothing else left anywhere under the host root but the manifest and its lock, the backup of
 * `from`, the hash cache, the config and the log: no partial, temp, lock or holder file.
 */
export function expectDone(host: Host, name: string, from: Artifact, to: Artifact): void {
  expect(sha256(readFileSync(join(host.binDir, name)))).toBe(to.sha256);
  const entry = host.readManifest().binaries.find((b) => b.binaryName === name)!;
  expect({ version: entry.version, previousVersion: entry.previousVersion }).toEqual({ version: to.sha256, previousVersion: from.sha256 });
  expect(host.listFiles()).toEqual(
    [
      `bin/${name}`,
      "etc/bin-manifests.json",
      "etc/config",
      `lock/${MANIFEST_LOCK}`,
      "log/bin-proxy.log",
      `state/backups/${name}/${from.sha256}`,
      "state/hash-cache.json",
    ].sort(),
  );
}
