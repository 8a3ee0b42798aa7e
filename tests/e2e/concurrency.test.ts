// Concurrency: passes at once make one download; a lock is taken over only when stale or provably abandoned; obsolete downloads are ended, and nothing else is ever signalled.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { formatHolderRecord, parseHolderRecord, processStart, type HolderState } from "../../lib/holder.ts";
import { judgeLock } from "../../lib/lockjudge.ts";
import { partialVersion } from "../../lib/download.ts";
import { artifact, startBinManager, type Artifact, type BinManager } from "../fixture/bin-manager.ts";
import { BIN_PROXY, hostPool, serviceScript, type Host } from "../fixture/host.ts";
import { processAlive } from "../fixture/supervisor.ts";
import {
  events, expectDone, gatedDownload, hasOpen, holdFileLock, holdLockDir, killPass, now, sha256, startPass, until, type Run,
} from "./invariants.ts";

const API = "/api/v1";
/** How many passes run at once: SPEC §7 asks for one winner among any number; 12 is what cron piles up in 12 slow minutes. */
const CROWD = 12;

let bm: BinManager;
const hosts = hostPool();
const decoys: ReturnType<typeof Bun.spawn>[] = [];

beforeAll(async () => {
  bm = await startBinManager();
});

afterAll(async () => {
  for (const d of decoys) d.kill("SIGKILL");
  await bm.stop();
  hosts.cleanup();
});

beforeEach(() => {
  bm.clearRequests();
  bm.throttle(null);
});

interface Scenario {
  host: Host;
  name: string;
  v1: Artifact;
  v2: Artifact;
  lock: string;
  record: string;
  partial: string;
}

/** A host whose binary `name` is at v1 (so recorded), the API naming v2 of `size` bytes. */
function scenario(name: string, size = 64 * 1024): Scenario {
  const host = hosts.make();
  const v1 = artifact(serviceScript({ tag: `${name}-v1` }));
  const v2 = artifact(serviceScript({ tag: `${name}-v2 ${"x".repeat(size)}` }));
  host.writeBinary(name, v1.bytes);
  host.writeManifest([{ serviceName: "", binaryName: name, version: v1.sha256, previousVersion: "", port: 0 }]);
  bm.setTarget(name, v2);
  const lock = join(host.lockDir, `${name}-${v2.sha256}.lock`);
  return { host, name, v1, v2, lock, record: join(host.lockDir, `.${name}-${v2.sha256}.lock.holder`), partial: join(host.binDir, `.${name}.${v2.sha256}.part`) };
}

/** A pass started on s and held mid-download: the gate has sent its first `cut` bytes and the pass has the partial open. */
async function midDownload(s: Scenario, cut: number, extra: Record<string, string> = {}) {
  const gate = gatedDownload(bm, s.name, s.v2.bytes, cut);
  const pass = startPass(s.host, bm.api, extra);
  await until(() => gate.downloading(pass.pid, s.partial), () => `a pass mid-download\n${s.host.log()}`);
  return { gate, pass };
}

/** That pass killed there (lock, holder record and partial left behind); later downloads are served whole. */
async function killedMidDownload(s: Scenario) {
  const { gate, pass } = await midDownload(s, 1000);
  expect((await killPass(pass)).code).toBe(137);
  gate.open();
  bm.override("GET", `${API}/download/${s.name}`, null);
  return pass;
}

const downloads = (name: string) => bm.requests.filter((r) => r.path === `${API}/download/${name}` || r.path === `${API}/releases/latest/${name}/download`);
const binary = (s: Scenario) => sha256(readFileSync(join(s.host.binDir, s.name)));
const startOf = (pid: number) => processStart(pid) ?? `no process ${pid}`;

async function crowd(s: Scenario, n: number, extra: Record<string, string> = {}): Promise<Run[]> {
  return Promise.all(Array.from({ length: n }, () => startPass(s.host, bm.api, extra).done));
}

