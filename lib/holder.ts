// Owns holder records and process identity: who holds a version lock (`.{lock}.holder`), and whether that very process still runs and has the lock open.
import { readdirSync, readFileSync, readlinkSync, statSync, type BigIntStats } from "node:fs";
import { readTextNoFollow, writeFileAtomic } from "./fsx.ts";

// The lock keeps the old script's one-line format, so who holds it is written beside it, in
// `.{lock}.holder`: one line "pid start ino time" per lock file it vouches for.

/**
 * Process pid, started at kernel time `start` (so a reused pid never passes for it), holds the
 * lock file of inode `ino` that says `time` (so the line never vouches for a file written since).
 */
export interface HolderLine {
  pid: number;
  start: string;
  ino: string;
  time: number;
}

/** The valid lines of a holder record; a line without a start time proves nothing and is dropped. */
export function parseHolderRecord(text: string): HolderLine[] {
  return text.split("\n").flatMap((raw) => {
    const fields = raw.trim().split(" ");
    if (fields.length !== 4 || !fields.every((f) => /^\d{1,20}$/.test(f))) return [];
    const [pid, start, ino, time] = fields as [string, string, string, string];
    const line = { pid: Number(pid), start, ino: BigInt(ino).toString(), time: Number(time) };
    return Number.isSafeInteger(line.pid) && line.pid > 0 && Number.isSafeInteger(line.time) ? [line] : [];
  });
}

export function formatHolderRecord(lines: HolderLine[]): string {
  return lines.map((l) => `${l.pid} ${l.start} ${l.ino} ${l.time}\n`).join("");
}

export const holderPath = (lockPath: string) => lockPath.replace(/([^/]+)$/, ".$1.holder");
/** The lock file a holder record belongs to, when fileName is one. */
export const recordedLock = (fileName: string) => /^\.(.+\.lock)\.holder$/.exec(fileName)?.[1] ?? null;

function readRecord(lockPath: string): HolderLine[] {
  try {
    return parseHolderRecord(readTextNoFollow(holderPath(lockPath)));
  } catch {
    return [];
  }
}

export function writeRecord(lockPath: string, lines: HolderLine[]): void {
  writeFileAtomic(holderPath(lockPath), formatHolderRecord(lines), { mode: 0o600 });
}

/** The kernel's start time of pid (field 22 of /proc/pid/stat), or null when it is gone (or a zombie). */
export function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields[0] === "Z" || fields[0] === "X" ? null : (fields[19] ?? null);
  } catch {
    return null;
  }
}

/** True while the line's pid is still the very process it names: not gone, not a zombie, not a reused pid. */
export const stillRuns = (h: HolderLine) => processStart(h.pid) === h.start;

/** Whether pid has the file of st open (any of its descriptors), as /proc/PID/fd shows. */
function hasFileOpen(pid: number, st: BigIntStats): boolean {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  return fds.some((fd) => {
    try {
      if (!readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith("/")) return false;
      const open = statSync(`/proc/${pid}/fd/${fd}`, { bigint: true });
      return open.ino === st.ino && open.dev === st.dev;
    } catch {
      return false;
    }
  });
}

/**
 * What the holder record proves about the lock file st (whose content says `time`):
 * - running: the recorded process still runs and has this very file open: it is the holder;
 * - gone: the line vouches for this very file as written, and that process no longer exists;
 * - unproven: anything else (no record: the old script's lock; a record for another file; a live
 *   process that does not have the lock open; this very process).
 */
export type HolderState = "running" | "gone" | "unproven";

export function holderOf(lockPath: string, st: BigIntStats, time: number | null): { line: HolderLine | null; state: HolderState } {
  const line = readRecord(lockPath).find((l) => l.ino === st.ino.toString()) ?? null;
  // The pass itself never holds a lock it is looking at (a record naming it was made to look so).
  if (!line || line.pid === process.pid) return { line, state: "unproven" };
  if (stillRuns(line)) return { line, state: hasFileOpen(line.pid, st) ? "running" : "unproven" };
  return { line, state: line.time === time ? "gone" : "unproven" };
}

/** The holder as status and a busy lock's log line name it. */
export function describeHolder(line: HolderLine | null, state: HolderState): string {
  if (!line) return "unknown (not recorded by bin-proxy)";
  return state === "gone" || !stillRuns(line) ? `pid ${line.pid} (no longer running)` : `pid ${line.pid}`;
}
