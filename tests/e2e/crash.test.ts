// Crash safety: kill -9 at each step of an update in turn, and at random instants, leaves the binary whole and the manifest valid; the next pass cleans up and finishes.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { artifact, startBinManager, type Artifact, type BinManager } from "../fixture/bin-manager.ts";
import { makeHost, runBinProxy, serviceScript, type Host } from "../fixture/host.ts";
import { processAlive, startSupervisor, type Supervisor } from "../fixture/supervisor.ts";
import {
  events, expectDone, expectWhole, gatedDownload, hasOpen, type Gate, holdFileLock, holdLockDir, holdManifestLock, killPass, MANIFEST_LOCK, now,
  startPass, until, type Run,
} from "./invariants.ts";

const API = "/api/v1";
/** Iterations of the random kill loop: BIN_PROXY_KILL_LOOPS, else 100 in CI, 20 on a workstation. */
const LOOPS = Number(process.env.BIN_PROXY_KILL_LOOPS ?? (process.env.CI === "true" ? 100 : 20));
const SIZE = 256 * 1024;
/** The disk writer's block: the step world's v2 spans two of them and a tail, so a kill can land with blocks on disk and one in flight. */
const BLOCK = 4 << 20;

let bm: BinManager;
let sup: Supervisor;
let supDir: string;

/** A supervised binary on its own host: v1 installed and recorded, the API naming v2. */
interface World {
  host: Host;
  name: string;
  path: string;
  v1: Artifact;
  v2: Artifact;
  lock: string;
  partial: string;
  backups: string;
  /** Environment on top of the host's: its supervisorctl. */
  extra: Record<string, string>;
}

function world(name: string, size: number): World {
  const host = makeHost();
  const v1 = artifact(serviceScript({ tag: `${name}-v1` }));
  // Large enough that downloading, hashing and fsyncing it take a while to kill in.
  const v2 = artifact(serviceScript({ tag: `${name}-v2 ${"x".repeat(size)}` }));
  return {
    host,
    name,
    path: host.writeBinary(name, v1.bytes),
    v1,
    v2,
    lock: join(host.lockDir, `${name}-${v2.sha256}.lock`),
    partial: join(host.binDir, `.${name}.${v2.sha256}.part`),
    backups: join(host.stateDir, "backups", name),
    extra: {},
  };
}

const step = world("crashstep", 2 * BLOCK + SIZE);
const loop = world("crashloop", SIZE);

beforeAll(async () => {
  bm = await startBinManager();
  supDir = mkdtempSync(join(tmpdir(), "bin-proxy-crash-supervisor-"));
  // crashstep takes a second to start, so a restart is long enough to be killed in; crashloop starts at once.
  sup = await startSupervisor(supDir, [
    { name: step.name, command: step.path, startsecs: 1 },
    { name: loop.name, command: loop.path, startsecs: 0 },
  ]);
  for (const w of [step, loop]) {
    w.extra = { SUPERVISORCTL: sup.ctl };
    // One pass on v1 records the node info, so later passes write the manifest only to record an update.
    w.host.writeManifest([{ serviceName: w.name, binaryName: w.name, version: w.v1.sha256, previousVersion: "", port: 0 }]);
    bm.setTarget(w.name, w.v1);
    expect(await runBinProxy([], w.host.env(bm.api, w.extra))).toEqual({ code: 0, stdout: "", stderr: "" });
  }
}, 60_000);

afterAll(async () => {
  await sup?.stop();
  await bm?.stop();
  for (const w of [step, loop]) w.host.cleanup();
  if (supDir) rmSync(supDir, { recursive: true, force: true });
}, 60_000);

/** supervisorctl processes of this file's supervisord: a killed pass leaves its restart running. */
function supervisorctlsRunning(): boolean {
  return readdirSync("/proc").some((entry) => {
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, "utf8");
      return /^\d+$/.test(entry) && cmd.includes("supervisorctl") && cmd.includes(sup.conf) && processAlive(Number(entry));
    } catch {
      return false;
    }
  });
}