function expectAllClean(runs: Run[]): void {
  expect(runs.map((r) => [r.code, r.stdout, r.stderr])).toEqual(runs.map(() => [0, "", ""]));
}

/** A sleep whose command line names the binary, its lock and its partial file: a process a name pattern would wrongly pick. */
function decoy(s: Scenario, opts: { holding?: string } = {}) {
  const d = Bun.spawn(["sleep", "100000"], {
    argv0: `bin-proxy ${s.name} ${s.lock} ${s.partial}`,
    stdin: opts.holding ? Bun.file(opts.holding) : "ignore",
    stdout: "ignore",
    stderr: "ignore",
  });
  decoys.push(d);
  return d;
}

describe("lock decisions", () => {
  test("judgeLock: young locks wait unless their recorded holder is provably gone; old ones are taken over, their running holder ended first", () => {
    const verdict = (ageSec: number, flockHeld: boolean, holder: HolderState) => judgeLock({ ageSec, timeoutSec: 600, flockHeld, holder });
    // The old script records no holder: its lock waits out the timeout, flock or not.
    expect(verdict(5, false, "unproven")).toEqual({ kind: "busy" });
    expect(verdict(599, false, "unproven")).toEqual({ kind: "busy" });
    expect(verdict(600, false, "unproven")).toEqual({ kind: "take-over", why: "stale" });
    // A bin-proxy whose recorded process is gone, flock free: taken over at once.
    expect(verdict(5, false, "gone")).toEqual({ kind: "take-over", why: "holder-gone" });
    // Someone still holds the flock: never taken over early, whatever the record says.
    expect(verdict(5, true, "gone")).toEqual({ kind: "busy" });
    expect(verdict(5, true, "running")).toEqual({ kind: "busy" });
    expect(verdict(5, false, "running")).toEqual({ kind: "busy" });
    // Stale: a holder that still runs is ended before the lock is taken, so two runs never share a version.
    expect(verdict(900, true, "running")).toEqual({ kind: "end-holder" });
    expect(verdict(900, true, "unproven")).toEqual({ kind: "take-over", why: "stale" });
    expect(verdict(900, false, "gone")).toEqual({ kind: "take-over", why: "stale" });
  });

  test("holder records: one line per lock file, a line without a start time or with junk proves nothing", () => {
    const line = { pid: 4242, start: "987654", ino: "123456789012", time: 1764064800 };
    expect(formatHolderRecord([line])).toBe("4242 987654 123456789012 1764064800\n");
    expect(parseHolderRecord(formatHolderRecord([line, { ...line, pid: 7, ino: "5" }]))).toEqual([line, { ...line, pid: 7, ino: "5" }]);
    expect(parseHolderRecord("4242  123 1764064800\n")).toEqual([]);
    expect(parseHolderRecord("4242 x 123 1764064800\n")).toEqual([]);
    expect(parseHolderRecord("0 1 123 1764064800\n")).toEqual([]);
    expect(parseHolderRecord("4242 1 123 1764064800 extra\n")).toEqual([]);
    expect(parseHolderRecord("")).toEqual([]);
  });

  test("partial files are recognised exactly: never another binary's", () => {
    const sha = "a".repeat(64);
    expect(partialVersion(`.app.${sha}.part`, "app") as string | null).toBe(sha);
    expect(partialVersion(`.app.x.${sha}.part`, "app")).toBeNull();
    expect(partialVersion(`.app-extra.${sha}.part`, "app")).toBeNull();
    expect(partialVersion(`.app.${sha.toUpperCase()}.part`, "app")).toBeNull();
    expect(partialVersion(`.app.${sha}.part.tmp`, "app")).toBeNull();
    expect(partialVersion(`app.${sha}.part`, "app")).toBeNull();
  });
});

