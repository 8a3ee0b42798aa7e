// End-to-end tests of update transactions (SPEC §12), with the compiled executable, the fake bin-manager and real supervisords:
// rollback keeps the holds it did not decide, a service manager that does not answer fails the host (not the release), a pass that
// dies after its swap is resumed and counted (status shows it) until the second death rolls back and holds, and every installed version
// reaches the API.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { artifact, startBinManager, stallHeaders, status, type Artifact, type BinManager } from "../fixture/bin-manager.ts";
import { BIN_PROXY, hostPool, runBinProxy, serviceScript, spawnBinProxy, type Host } from "../fixture/host.ts";
import { processAlive, startSupervisor, type Program, type Supervisor } from "../fixture/supervisor.ts";
import { events, expectDone, expectWhole, killPass, MANIFEST_LOCK, startPass, until, type Run, type Started } from "./invariants.ts";

const API = "/api/v1";
const short = (a: Artifact) => a.sha256.slice(0, 12);

let bm: BinManager;
/** The supervisord most tests share; the "supervisord stopped" tests have their own, which they stop and start. */
let sup: Supervisor;
let ownSup: Supervisor | null = null;
const supDirs: string[] = [];
const hosts = hostPool();

/** One binary on its own host: v1 installed and recorded, supervised as a program of the same name unless service is false. */
interface Site {
  host: Host;
  name: string;
  path: string;
  v1: Artifact;
}

function site(name: string, opts: { service?: boolean } = {}): Site {
  const host = hosts.make();
  const v1 = artifact(serviceScript({ tag: `${name}-v1` }));
  const path = host.writeBinary(name, v1.bytes);
  host.writeManifest([{ serviceName: opts.service === false ? "" : name, binaryName: name, version: v1.sha256, previousVersion: "", port: 0 }]);
  return { host, name, path, v1 };
}

const rb = site("rb");
const down = site("down");
const hidden = site("hidden");
const quiet = site("quiet");
const looped = site("looped");
const killer = site("killer");
const reported = site("reported", { service: false });
const cut = site("cut", { service: false });
/** Its serviceName names a program the shared supervisord does not have. */
const stray = site("stray");
const trace = site("trace", { service: false });
const lost = site("lost");
/** Nothing installed yet: its program cannot start (FATAL) until a first install. */
const fresh: Site = (() => {
  const host = hosts.make();
  host.writeManifest([{ serviceName: "fresh", binaryName: "fresh", version: "", previousVersion: "", port: 0 }]);
  return { host, name: "fresh", path: join(host.binDir, "fresh"), v1: artifact("") };
})();

/** A version that reads the pass's pid from its lock's holder record and ends it with kill -9 when it starts, as a build that takes the host down would. */
const passKiller = (s: Site, tag: string): Artifact =>
  artifact(
    [
      "#!/bin/sh",
      `# test service ${tag}: ends the pass that restarts it`,
      `for holder in '${s.host.lockDir}'/.${s.name}-*.lock.holder; do`,
      '  [ -f "$holder" ] && read -r pid _rest < "$holder" && kill -9 "$pid"',
      "done",
      "exec sleep 100001",
      "",
    ].join("\n"),
  );

/** The program of a site; startsecs=2 makes `supervisorctl restart` block long enough to kill the pass in it. */
const program = (s: Site, startsecs = 1): Program => ({ name: s.name, command: s.path, startsecs });

async function supervisor(programs: Program[]): Promise<Supervisor> {
  const dir = mkdtempSync(join(tmpdir(), "bin-proxy-journal-supervisor-"));
  supDirs.push(dir);
  return startSupervisor(dir, programs);
}

beforeAll(async () => {
  bm = await startBinManager();
  sup = await supervisor([program(rb), program(hidden), program(quiet), program(looped, 2), program(killer), program(fresh), program(lost)]);
  // One pass on v1 records the node info, so later passes write the manifest only to record an update.
  for (const s of [rb, down, hidden, quiet, looped, killer, reported, cut, stray, trace, lost]) {
    bm.setTarget(s.name, s.v1);
    expect(await runBinProxy([], s.host.env(bm.api))).toEqual({ code: 0, stdout: "", stderr: "" });
  }
}, 60_000);

afterAll(async () => {
  await ownSup?.stop();
  await sup?.stop();
  await bm?.stop();
  hosts.cleanup();
  for (const dir of supDirs) rmSync(dir, { recursive: true, force: true });
}, 60_000);