/** Back to v1 on disk and in the manifest, with an empty state, lock directory and log; the service settled. */
async function reset(w: World): Promise<number> {
  await until(() => !supervisorctlsRunning(), () => "the killed pass's supervisorctl to finish");
  await sup.waitFor(w.name, ["RUNNING"]);
  const staged = join(w.host.root, "v1.staged");
  writeFileSync(staged, w.v1.bytes, { mode: 0o755 });
  renameSync(staged, w.path);
  const nodeInfo = w.host.readManifest().nodeInfo;
  w.host.writeManifest([{ serviceName: w.name, binaryName: w.name, version: w.v1.sha256, previousVersion: "", port: 0 }], { nodeInfo });
  for (const dir of [w.host.stateDir, w.host.lockDir]) for (const f of readdirSync(dir)) rmSync(join(dir, f), { recursive: true, force: true });
  rmSync(w.host.logFile, { force: true });
  bm.setTarget(w.name, w.v2);
  bm.clearRequests();
  return sup.pid(w.name);
}

const downloads = (w: World) => bm.requests.filter((r) => r.path === `${API}/download/${w.name}` || r.path === `${API}/releases/latest/${w.name}/download`).length;
const shortOf = (a: Artifact) => a.sha256.slice(0, 12);

/** After the kill: a pass that completes, leaving v2 installed and recorded, nothing behind, the service running. */
async function completes(w: World): Promise<void> {
  await until(() => !supervisorctlsRunning(), () => "the killed pass's supervisorctl to finish");
  await sup.waitFor(w.name, ["RUNNING", "FATAL", "EXITED", "STOPPED"]);
  const run = await runBinProxy([], w.host.env(bm.api, w.extra));
  expect({ ...run, log: run.code === 0 ? "" : w.host.log() }).toEqual({ code: 0, stdout: "", stderr: "", log: "" });
  expect(events(w.host, "busy")).toEqual([]);
  expectDone(w.host, w.name, w.v1, w.v2);
  expect(await sup.status(w.name)).toBe("RUNNING");
  // One download, or two when the first never reached the swap: never more.
  expect(downloads(w)).toBeLessThanOrEqual(2);
}

type Pass = ReturnType<typeof startPass>;

interface KillCase {
  name: string;
  /** Gates set before the pass starts; `defer` registers what undoes them after the kill. */
  arrange?(w: World, defer: (undo: () => void) => void): void;
  /** Resolves when the pass is at the step to kill it at. */
  at(w: World, pass: Pass, defer: (undo: () => void) => void, servicePid: number): Promise<void>;
  /** What the kill must have left, beyond the invariants. */
  left(w: World, found: { onDisk: string; recorded: string }, pass: Pass): void;
}

const stallProgress = (w: World, defer: (undo: () => void) => void) => {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  bm.override("POST", `${API}/bins/${w.name}/progress`, async () => {
    await gate;
    return Response.json({ code: 0, message: "ok", data: null });
  });
  defer(() => {
    open();
    bm.override("POST", `${API}/bins/${w.name}/progress`, null);
  });
};

const gates = new WeakMap<World, Gate>();
const gateDownload = (w: World, at: number, defer: (undo: () => void) => void) => {
  const gate = gatedDownload(bm, w.name, w.v2.bytes, at);
  gates.set(w, gate);
  defer(() => {
    gate.open();
    bm.override("GET", `${API}/download/${w.name}`, null);
  });
};

const manifestTemp = (w: World) => readdirSync(join(w.host.root, "etc")).some((f) => f.startsWith(".bin-manifests.json.") && f.endsWith(".tmp"));
const journalDir = (w: World) => join(w.host.stateDir, "journal");
const journalFiles = (w: World) => (existsSync(journalDir(w)) ? readdirSync(journalDir(w)) : []);
const attemptPath = (w: World) => join(journalDir(w), `${w.name}.attempt.json`);
const recorded = (w: World) => (JSON.parse(readFileSync(w.host.manifest, "utf8")) as { binaries: { version: string }[] }).binaries[0]!.version;