describe("one winner", () => {
  const cases = ["no lock", "the lock of a pass killed mid-download", "an old-script lock older than LOCK_TIMEOUT"] as const;
  for (const [i, present] of cases.entries()) {
    test(`${CROWD} passes at once, ${present}: one download, one update, the lock file in the old format throughout`, async () => {
      const s = scenario(`crowd${i}`);
      if (present === "the lock of a pass killed mid-download") {
        await killedMidDownload(s);
      }
      if (present === "an old-script lock older than LOCK_TIMEOUT") writeFileSync(s.lock, `${now() - 700}\n`);
      bm.clearRequests();
      // Slow enough that the winner still downloads while every other pass reaches the lock.
      bm.throttle(24 * 1024);

      const runs = crowd(s, CROWD);
      // While it downloads, the lock says the Unix time and a newline, nothing else (the old script reads it),
      // and its holder record names a live pass by pid and kernel start time.
      const seen: string[] = [];
      await until(() => {
        try {
          seen.push(readFileSync(s.lock, "utf8"));
          const [pid, start, ino] = readFileSync(s.record, "utf8").split(" ");
          return hasOpen(Number(pid), s.partial) && start === startOf(Number(pid)) && ino === String(statSync(s.lock).ino);
        } catch {
          return false;
        }
      }, () => `a pass downloading with its lock recorded\n${s.host.log()}`);
      const results = await runs;

      expect(seen.length).toBeGreaterThan(0);
      for (const content of seen) expect(content).toMatch(/^\d+\n$/);
      expect(Math.abs(Number(seen.at(-1)!.trim()) - now())).toBeLessThan(120);
      expectAllClean(results);
      expect(downloads(s.name)).toHaveLength(1);
      expect(events(s.host, "updated")).toHaveLength(1);
      expect(events(s.host, "update_failed")).toEqual([]);
      expect(events(s.host, "lock_taken_over")).toHaveLength(present === "no lock" ? 0 : 1);
      if (present === "an old-script lock older than LOCK_TIMEOUT") expect(events(s.host, "lock_taken_over")[0]!.reason).toMatch(/^stale: 7\d\ds old$/);
      if (present === "the lock of a pass killed mid-download") expect(events(s.host, "lock_taken_over")[0]!.reason).toMatch(/^holder pid \d+ no longer exists$/);
      expectDone(s.host, s.name, s.v1, s.v2);
    }, 90_000);
  }

  test("passes started one after another while an update runs: still one download", async () => {
    const s = scenario("stagger");
    bm.throttle(32 * 1024);
    const runs: Promise<Run>[] = [];
    for (let i = 0; i < CROWD; i++) {
      runs.push(startPass(s.host, bm.api).done);
      await Bun.sleep(150);
    }
    expectAllClean(await Promise.all(runs));
    expect(downloads(s.name)).toHaveLength(1);
    expect(events(s.host, "updated")).toHaveLength(1);
    expectDone(s.host, s.name, s.v1, s.v2);
  }, 90_000);

  test("a pass that checked before another finished the same update decides again under the lock: no second download", async () => {
    const s = scenario("recheck");
    const { gate, pass: winner } = await midDownload(s, 1000);
    // Held by the test, the lock directory stops the late pass right after its check (v1 on disk),
    // and the winner when it comes to release its lock, after its update is recorded.
    const release = holdLockDir(s.host);
    let late!: ReturnType<typeof startPass>;
    try {
      late = startPass(s.host, bm.api);
      await until(() => hasOpen(late.pid, s.host.lockDir), () => "the late pass waiting for the lock directory");
      gate.open();
      await until(() => s.host.readManifest().binaries[0]!.version === s.v2.sha256, () => `the winner's update\n${s.host.log()}`);
      expect((await killPass(winner)).code).toBe(137); // so its lock is still there, its holder provably gone
    } finally {
      release();
      bm.override("GET", `${API}/download/${s.name}`, null);
    }
    expectAllClean([await late.done]);
    expect(downloads(s.name)).toHaveLength(1);
    expect(events(s.host, "lock_taken_over").map((e) => e.reason)).toEqual([`holder pid ${winner.pid} no longer exists`]);
    expect(events(s.host, "updated")).toHaveLength(1);
    expectDone(s.host, s.name, s.v1, s.v2);
  }, 60_000);
});