const pass = (s: Site, extra: Record<string, string> = {}, args: string[] = []) => runBinProxy(args, s.host.env(bm.api, { SUPERVISORCTL: sup.ctl, ...extra }));
const downloads = (s: Site) => bm.count("GET", `${API}/download/${s.name}`) + bm.count("GET", `${API}/releases/latest/${s.name}/download`);
/** The POST /bins/{name} requests (reports of an installed version) since the last clearRequests. */
const reports = (s: Site) => bm.requests.filter((r) => r.method === "POST" && r.path === `${API}/bins/${s.name}`).map((r) => r.body);
const reportOf = (s: Site, a: Artifact, version = short(a)) => ({ nodeName: "test-node", binName: s.name, sha256: a.sha256, version });
const progressStates = (s: Site) => bm.requests.filter((r) => r.path === `${API}/bins/${s.name}/progress`).map((r) => (r.body as { status: string }).status);
const entryOf = (s: Site) => s.host.readManifest().binaries[0]!;
const journalDir = (s: Site) => join(s.host.stateDir, "journal");
const attemptRecord = (s: Site) => JSON.parse(readFileSync(join(journalDir(s), `${s.name}.attempt.json`), "utf8")) as Record<string, unknown>;
const context = (s: Site, r: { code: number; stderr: string }) => `exit ${r.code}\nstderr:\n${r.stderr}\nlog:\n${s.host.log()}`;

/** What the host holds now, to compare after a failed pass: nothing may be added but the log. */
const filesNow = (s: Site) => [...new Set([...s.host.listFiles(), "log/bin-proxy.log"])].sort();

/** A failed update's host: the binary byte-identical, the manifest valid and naming it, no hold, no journal, no file added but the log. */
function expectIntact(s: Site, current: Artifact, files: string[]): void {
  expect(readFileSync(s.path)).toEqual(Buffer.from(current.bytes));
  expect(expectWhole(s.host, s.name, [current])).toEqual({ onDisk: current.sha256, recorded: current.sha256 });
  expect(entryOf(s).hold).toBeUndefined();
  expect(existsSync(journalDir(s))).toBe(false);
  expect(s.host.listFiles()).toEqual(files);
}

/** A pass failed by the host's service manager: exit 1, the cause and its fix named, nothing downloaded or swapped, not held. */
function expectHostFailure(s: Site, r: { code: number; stdout: string; stderr: string }, fix: RegExp, files: string[]): void {
  expect(r.code, context(s, r)).toBe(1);
  expect(r.stdout).toBe("");
  const failed = events(s.host, "update_failed");
  expect(failed.map((e) => e.phase)).toEqual(["service"]);
  expect(failed[0]!.error).toMatch(fix);
  expect(r.stderr).toContain("event=update_failed");
  expect(events(s.host, "not_held")).toHaveLength(1);
  expect(events(s.host, "holding")).toEqual([]);
  expect(downloads(s)).toBe(0);
  expect(reports(s)).toEqual([]);
  expectIntact(s, s.v1, files);
}

/** True once no live process is left in process group pgid (a killed pass's supervisorctl included). */
function groupGone(pgid: number): boolean {
  return readdirSync("/proc").every((entry) => {
    if (!/^\d+$/.test(entry)) return true;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const [, , pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return Number(pgrp) !== pgid || !processAlive(Number(entry));
    } catch {
      return true; // gone while we looked
    }
  });
}

/** A started bin-proxy command, to be waited for or killed like a pass. */
function started(proc: ReturnType<typeof spawnBinProxy>): Started {
  const done = Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]).then(([stdout, stderr, code]) => ({ pid: proc.pid, code, stdout, stderr }));
  return { pid: proc.pid, done, proc };
}