const cases: KillCase[] = [
  {
    name: "waiting for the lock directory, before its lock",
    arrange: (w, defer) => defer(holdLockDir(w.host)),
    at: (w, pass) => until(() => hasOpen(pass.pid, w.host.lockDir), () => "the pass at its lock"),
    left(w, found) {
      expect(found).toEqual({ onDisk: w.v1.sha256, recorded: w.v1.sha256 });
      expect(existsSync(w.lock)).toBe(false);
    },
  },
  {
    name: "lock taken, download not started",
    arrange: stallProgress,
    at: (w) => until(() => existsSync(w.lock) && bm.count("POST", `${API}/bins/${w.name}/progress`) > 0, () => "the lock and the first progress report"),
    left(w, found, pass) {
      expect(found).toEqual({ onDisk: w.v1.sha256, recorded: w.v1.sha256 });
      expect(readFileSync(w.lock, "utf8")).toMatch(/^\d+\n$/);
      expect(readFileSync(w.lock.replace(/([^/]+)$/, ".$1.holder"), "utf8").split(" ")[0]).toBe(String(pass.pid));
      expect(existsSync(w.partial)).toBe(false);
    },
  },
  {
    name: "the partial file just created",
    arrange: (w, defer) => gateDownload(w, 64 * 1024, defer),
    at: (w) => until(() => existsSync(w.partial), () => "the partial file", { fast: true }),
    left(w, found) {
      expect(found).toEqual({ onDisk: w.v1.sha256, recorded: w.v1.sha256 });
      expect(statSync(w.partial).size).toBeLessThanOrEqual(64 * 1024);
    },
  },
  {
    name: "two blocks downloaded: the first on disk (O_DIRECT), the second being written",
    arrange: (w, defer) => gateDownload(w, 2 * BLOCK + 1, defer),
    at: (w, pass) =>
      until(
        () => gates.get(w)!.downloading(pass.pid, w.partial) && (statSync(w.partial, { throwIfNoEntry: false })?.size ?? 0) >= BLOCK,
        () => "the first block on disk",
      ),
    left(w, found) {
      expect(found).toEqual({ onDisk: w.v1.sha256, recorded: w.v1.sha256 });
      expect(statSync(w.partial).size).toBeLessThanOrEqual(2 * BLOCK);
    },
  },
  {
    name: "while the journal record is written (its temp file there, as near as polling gets)",
    at: (w) => until(() => journalFiles(w).length > 0, () => "the journal record's temp file", { fast: true }),
    left(w, found) {
      expect(found.recorded).toBe(w.v1.sha256);
      // Only the attempt's record (or its temp file): no report is written before the commit.
      for (const file of journalFiles(w)) expect(file).toMatch(new RegExp(`^(${w.name}\\.attempt\\.json|\\.${w.name}\\.attempt\\.json\\.\\d+\\.tmp)$`));
    },
  },
  {
    name: "journaled, before the backup (as near as polling gets)",
    at: (w) => until(() => existsSync(attemptPath(w)), () => "the journal record", { fast: true }),
    left(w, found) {
      expect(found.recorded).toBe(w.v1.sha256);
      expect(JSON.parse(readFileSync(attemptPath(w), "utf8"))).toMatchObject({ target: w.v2.sha256, replaced: w.v1.sha256, source: "download", deaths: 0 });
    },
  },
  {
    name: "while the backup is written (its temp file there, as near as polling gets)",
    at: (w) => until(() => existsSync(w.backups) && readdirSync(w.backups).length > 0, () => "the backup's temp file", { fast: true }),
    left(w, found) {
      expect(found.recorded).toBe(w.v1.sha256);
    },
  },
  {
    name: "backed up, before the rename over the binary (as near as polling gets)",
    at: (w) => until(() => existsSync(join(w.backups, w.v1.sha256)), () => "the backup", { fast: true }),
    left(w, found) {
      expect(found.recorded).toBe(w.v1.sha256);
      expect(readFileSync(join(w.backups, w.v1.sha256))).toEqual(Buffer.from(w.v1.bytes));
    },
  },
  {
    name: "just swapped in",
    at: (w) => {
      const before = statSync(w.path).ino;
      return until(() => statSync(w.path, { throwIfNoEntry: false })?.ino !== before, () => "the swap", { fast: true });
    },
    left(w, found) {
      expect(found.recorded).toBe(w.v1.sha256);
      expect(readFileSync(join(w.backups, w.v1.sha256))).toEqual(Buffer.from(w.v1.bytes));
    },
  },
  {
    name: "while supervisor restarts the service",
    at: (_w, _pass, _defer, servicePid) => until(() => !processAlive(servicePid), () => "the restart"),
    left(w, found) {
      expect(found).toEqual({ onDisk: w.v2.sha256, recorded: w.v1.sha256 });
    },
  },
  {
    name: "restarted, waiting to record the update in the manifest",
    arrange: (w, defer) => defer(holdManifestLock(w.host)),
    at: (w, pass) => until(() => hasOpen(pass.pid, join(w.host.lockDir, MANIFEST_LOCK)), () => "the pass at the manifest's lock"),
    left(w, found) {
      expect(found).toEqual({ onDisk: w.v2.sha256, recorded: w.v1.sha256 });
    },
  },
  {
    name: "writing the manifest (its temp file there, as near as polling gets)",
    async at(w, pass, defer) {
      // Held from the start (the pass writes the manifest only after its restart), lifted once the pass waits for it.
      const release = holdManifestLock(w.host);
      defer(release);
      await until(() => hasOpen(pass.pid, join(w.host.lockDir, MANIFEST_LOCK)), () => "the pass at the manifest's lock");
      release();
      await until(() => manifestTemp(w) || recorded(w) === w.v2.sha256, () => "the manifest's temp file", { fast: true });
    },
    left(w, found) {
      expect(found.onDisk).toBe(w.v2.sha256);
    },
  },
  {
    name: "recorded, before its lock is released",
    async at(w, pass, defer) {
      await until(() => existsSync(w.lock) && !hasOpen(pass.pid, w.host.lockDir), () => "the lock taken");
      defer(await grabLockDir(w));
      await until(() => recorded(w) === w.v2.sha256, () => "the update recorded");
    },
    left(w, found) {
      expect(found).toEqual({ onDisk: w.v2.sha256, recorded: w.v2.sha256 });
      expect(existsSync(w.lock)).toBe(true);
    },
  },
  {
    name: "done, in the end-of-pass cleanup",
    at: (w) => until(() => events(w.host, "updated").length > 0, () => "the update logged", { fast: true }),
    left(w, found) {
      expect(found).toEqual({ onDisk: w.v2.sha256, recorded: w.v2.sha256 });
    },
  },
];