describe("the old script side by side", () => {
  test("its fresh lock (a timestamp, no holder record) is waited out to LOCK_TIMEOUT, untouched; then one pass takes it over", async () => {
    const s = scenario("oldfresh");
    const taken = now();
    writeFileSync(s.lock, `${taken}\n`);
    const before = statSync(s.lock);
    const env = { LOCK_TIMEOUT: "3" };

    expectAllClean(await crowd(s, 6, env));
    expect(downloads(s.name)).toEqual([]);
    expect(events(s.host, "busy").map((e) => e.holder)).toEqual(Array(6).fill("unknown (not recorded by bin-proxy)"));
    expect(readFileSync(s.lock, "utf8")).toBe(`${taken}\n`);
    expect([statSync(s.lock).ino, statSync(s.lock).mtimeMs]).toEqual([before.ino, before.mtimeMs]);
    expect(binary(s)).toBe(s.v1.sha256);

    await until(() => now() >= taken + 3, () => "the lock to age past LOCK_TIMEOUT", { timeoutMs: 10_000 });
    bm.clearRequests();
    expectAllClean(await crowd(s, 6, env));
    expect(downloads(s.name)).toHaveLength(1);
    expect(downloads(s.name)[0]!.at).toBeGreaterThanOrEqual((taken + 3) * 1000);
    expect(events(s.host, "lock_taken_over").map((e) => e.reason)).toEqual([expect.stringMatching(/^stale: \d+s old$/)]);
    expectDone(s.host, s.name, s.v1, s.v2);
  }, 60_000);

  test("a dead holder's record stops vouching once the old script rewrote the lock, and proves nothing while the flock is held", async () => {
    const s = scenario("rewritten");
    const killed = await killedMidDownload(s);
    const recorded = Number(readFileSync(s.record, "utf8").split(" ")[3]);

    // Someone (not bin-proxy) holds the lock's flock: the dead holder's record proves nothing.
    const release = holdFileLock(s.lock);
    try {
      expectAllClean([await startPass(s.host, bm.api).done]);
    } finally {
      release();
    }
    // The old script rewrote the lock in place (same inode, its own time): the record vouches for the old content only.
    writeFileSync(s.lock, `${recorded + 1}\n`);
    expectAllClean([await startPass(s.host, bm.api).done]);
    expect(events(s.host, "busy").map((e) => e.holder)).toEqual(Array(2).fill(`pid ${killed.pid} (no longer running)`));
    expect(downloads(s.name)).toHaveLength(1); // the killed pass's
    expect(binary(s)).toBe(s.v1.sha256);
  }, 60_000);

  test("the old script removing a running pass's lock: another pass may start that version too, but none installs the other's unfinished file", async () => {
    const s = scenario("oldremoves");
    const size = s.v2.bytes.length;
    const gate = gatedDownload(bm, s.name, s.v2.bytes, size - 100, size >> 1);
    const first = startPass(s.host, bm.api);
    try {
      await until(() => gate.downloading(first.pid, s.partial, 0), () => `the first download\n${s.host.log()}`);
      rmSync(s.lock); // what the old script does to a lock it judges in its way; it knows nothing of holder records
      const second = startPass(s.host, bm.api);
      await until(() => gate.downloading(second.pid, s.partial, 1), () => `the second download\n${s.host.log()}`);
      gate.open(0);
      // The first run's partial file is now the second run's, half written: it must not be renamed over the binary.
      const firstRun = await first.done;
      expect(firstRun.code).toBe(1);
      expect(events(s.host, "update_failed").map((e) => e.error)).toContainEqual(expect.stringContaining("is no longer the file this run wrote; not installing it"));
      expect(binary(s)).toBe(s.v1.sha256);
      gate.open(1);
      await second.done;
      expect([s.v1.sha256, s.v2.sha256]).toContain(binary(s));
      expect(JSON.parse(readFileSync(s.host.manifest, "utf8")).binaries[0].version).toBeOneOf([s.v1.sha256, s.v2.sha256]);
    } finally {
      gate.open();
      bm.override("GET", `${API}/download/${s.name}`, null);
    }
  }, 60_000);
});