/** Waits until cond holds while the pass still runs; fails when the pass ended first. */
async function whileRunning(p: Started, cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  let ended: Run | null = null;
  void p.done.then((r) => (ended = r));
  const deadline = Date.now() + 30_000;
  while (ended === null && !(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
  if (ended) throw new Error(`the pass ended (exit ${(ended as Run).code}) before ${what}:\n${(ended as Run).stderr}`);
}

/** SIGKILL of the pass's whole process group: the pass and the supervisorctl it waits for, as a reboot or an OOM kill of the session would. */
async function killGroup(p: Started): Promise<Run> {
  process.kill(-p.pid, "SIGKILL");
  const run = await p.done;
  await until(() => groupGone(p.pid), () => `process group ${p.pid} to be gone`);
  return run;
}

describe("rollback keeps the holds it did not decide", () => {
  const v2 = artifact(serviceScript({ tag: "rb-v2" }));
  const v3 = artifact(serviceScript({ exitCode: 1, tag: "rb-v3-broken" }));

  test("v1 -> v2 installed; a broken v3 fails, rolled back, held; nothing reported for it, its progress says failed", async () => {
    bm.setTarget(rb.name, v2);
    expect(await pass(rb)).toEqual({ code: 0, stdout: "", stderr: "" });
    expectDone(rb.host, rb.name, rb.v1, v2);

    bm.setTarget(rb.name, v3);
    bm.clearRequests();
    const pidBefore = await sup.pid(rb.name);
    const r = await pass(rb);
    expect(r.code, context(rb, r)).toBe(1);
    expect(events(rb.host, "update_failed").map((e) => e.phase)).toEqual(["restart"]);
    expect(readFileSync(rb.path)).toEqual(Buffer.from(v2.bytes));
    expect(await sup.status(rb.name)).toBe("RUNNING");
    expect(await sup.pid(rb.name)).not.toBe(pidBefore); // v2 restarted after the failed v3
    expect(entryOf(rb)).toMatchObject({ version: v2.sha256, previousVersion: rb.v1.sha256, hold: { version: v3.sha256, failures: 1 } });
    // The version the API last acknowledged (v2) runs again: nothing to report, and the attempt's progress says it failed.
    expect(reports(rb)).toEqual([]);
    expect(progressStates(rb).at(-1)).toBe("failed");
    expect(existsSync(journalDir(rb))).toBe(false);
  }, 60_000);

  test("rollback app: v1 installed and reported; v2 held by the rollback, v3's failure hold kept in otherHolds with its count", async () => {
    bm.clearRequests();
    const r = await pass(rb, {}, ["rollback", rb.name]);
    expect(r.code, context(rb, r)).toBe(0);
    expect(r.stdout).toStartWith(`${rb.name}: rolled back to ${short(rb.v1)};`);
    expect(readFileSync(rb.path)).toEqual(Buffer.from(rb.v1.bytes));
    expect(await sup.status(rb.name)).toBe("RUNNING");
    const entry = entryOf(rb);
    expect(entry).toMatchObject({ version: rb.v1.sha256, previousVersion: v2.sha256, hold: { version: v2.sha256, failures: 0, until: null } });
    expect(entry.otherHolds).toEqual([{ version: v3.sha256, failures: 1, until: expect.any(String) }]);
    expect(reports(rb)).toEqual([reportOf(rb, rb.v1)]);
    expect(rb.host.listFiles()).toEqual(
      [`bin/${rb.name}`, "etc/bin-manifests.json", "etc/config", `lock/${MANIFEST_LOCK}`, "log/bin-proxy.log", `state/backups/${rb.name}/${v2.sha256}`, "state/hash-cache.json"].sort(),
    );
  }, 60_000);

  test("the next pass, the API still naming v3: held, v3 not downloaded, the service left on v1", async () => {
    bm.clearRequests();
    const pidBefore = await sup.pid(rb.name);
    const manifestBefore = readFileSync(rb.host.manifest, "utf8");
    expect(await pass(rb)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(downloads(rb)).toBe(0);
    expect(bm.requests.filter((q) => q.method === "POST")).toEqual([]);
    expect(events(rb.host, "held").at(-1)).toMatchObject({ target: short(v3), failures: "1" });
    expect(readFileSync(rb.path)).toEqual(Buffer.from(rb.v1.bytes));
    expect(await sup.pid(rb.name)).toBe(pidBefore);
    expect(readFileSync(rb.host.manifest, "utf8")).toBe(manifestBefore);
  }, 60_000);

  test("retry app clears both holds", async () => {
    const r = await pass(rb, {}, ["retry", rb.name]);
    expect(r.code, context(rb, r)).toBe(0);
    expect(r.stdout).toBe(`${rb.name}: hold on ${short(v2)}, ${short(v3)} cleared; the next pass tries the API's target again\n`);
    const entry = entryOf(rb);
    expect(entry.hold).toBeUndefined();
    expect(entry.otherHolds).toBeUndefined();
    expect(events(rb.host, "hold_cleared").map((e) => e.version)).toEqual([short(v2), short(v3)]);
  }, 60_000);

  test("a rollback killed in its restart is finished by the next pass: reverted, reported, the version it left held", async () => {
    // rb runs v1, with v2 kept as its previous version; the API names v1, which the finished rollback must hold.
    bm.setTarget(rb.name, rb.v1);
    bm.clearRequests();
    const servicePid = await sup.pid(rb.name);
    const p = started(spawnBinProxy(["rollback", rb.name], rb.host.env(bm.api, { SUPERVISORCTL: sup.ctl })));
    await whileRunning(p, async () => !processAlive(servicePid) && (await sup.status(rb.name)) === "STARTING", "the rollback's restart");
    expect((await killGroup(p)).code).toBe(137);
    expect(expectWhole(rb.host, rb.name, [rb.v1, v2])).toEqual({ onDisk: v2.sha256, recorded: rb.v1.sha256 });
    expect(attemptRecord(rb)).toMatchObject({ target: v2.sha256, replaced: rb.v1.sha256, source: "backup", deaths: 0 });

    await sup.waitFor(rb.name, ["RUNNING"]);
    const r = await pass(rb);
    expect(r, context(rb, r)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(events(rb.host, "reverted").map((e) => [e.from, e.to, e.held])).toEqual([[short(v2), short(rb.v1), short(v2)], [short(rb.v1), short(v2), short(rb.v1)]]);
    expect(entryOf(rb)).toMatchObject({ version: v2.sha256, previousVersion: rb.v1.sha256, hold: { version: rb.v1.sha256, failures: 0, until: null } });
    expect(existsSync(journalDir(rb))).toBe(false);
    expect(reports(rb)).toEqual([reportOf(rb, v2)]);
    expect(await sup.status(rb.name)).toBe("RUNNING");

    bm.clearRequests();
    expect(await pass(rb)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(downloads(rb)).toBe(0);
    expect(readFileSync(rb.path)).toEqual(Buffer.from(v2.bytes));
  }, 60_000);
});

describe("a service manager that does not answer fails the host's update, not the release's: nothing swapped, not held", () => {
  test("supervisord stopped: exit 1 naming the fix; once it runs again the next pass updates", async () => {
    ownSup = await supervisor([program(down)]);
    const ctl = { SUPERVISORCTL: ownSup.ctl };
    const v2 = artifact(serviceScript({ tag: "down-v2" }));
    bm.setTarget(down.name, v2);
    await ownSup.stop();
    bm.clearRequests();
    const files = filesNow(down);
    const r = await pass(down, ctl);
    expectHostFailure(down, r, /^supervisord does not answer: start it \(or point SUPERVISORCTL at the right supervisorctl/, files);

    ownSup = await supervisor([program(down)]);
    const again = await pass(down, { SUPERVISORCTL: ownSup.ctl });
    expect(again, context(down, again)).toEqual({ code: 0, stdout: "", stderr: "" });
    expectDone(down.host, down.name, down.v1, v2);
    expect(await ownSup.status(down.name)).toBe("RUNNING");
    expect(reports(down)).toEqual([reportOf(down, v2)]);
  }, 60_000);

  test("supervisord stopped while a killed attempt waits to be resumed: not counted as a death; once it is back the attempt is finished", async () => {
    // down is at v2 from the test above, under its own supervisord.
    const v2 = artifact(serviceScript({ tag: "down-v2" }));
    const v3 = artifact(serviceScript({ tag: "down-v3" }));
    bm.setTarget(down.name, v3);
    bm.clearRequests();
    const servicePid = await ownSup!.pid(down.name);
    const p = startPass(down.host, bm.api, { SUPERVISORCTL: ownSup!.ctl });
    await whileRunning(p, async () => !processAlive(servicePid) && (await ownSup!.status(down.name)) === "STARTING", "the restart");
    expect((await killGroup(p)).code).toBe(137);
    expect(attemptRecord(down)).toMatchObject({ target: v3.sha256, deaths: 0 });

    // The host reboots, say, and the first pass runs before supervisord is up.
    await ownSup!.stop();
    const r = await pass(down, { SUPERVISORCTL: ownSup!.ctl });
    expect(r.code, context(down, r)).toBe(1);
    expect(events(down.host, "update_failed").map((e) => e.phase).at(-1)).toBe("service");
    expect(events(down.host, "not_held")).toHaveLength(2);
    expect(entryOf(down).hold).toBeUndefined();
    expect(expectWhole(down.host, down.name, [v2, v3])).toEqual({ onDisk: v3.sha256, recorded: v2.sha256 });
    // This pass failed on the host, and said so; it did not die on v3, so it counts nothing.
    expect(attemptRecord(down)).toMatchObject({ target: v3.sha256, deaths: 0 });

    ownSup = await supervisor([program(down)]);
    const again = await pass(down, { SUPERVISORCTL: ownSup.ctl });
    expect(again, context(down, again)).toEqual({ code: 0, stdout: "", stderr: "" });
    expectDone(down.host, down.name, v2, v3);
    expect(events(down.host, "attempt_resumed").map((e) => [e.deaths, e.next])).toEqual([["1", "finish"], ["1", "finish"]]);
    expect(reports(down)).toEqual([reportOf(down, v3)]);
  }, 60_000);

  test("supervisorctl not found (hidden in a private mount namespace): exit 1 naming the fix; with supervisorctl back the next pass updates", async () => {
    const hide = ["-m", "--propagation", "private", "sh", "-c", 'mount --bind /dev/null /usr/bin/supervisorctl && exec "$0" "$@"'];
    const usable = Bun.spawnSync(["unshare", ...hide, "/bin/sh", "-c", "! test -x /usr/bin/supervisorctl"], { stdout: "pipe", stderr: "pipe" });
    if (!usable.success) {
      const why = `unshare -m with a bind mount is not usable here (root in a mount namespace is needed): ${usable.stderr.toString().trim()}`;
      if (process.env.CI === "true") throw new Error(why);
      console.warn(`skipped: ${why}`);
      return;
    }
    const v2 = artifact(serviceScript({ tag: "hidden-v2" }));
    bm.setTarget(hidden.name, v2);
    bm.clearRequests();
    const { SUPERVISORCTL: _unset, ...env } = hidden.host.env(bm.api, { PATH: "/usr/bin:/bin" });
    const files = filesNow(hidden);
    const r = await runBinProxy([...hide, BIN_PROXY], env, { executable: "/usr/bin/unshare" });
    expectHostFailure(hidden, r, /^hidden runs as supervisor program hidden, but no supervisorctl was found .*: install supervisor, set SUPERVISORCTL to its path, or SUPERVISORCTL="" to update without restarting/, files);

    const again = await runBinProxy([], { ...env, SUPERVISORCTL: sup.ctl });
    expect(again, context(hidden, again)).toEqual({ code: 0, stdout: "", stderr: "" });
    expectDone(hidden.host, hidden.name, hidden.v1, v2);
    expect(await sup.status(hidden.name)).toBe("RUNNING");
  }, 60_000);

  test('SUPERVISORCTL="": updated without a restart, and the updated line says the service still runs the old binary', async () => {
    const v2 = artifact(serviceScript({ tag: "quiet-v2" }));
    bm.setTarget(quiet.name, v2);
    const pidBefore = await sup.pid(quiet.name);
    const r = await pass(quiet, { SUPERVISORCTL: "" });
    expect(r, context(quiet, r)).toEqual({ code: 0, stdout: "", stderr: "" });
    expectDone(quiet.host, quiet.name, quiet.v1, v2);
    expect(await sup.pid(quiet.name)).toBe(pidBefore);
    expect(events(quiet.host, "updated").map((e) => e.not_restarted)).toEqual([`SUPERVISORCTL is empty: ${quiet.name} still runs the old binary until it is restarted`]);
  }, 60_000);

  test("a program supervisord does not know: exit 1 naming the section to add, nothing swapped, not held", async () => {
    bm.setTarget(stray.name, artifact(serviceScript({ tag: "stray-v2" })));
    bm.clearRequests();
    const files = filesNow(stray);
    expectHostFailure(stray, await pass(stray), /^supervisord has no program stray: add a \[program:stray\] section, or fix serviceName in the manifest/, files);
  }, 60_000);
});

describe("a pass that dies after its swap is resumed and counted; the second death rolls back and holds", () => {
  test("killed in the restart: rollback refuses while the attempt is open; the next pass finishes it and reports it once", async () => {
    // quiet is at v2 (updated without a restart above), with v1 kept as its previous version.
    const v2 = artifact(serviceScript({ tag: "quiet-v2" }));
    const v3 = artifact(serviceScript({ tag: "quiet-v3" }));
    bm.setTarget(quiet.name, v3);
    bm.clearRequests();
    const servicePid = await sup.pid(quiet.name);
    const p = startPass(quiet.host, bm.api, { SUPERVISORCTL: sup.ctl });
    await whileRunning(p, async () => !processAlive(servicePid) && (await sup.status(quiet.name)) === "STARTING", "the restart");
    expect((await killGroup(p)).code).toBe(137);
    expect(expectWhole(quiet.host, quiet.name, [v2, v3])).toEqual({ onDisk: v3.sha256, recorded: v2.sha256 });

    const manifestBefore = readFileSync(quiet.host.manifest, "utf8");
    const refused = await pass(quiet, {}, ["rollback", quiet.name]);
    expect(refused.code, context(quiet, refused)).toBe(1);
    expect(events(quiet.host, "rollback_refused").map((e) => e.reason)).toEqual([
      `the update to ${short(v3)} started ${attemptRecord(quiet).startedAt} is uncommitted; run a pass first (it finishes it, or rolls it back after its second death)`,
    ]);
    expect(readFileSync(quiet.path)).toEqual(Buffer.from(v3.bytes));
    expect(readFileSync(quiet.host.manifest, "utf8")).toBe(manifestBefore);

    await sup.waitFor(quiet.name, ["RUNNING"]);
    const r = await pass(quiet);
    expect(r, context(quiet, r)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(events(quiet.host, "attempt_resumed").map((e) => [e.deaths, e.next])).toEqual([["1", "finish"]]);
    expectDone(quiet.host, quiet.name, v2, v3);
    expect(await sup.status(quiet.name)).toBe("RUNNING");
    expect(downloads(quiet)).toBe(1);
    expect(reports(quiet)).toEqual([reportOf(quiet, v3)]);
  }, 60_000);

  test("killed twice while supervisor restarts the same target: the third pass rolls back to v1 and holds v2; the fourth is held", async () => {
    const v2 = artifact(serviceScript({ tag: "looped-v2" }));
    bm.setTarget(looped.name, v2);
    bm.clearRequests();
    for (const deaths of [0, 1]) {
      await sup.waitFor(looped.name, ["RUNNING"]);
      const servicePid = await sup.pid(looped.name);
      const p = startPass(looped.host, bm.api, { SUPERVISORCTL: sup.ctl });
      // Killed once the old process is gone and the new one is starting: supervisord goes on starting it, as after a real kill.
      await whileRunning(p, async () => !processAlive(servicePid) && (await sup.status(looped.name)) === "STARTING", "the restart");
      expect((await killGroup(p)).code).toBe(137);
      expect(expectWhole(looped.host, looped.name, [looped.v1, v2])).toEqual({ onDisk: v2.sha256, recorded: looped.v1.sha256 });
      expect(attemptRecord(looped)).toMatchObject({ target: v2.sha256, replaced: looped.v1.sha256, source: "download", deaths });

      // status shows the uncommitted attempt.
      const st = await pass(looped, {}, ["status", "--json"]);
      const row = (JSON.parse(st.stdout) as { binaries: { name: string; attempt: unknown }[] }).binaries.find((b) => b.name === looped.name)!;
      expect(row.attempt).toEqual({ target: v2.sha256, startedAt: attemptRecord(looped).startedAt, deaths });
    }
    expect(events(looped.host, "attempt_resumed").map((e) => [e.deaths, e.next])).toEqual([["1", "finish"]]);

    await sup.waitFor(looped.name, ["RUNNING"]);
    const r = await pass(looped);
    expect(r.code, context(looped, r)).toBe(1);
    expect(events(looped.host, "update_failed").map((e) => e.phase)).toEqual(["give-up"]);
    expect(events(looped.host, "attempt_resumed").map((e) => [e.deaths, e.next])).toEqual([["1", "finish"], ["2", "give-up"]]);
    expect(events(looped.host, "holding").map((e) => [e.target, e.failures])).toEqual([[short(v2), "1"]]);
    expect(readFileSync(looped.path)).toEqual(Buffer.from(looped.v1.bytes));
    expect(entryOf(looped)).toMatchObject({ version: looped.v1.sha256, hold: { version: v2.sha256, failures: 1 } });
    expect(existsSync(journalDir(looped))).toBe(false);
    expect(await sup.status(looped.name)).toBe("RUNNING");
    expect(downloads(looped)).toBe(1);
    expect(reports(looped)).toEqual([]);
    expect(looped.host.listFiles()).toEqual(
      [`bin/${looped.name}`, "etc/bin-manifests.json", "etc/config", `lock/${MANIFEST_LOCK}`, "log/bin-proxy.log", `state/backups/${looped.name}/${looped.v1.sha256}`, "state/hash-cache.json"].sort(),
    );

    bm.clearRequests();
    expect(await pass(looped)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(downloads(looped)).toBe(0);
    expect(readFileSync(looped.path)).toEqual(Buffer.from(looped.v1.bytes));
  }, 90_000);

  test("a new version that kills the pass on every start is rolled back and held by the third pass", async () => {
    const v2 = passKiller(killer, "killer-v2");
    bm.setTarget(killer.name, v2);
    bm.clearRequests();
    for (const deaths of [0, 1]) {
      await sup.waitFor(killer.name, ["RUNNING"]);
      const p = startPass(killer.host, bm.api, { SUPERVISORCTL: sup.ctl });
      const run = await p.done;
      expect(run.code, context(killer, run)).toBe(137);
      await until(() => groupGone(p.pid), () => "the killed pass's supervisorctl to finish");
      expect(attemptRecord(killer)).toMatchObject({ target: v2.sha256, deaths });
    }
    await sup.waitFor(killer.name, ["RUNNING"]);
    const r = await pass(killer);
    expect(r.code, context(killer, r)).toBe(1);
    expect(events(killer.host, "update_failed").map((e) => e.phase)).toEqual(["give-up"]);
    expect(events(killer.host, "attempt_resumed")).toHaveLength(2);
    expect(readFileSync(killer.path)).toEqual(Buffer.from(killer.v1.bytes));
    expect(entryOf(killer)).toMatchObject({ version: killer.v1.sha256, hold: { version: v2.sha256, failures: 1 } });
    expect(existsSync(journalDir(killer))).toBe(false);
    expect(await sup.status(killer.name)).toBe("RUNNING");
    // v1 runs (`sleep 100000`), not the killer (`sleep 100001`).
    expect(readFileSync(`/proc/${await sup.pid(killer.name)}/cmdline`, "utf8").split("\0")).toEqual(["sleep", "100000", ""]);
    expect(reports(killer)).toEqual([]);
  }, 90_000);

  test("a first install that kills its pass twice is taken back by the third: the file removed, the program stopped, the target held", async () => {
    const v1 = passKiller(fresh, "fresh-v1");
    bm.setTarget(fresh.name, v1);
    for (const deaths of [0, 1]) {
      const p = startPass(fresh.host, bm.api, { SUPERVISORCTL: sup.ctl });
      const run = await p.done;
      expect(run.code, context(fresh, run)).toBe(137);
      await until(() => groupGone(p.pid), () => "the killed pass's supervisorctl to finish");
      expect(attemptRecord(fresh)).toMatchObject({ target: v1.sha256, replaced: null, deaths });
    }
    // The second death's resume finished nothing: the manifest never named the killer as installed.
    expect(entryOf(fresh).version).toBe("");
    const r = await pass(fresh);
    expect(r.code, context(fresh, r)).toBe(1);
    expect(events(fresh.host, "update_failed").map((e) => e.phase)).toEqual(["give-up"]);
    expect(events(fresh.host, "rolled_back").map((e) => e.to)).toEqual(["nothing"]);
    expect(existsSync(fresh.path)).toBe(false);
    expect(await sup.status(fresh.name)).toBe("STOPPED");
    expect(entryOf(fresh)).toMatchObject({ version: "", hold: { version: v1.sha256, failures: 1 } });
    expect(existsSync(journalDir(fresh))).toBe(false);
    expect(reports(fresh)).toEqual([]);
  }, 90_000);
});

describe("an update whose undo fails", () => {
  test("a backup gone before the put-back: exit 1, the record kept and marked inconsistent, status says so, nothing reported", async () => {
    // v2 removes the backup of v1 when it starts, then fails its start: the put-back finds nothing to put back.
    const v2 = artifact(["#!/bin/sh", "# test service lost-v2", `rm -f '${join(lost.host.stateDir, "backups", lost.name)}'/*`, "exit 1", ""].join("\n"));
    bm.setTarget(lost.name, v2);
    bm.clearRequests();
    const r = await pass(lost);
    expect(r.code, context(lost, r)).toBe(1);
    expect(events(lost.host, "update_failed").map((e) => e.phase)).toEqual(["restart"]);
    expect(events(lost.host, "undo_failed").map((e) => e.phase)).toContain("install");
    expect(readFileSync(lost.path)).toEqual(Buffer.from(v2.bytes));
    expect(attemptRecord(lost)).toMatchObject({ target: v2.sha256, replaced: lost.v1.sha256 });
    expect(String(attemptRecord(lost).inconsistent)).toMatch(new RegExp(`^install: ENOENT.*backups/lost/${lost.v1.sha256}`));
    expect(entryOf(lost)).toMatchObject({ version: lost.v1.sha256 });
    expect(reports(lost)).toEqual([]);

    const st = await pass(lost, {}, ["status"]);
    expect(st.stdout).toContain(`${lost.name}: inconsistent: install: ENOENT`);
  }, 60_000);
});

describe("every installed version reaches the API, once acknowledged", () => {
  test("adoption is reported once", async () => {
    const adopted = site("adopted", { service: false });
    adopted.host.writeManifest([{ serviceName: "", binaryName: adopted.name, version: "", previousVersion: "", port: 0 }]);
    bm.setTarget(adopted.name, adopted.v1, "v1.0");
    bm.clearRequests();
    expect(await runBinProxy([], adopted.host.env(bm.api))).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(entryOf(adopted).version).toBe(adopted.v1.sha256);
    expect(events(adopted.host, "adopted")).toHaveLength(1);
    expect(reports(adopted)).toEqual([reportOf(adopted, adopted.v1, "v1.0")]);
    expect(existsSync(journalDir(adopted))).toBe(false);
    expect(await runBinProxy([], adopted.host.env(bm.api))).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(reports(adopted)).toHaveLength(1);
  }, 60_000);

  test("a report the API refused (HTTP 500) is kept, and sent once by the next pass; the pass after sends none", async () => {
    const v2 = artifact(serviceScript({ tag: "reported-v2" }));
    bm.setTarget(reported.name, v2, "v2.0");
    bm.override("POST", `${API}/bins/${reported.name}`, status(500));
    bm.clearRequests();
    let r;
    try {
      r = await pass(reported);
    } finally {
      bm.override("POST", `${API}/bins/${reported.name}`, null);
    }
    expect(r.code, context(reported, r)).toBe(1);
    expect(r.stderr).toContain("event=report_failed");
    expect(events(reported.host, "report_failed").map((e) => e.version)).toEqual([short(v2)]);
    expect(events(reported.host, "updated")).toHaveLength(1);
    expect(entryOf(reported)).toMatchObject({ version: v2.sha256, previousVersion: reported.v1.sha256 });
    expect(readFileSync(reported.path)).toEqual(Buffer.from(v2.bytes));
    expect(readdirSync(journalDir(reported))).toEqual([`${reported.name}.report.json`]);

    bm.clearRequests();
    expect(await pass(reported)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(reports(reported)).toEqual([reportOf(reported, v2, "v2.0")]);
    expect(events(reported.host, "report_retried").map((e) => e.version)).toEqual([short(v2)]);
    expect(existsSync(journalDir(reported))).toBe(false);

    bm.clearRequests();
    expect(await pass(reported)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(reports(reported)).toEqual([]);
    expect(events(reported.host, "report_retried")).toHaveLength(1);
    expectDone(reported.host, reported.name, reported.v1, v2);
  }, 60_000);

  test("a pass killed while the API holds back its report: the next pass sends it, once", async () => {
    const v2 = artifact(serviceScript({ tag: "cut-v2" }));
    bm.setTarget(cut.name, v2);
    bm.override("POST", `${API}/bins/${cut.name}`, stallHeaders());
    bm.clearRequests();
    const p = startPass(cut.host, bm.api);
    try {
      await whileRunning(p, () => reports(cut).length > 0, "the report sent");
      expect((await killPass(p)).code).toBe(137);
    } finally {
      await killPass(p);
      bm.override("POST", `${API}/bins/${cut.name}`, null);
    }
    expect(expectWhole(cut.host, cut.name, [v2])).toEqual({ onDisk: v2.sha256, recorded: v2.sha256 });
    expect(readdirSync(journalDir(cut))).toEqual([`${cut.name}.report.json`]);

    bm.clearRequests();
    expect(await pass(cut)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(reports(cut)).toEqual([reportOf(cut, v2)]);
    bm.clearRequests();
    expect(await pass(cut)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(reports(cut)).toEqual([]);
    expectDone(cut.host, cut.name, cut.v1, v2);
  }, 60_000);
});

describe("a committed host keeps no trace of the journal", () => {
  test("a journal record's temp file a killed pass left goes, and the journal directory with it, at the next update", async () => {
    const gone = Bun.spawn(["true"]);
    await gone.exited;
    const planted = join(journalDir(trace), `.${trace.name}.attempt.json.${gone.pid}.tmp`);
    mkdirSync(journalDir(trace), { recursive: true });
    writeFileSync(planted, '{"target":"');
    const v2 = artifact(serviceScript({ tag: "trace-v2" }));
    bm.setTarget(trace.name, v2);
    expect(await pass(trace)).toEqual({ code: 0, stdout: "", stderr: "" });
    expectDone(trace.host, trace.name, trace.v1, v2);
    expect(existsSync(journalDir(trace))).toBe(false);
  }, 60_000);
});

describe("a give-up killed after it put the backup back", () => {
  test("is finished by the next pass, not forgotten: the target held, nothing downloaded, the record gone", async () => {
    const s = site("gaveup", { service: false });
    const v2 = artifact(serviceScript({ tag: "gaveup-v2" }));
    // What such a kill leaves: v1 back on disk and in the manifest, the record counting two deaths.
    mkdirSync(journalDir(s), { recursive: true });
    const record = { target: v2.sha256, targetName: short(v2), replaced: s.v1.sha256, source: "download", startedAt: new Date().toISOString(), deaths: 2 };
    writeFileSync(join(journalDir(s), `${s.name}.attempt.json`), JSON.stringify(record));
    bm.setTarget(s.name, v2);
    bm.clearRequests();

    const r = await pass(s);
    expect(r.code, context(s, r)).toBe(1);
    expect(events(s.host, "update_failed").map((e) => e.phase)).toEqual(["give-up"]);
    expect(entryOf(s)).toMatchObject({ version: s.v1.sha256, hold: { version: v2.sha256, failures: 1 } });
    expect(readFileSync(s.path)).toEqual(Buffer.from(s.v1.bytes));
    expect(existsSync(journalDir(s))).toBe(false);
    expect(downloads(s)).toBe(0);

    // Held from now on, as after any give-up.
    bm.clearRequests();
    expect(await pass(s)).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(downloads(s)).toBe(0);
  }, 60_000);
});