/** Takes the lock directory's flock as soon as no pass holds it. */
async function grabLockDir(w: World): Promise<() => void> {
  for (;;) {
    try {
      return holdLockDir(w.host);
    } catch {
      await Bun.sleep(2);
    }
  }
}

describe("kill -9 at each step of an update in turn, then a pass that completes", () => {
  for (const c of cases) {
    test(c.name, async () => {
      const servicePid = await reset(step);
      const undo: (() => void)[] = [];
      const defer = (fn: () => void) => void undo.push(fn);
      let pass!: Pass;
      let killed!: Run;
      try {
        c.arrange?.(step, defer);
        pass = startPass(step.host, bm.api, step.extra);
        await Promise.race([
          c.at(step, pass, defer, servicePid),
          pass.done.then((r) => Promise.reject(new Error(`the pass ended (exit ${r.code}) before the kill point\n${step.host.log()}${r.stderr}`))),
        ]);
        killed = await killPass(pass);
      } finally {
        if (pass) await killPass(pass); // a no-op once it is dead
        for (const fn of undo.reverse()) fn();
      }
      expect(killed.code).toBe(137);
      const found = expectWhole(step.host, step.name, [step.v1, step.v2]);
      c.left(step, found, pass);
      await completes(step);
      if (c.name === "lock taken, download not started") {
        // A lock whose holder provably died is taken over at once, not after LOCK_TIMEOUT.
        expect(events(step.host, "lock_taken_over").map((e) => e.reason)).toEqual([`holder pid ${pass.pid} no longer exists`]);
      }
      if (found.recorded === step.v1.sha256) {
        expect(events(step.host, "updated").map((e) => [e.from, e.to])).toEqual([[shortOf(step.v1), shortOf(step.v2)]]);
      }
    }, 60_000);
  }
});

describe("kill -9 at random instants", () => {
  test(`${LOOPS} times: the binary whole, the manifest valid, and the next pass finishes leaving nothing behind`, async () => {
    bm.throttle(384 * 1024); // the download is a fair share of the pass
    try {
      // How long an undisturbed pass takes here, so kill instants spread over all of it.
      await reset(loop);
      const started = Date.now();
      expect(await runBinProxy([], loop.host.env(bm.api, loop.extra))).toEqual({ code: 0, stdout: "", stderr: "" });
      const passMs = Date.now() - started;
      expectDone(loop.host, loop.name, loop.v1, loop.v2);

      const landed = new Map<string, number>();
      for (let i = 0; i < LOOPS; i++) {
        await reset(loop);
        const delayMs = Math.floor(Math.random() * passMs * 1.1);
        try {
          const pass = startPass(loop.host, bm.api, loop.extra);
          await Promise.race([Bun.sleep(delayMs), pass.done]);
          await killPass(pass);
          const found = expectWhole(loop.host, loop.name, [loop.v1, loop.v2]);
          const where = [
            found.onDisk === loop.v2.sha256 ? "new binary" : "old binary",
            found.recorded === loop.v2.sha256 ? "recorded" : "not recorded",
            existsSync(loop.partial) ? "partial left" : "",
            readdirSync(loop.host.lockDir).some((f) => f.endsWith(".lock") && f !== MANIFEST_LOCK) ? "lock left" : "",
          ].filter(Boolean).join(", ");
          landed.set(where, (landed.get(where) ?? 0) + 1);
          await completes(loop);
        } catch (err) {
          throw new Error(`iteration ${i + 1}, killed ${delayMs} ms after start (an undisturbed pass took ${passMs} ms): ${(err as Error).message}\n--- log ---\n${loop.host.log()}`);
        }
      }
      console.log(`kill loop: ${LOOPS} kills over ${passMs} ms passes landed at: ${[...landed].map(([k, n]) => `${n}× ${k}`).join("; ")}`);
    } finally {
      bm.throttle(null);
    }
  }, Math.max(120_000, LOOPS * 15_000));
});