describe("obsolete work ended, nothing else signalled", () => {
  test("the API moves on mid-download: the old downloader is terminated and its partial removed; a decoy survives", async () => {
    const s = scenario("switch");
    const v3 = artifact(serviceScript({ tag: "switch-v3" }));
    const { gate, pass: first } = await midDownload(s, 4096);
    const bait = decoy(s, { holding: s.lock }); // has the old lock open, and its command line names everything
    try {
      bm.override("GET", `${API}/download/${s.name}`, null);
      bm.setTarget(s.name, v3);
      const second = await startPass(s.host, bm.api).done;
      expectAllClean([second]);
      const ended = await first.done;
      expect(ended.code).toBe(143); // SIGTERM: the default action ends it at once
      expect(processAlive(bait.pid)).toBe(true);
      expect(events(s.host, "obsolete_version_dropped")).toEqual([expect.objectContaining({ version: s.v2.sha256.slice(0, 12), ended_pid: String(first.pid) })]);
      expect(events(s.host, "partial_removed").map((e) => e.version)).toEqual([s.v2.sha256.slice(0, 12)]);
      expect(downloads(s.name)).toHaveLength(2);
      expectDone(s.host, s.name, s.v1, v3);
    } finally {
      gate.open();
    }
  }, 60_000);

  test("an other version's lock that cannot be dropped fails the update, but the holder of the one that was dropped is still ended", async () => {
    const s = scenario("stuck");
    const v3 = artifact(serviceScript({ tag: "stuck-v3" }));
    const { gate, pass: first } = await midDownload(s, 4096);
    // A directory where a third version's lock would be: it cannot be removed, whatever order the directory lists it in.
    const stuck = join(s.host.lockDir, `${s.name}-${"e".repeat(64)}.lock`);
    mkdirSync(stuck);
    try {
      bm.override("GET", `${API}/download/${s.name}`, null);
      bm.setTarget(s.name, v3);
      const second = await startPass(s.host, bm.api).done;
      expect(second.code).toBe(1);
      expect(events(s.host, "update_failed")).toEqual([expect.objectContaining({ phase: "lock", error: expect.stringMatching(/EISDIR/) })]);
      // The v2 pass was ended (SIGTERM), its lock gone; the v3 lock was given up again.
      expect((await first.done).code).toBe(143);
      expect(existsSync(s.lock)).toBe(false);
      expect(existsSync(join(s.host.lockDir, `${s.name}-${v3.sha256}.lock`))).toBe(false);
      rmSync(stuck, { recursive: true });
      expectAllClean([await startPass(s.host, bm.api).done]);
      expectDone(s.host, s.name, s.v1, v3);
    } finally {
      gate.open();
    }
  }, 60_000);

  test("past LOCK_TIMEOUT a holder that still runs is ended before its lock is taken over", async () => {
    const s = scenario("overdue");
    const { gate, pass: first } = await midDownload(s, 4096, { HTTP_TIMEOUT: "120" });
    const taken = Number(readFileSync(s.lock, "utf8"));
    try {
      // Younger than its timeout, the live holder keeps its lock.
      expectAllClean([await startPass(s.host, bm.api, { LOCK_TIMEOUT: "2" }).done]);
      expect(events(s.host, "busy").map((e) => e.holder)).toEqual([`pid ${first.pid}`]);
      await until(() => now() >= taken + 2, () => "the lock to age past LOCK_TIMEOUT", { timeoutMs: 10_000 });
      bm.override("GET", `${API}/download/${s.name}`, null);
      expectAllClean([await startPass(s.host, bm.api, { LOCK_TIMEOUT: "2" }).done]);
      expect((await first.done).code).toBe(143);
      expect(events(s.host, "lock_taken_over").map((e) => e.reason)).toEqual([expect.stringMatching(new RegExp(`^stale: \\d+s old; its holder pid ${first.pid} was ended$`))]);
      expectDone(s.host, s.name, s.v1, s.v2);
    } finally {
      gate.open();
    }
  }, 60_000);

  test("a reused pid, or a live process without the lock open, is never signalled; a young lock recorded for one is taken only when the record proves its holder gone", async () => {
    const s = scenario("reuse");
    const time = now() - 5;
    const lockOf = (tag: string) => join(s.host.lockDir, `${s.name}-${artifact(tag).sha256}.lock`);
    const [otherA, otherB] = [lockOf("older target a"), lockOf("older target b")];
    for (const lock of [otherA, otherB, s.lock]) writeFileSync(lock, `${time}\n`);
    const reused = decoy(s, { holding: otherA }); // has a lock open, but is not the process its record meant
    const bystander = decoy(s); // the very process a record names, but without the lock open
    await until(() => processStart(reused.pid) !== null && processStart(bystander.pid) !== null, () => "the decoys to start");
    const wrongStart = String(Number(startOf(reused.pid)) + 1);
    const plant = (lock: string, pid: number, start: string) =>
      writeFileSync(lock.replace(/([^/]+)$/, ".$1.holder"), `${pid} ${start} ${statSync(lock).ino} ${time}\n`);
    plant(otherA, reused.pid, wrongStart);
    plant(otherB, bystander.pid, startOf(bystander.pid));

    // The target's own young lock recorded for the live bystander: its holder may be alive, so it waits.
    plant(s.lock, bystander.pid, startOf(bystander.pid));
    expectAllClean([await startPass(s.host, bm.api).done]);
    expect(events(s.host, "busy").map((e) => e.holder)).toEqual([`pid ${bystander.pid}`]);
    expect(downloads(s.name)).toEqual([]);

    // Recorded for the reused pid instead: its start time proves the recorded process gone.
    plant(s.lock, reused.pid, wrongStart);
    expectAllClean([await startPass(s.host, bm.api).done]);
    expect(events(s.host, "lock_taken_over").map((e) => e.reason)).toEqual([`holder pid ${reused.pid} no longer exists`]);
    // Both locks of other versions are removed, and neither decoy is signalled.
    expect(events(s.host, "obsolete_version_dropped").map((e) => e.ended_pid)).toEqual([undefined, undefined]);
    expect(processAlive(reused.pid)).toBe(true);
    expect(processAlive(bystander.pid)).toBe(true);
    expectDone(s.host, s.name, s.v1, s.v2);
  }, 60_000);

  test("a lock of another version recorded for the pass itself: the pass never signals itself", async () => {
    const s = scenario("itself");
    const old = artifact("an older target of itself");
    const otherLock = join(s.host.lockDir, `${s.name}-${old.sha256}.lock`);
    const time = now();
    writeFileSync(otherLock, `${time}\n`);
    const otherRecord = join(s.host.lockDir, `.${s.name}-${old.sha256}.lock.holder`);
    // The shell records itself, keeps the lock open on fd 9 and execs bin-proxy: same pid, same start time, lock open.
    const script = `echo "$$ $(cut -d' ' -f22 /proc/$$/stat) $(stat -c %i '${otherLock}') ${time}" > '${otherRecord}' && exec 9<'${otherLock}' && exec "$0"`;
    const p = Bun.spawn(["/bin/sh", "-c", script, BIN_PROXY], { env: s.host.env(bm.api), cwd: "/", stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    expect({ code, stdout, stderr }).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(events(s.host, "obsolete_version_dropped")).toEqual([expect.objectContaining({ version: old.sha256.slice(0, 12) })]);
    expect(events(s.host, "obsolete_version_dropped")[0]!.ended_pid).toBeUndefined();
    expectDone(s.host, s.name, s.v1, s.v2);
  }, 60_000);
});