describe("leftovers", () => {
  test("what killed runs leave is swept by the next pass; what live processes or the old script own is kept", async () => {
    const host = makeHost();
    try {
      const v1 = artifact(serviceScript({ tag: "leftover-v1" }));
      const other = artifact("a version killed after it was recorded");
      host.writeBinary("app", v1.bytes);
      host.writeManifest([{ serviceName: "", binaryName: "app", version: v1.sha256, previousVersion: "", port: 0 }]);
      bm.setTarget("app", v1);
      const gone = Bun.spawn(["true"]);
      await gone.exited;
      const dead = gone.pid;
      const live = Bun.spawn(["sleep", "100000"], { stdin: "ignore", stdout: "ignore", stderr: "ignore" });
      try {
        const backups = join(host.stateDir, "backups", "app");
        mkdirSync(backups, { recursive: true });
        const lockOf = (tag: string) => `app-${artifact(tag).sha256}.lock`;
        const [deadLock, oldScriptLock, heldLock, recordOnly] = [lockOf("dead"), lockOf("old script"), lockOf("held"), lockOf("record only")];
        const plant = (dir: string, file: string, content = "") => writeFileSync(join(dir, file), content);
        const time = now() - 5;
        for (const lock of [deadLock, oldScriptLock, heldLock]) plant(host.lockDir, lock, `${time}\n`);
        for (const lock of [deadLock, heldLock]) plant(host.lockDir, `.${lock}.holder`, `${dead} 1 ${statSync(join(host.lockDir, lock)).ino} ${time}\n`);
        plant(host.lockDir, `.${recordOnly}.holder`, `${dead} 1 12345 ${time}\n`);
        const swept = [
          ["etc", `.bin-manifests.json.${dead}.tmp`],
          ["bin", `.app.${dead}.tmp`],
          ["state", `.hash-cache.json.${dead}.tmp`],
          [`state/backups/app`, `.${other.sha256}.${dead}.tmp`],
          ["lock", `.${deadLock}.${dead}.tmp`],
          ["lock", `..${deadLock}.holder.${live.pid}.tmp`], // only ever there while its writer holds the lock directory
          ["lock", deadLock],
          ["lock", `.${deadLock}.holder`],
          ["lock", `.${recordOnly}.holder`],
        ];
        const kept = [
          ["etc", `.bin-manifests.json.${live.pid}.tmp`],
          ["bin", `.app.${live.pid}.tmp`],
          ["bin", `.other.${dead}.tmp`], // not a managed binary's: BIN_DIR is shared with other software
          [`state/backups/app`, `.${other.sha256}.${live.pid}.tmp`],
          ["lock", oldScriptLock],
          ["lock", heldLock],
          ["lock", `.${heldLock}.holder`],
        ];
        for (const [dir, file] of [...swept, ...kept]) if (!existsSync(join(host.root, dir!, file!))) plant(join(host.root, dir!), file!);
        const release = holdFileLock(join(host.lockDir, heldLock));
        try {
          expect(await runBinProxy([], host.env(bm.api))).toEqual({ code: 0, stdout: "", stderr: "" });
        } finally {
          release();
        }
        for (const [dir, file] of swept) expect(`${dir}/${file} ${existsSync(join(host.root, dir!, file!)) ? "left" : "removed"}`).toBe(`${dir}/${file} removed`);
        for (const [dir, file] of kept) expect(`${dir}/${file} ${existsSync(join(host.root, dir!, file!)) ? "kept" : "removed"}`).toBe(`${dir}/${file} kept`);
        expect(events(host, "leftovers_removed")).toHaveLength(1);
        expect(readFileSync(join(host.binDir, "app"))).toEqual(Buffer.from(v1.bytes));
      } finally {
        live.kill("SIGKILL");
      }
    } finally {
      host.cleanup();
    }
  });
});
