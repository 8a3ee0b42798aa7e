// End-to-end tests of self-update (SPEC §6, last paragraph): a manifest entry "bin-proxy" replaces the running executable, once the new one has answered --version.
import { afterAll, beforeAll, beforeEach, expect, test } from "bun:test";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { artifact, startBinManager, type Artifact, type BinManager } from "../fixture/bin-manager.ts";
import { selfUpdateBuilds, makeHost, runBinProxy, serviceScript, type Host } from "../fixture/host.ts";
import { requireCommand } from "../fixture/daemon.ts";
import { startSupervisor, type Supervisor } from "../fixture/supervisor.ts";

const NAME = "bin-proxy";
const API = "/api/v1";
/** Stamped into the new build, so its --version tells it apart from the running one. */
const NEXT_COMMIT = "next-release";

let scratch: string;
let bm: BinManager;
let sup: Supervisor;
let host: Host;
/** The build under test, and a new build of the same source: what the API offers. */
let current: Artifact;
let next: Artifact;
/** dist/bin-proxy as it was when the tests started: a rebuild meanwhile does not change what they run. */
let currentPath: string;

const sha256Of = (path: string) => new Bun.CryptoHasher("sha256").update(readFileSync(path)).digest("hex");

beforeAll(async () => {
  scratch = mkdtempSync(join(tmpdir(), "bin-proxy-self-update-test-"));
  ({ next, current, currentPath } = await selfUpdateBuilds(scratch, NEXT_COMMIT));
  bm = await startBinManager();
  // A supervised program also called bin-proxy: restarting it would show as a new pid.
  const service = join(scratch, "service");
  writeFileSync(service, serviceScript({ tag: "a program named like bin-proxy" }), { mode: 0o755 });
  sup = await startSupervisor(join(scratch, "supervisor"), [{ name: NAME, command: service }]);
}, 300_000);

afterAll(async () => {
  await sup?.stop();
  await bm?.stop();
  host?.cleanup();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

beforeEach(() => {
  host?.cleanup();
  host = makeHost();
  bm.clearRequests();
});

/** A copy of the build under test in a directory of its own, as /usr/local/sbin/bin-proxy is on a host. */
function installedCopy(): string {
  const dir = join(host.root, "sbin");
  mkdirSync(dir);
  const exe = join(dir, NAME);
  copyFileSync(currentPath, exe);
  chmodSync(exe, 0o755);
  host.writeManifest([{ serviceName: NAME, binaryName: NAME, version: current.sha256, previousVersion: "", port: 0 }]);
  return exe;
}

const pass = (exe: string) => runBinProxy([], host.env(bm.api, { SUPERVISORCTL: sup.ctl }), { executable: exe });
const entry = () => host.readManifest().binaries[0]!;
const downloads = () => bm.count("GET", `${API}/download/${NAME}`) + bm.count("GET", `${API}/releases/latest/${NAME}/download`);
const reported = () => bm.requests.filter((r) => r.method === "POST" && r.path === `${API}/bins/${NAME}`).map((r) => r.body);
const progress = () => bm.requests.filter((r) => r.path === `${API}/bins/${NAME}/progress`).map((r) => (r.body as { status: string }).status);

async function versionOf(exe: string): Promise<string> {
  const { code, stdout, stderr } = await runBinProxy(["--version"], {}, { executable: exe });
  if (code !== 0) throw new Error(`${exe} --version exited ${code}: ${stderr}`);
  return stdout;
}

test("a new bin-proxy replaces the running one in place; nothing is restarted; the next run is the new one", async () => {
  const exe = installedCopy();
  expect(await versionOf(exe)).not.toContain(NEXT_COMMIT);
  bm.setTarget(NAME, next, "1.0.1");
  const servicePid = await sup.pid(NAME);
  expect(servicePid).toBeGreaterThan(0);

  const run = await pass(exe);
  if (run.code !== 0) throw new Error(`the pass exited ${run.code}:\n${run.stderr}\n${host.log()}`);
  expect(run.stderr).toBe("");
  expect(sha256Of(exe)).toBe(next.sha256);
  expect(statSync(exe).mode & 0o7777).toBe(0o755);
  expect(await versionOf(exe)).toContain(`commit ${NEXT_COMMIT}`);
  // Only the executable is left beside it: no download, no staged file.
  expect(readdirSync(dirname(exe))).toEqual([NAME]);
  expect(entry().version).toBe(next.sha256);
  expect(entry().previousVersion).toBe(current.sha256);
  expect(entry().hold).toBeUndefined();
  expect(sha256Of(join(host.stateDir, "backups", NAME, current.sha256))).toBe(current.sha256);
  expect(host.log()).toMatch(new RegExp(`bin=${NAME} event=updated from=${current.sha256.slice(0, 12)} to=${next.sha256.slice(0, 12)}`));
  expect(reported()).toEqual([{ nodeName: "test-node", binName: NAME, sha256: next.sha256, version: "1.0.1" }]);
  expect(progress().at(-1)).toBe("success");
  expect(await sup.pid(NAME)).toBe(servicePid);

  // The next cron minute: the new executable finds itself up to date.
  bm.clearRequests();
  const again = await pass(exe);
  expect(again.code).toBe(0);
  expect(downloads()).toBe(0);
  expect(reported()).toEqual([]);
  expect(sha256Of(exe)).toBe(next.sha256);
});

test("while the new bin-proxy answers --version, its staged file is still flocked by the pass (no other run can take it over)", async () => {
  const exe = installedCopy();
  // flock -n succeeds only when nobody holds the file's flock: then this "release" fails its check.
  // By its full path: a probe that could not find flock would pass for the wrong reason.
  const flock = requireCommand("flock", "util-linux");
  const probe = artifact(`#!/bin/sh\nif ${flock} -n "$0" true; then echo 'staged file not flocked'; exit 1; fi\necho 'bin-proxy 9.9.9 (probe)'\n`);
  bm.setTarget(NAME, probe, "9.9.9");
  const run = await pass(exe);
  expect(run.stderr).not.toContain("not flocked");
  expect(run.code).toBe(0);
  expect(sha256Of(exe)).toBe(probe.sha256);
  expect(readdirSync(dirname(exe))).toEqual([NAME]);
});

test("a new bin-proxy that fails its --version check is not installed: the old one stays, byte for byte, and the version is held", async () => {
  for (const [broken, why] of [
    [artifact("#!/bin/sh\necho 'bin-proxy 9.9.9'\nexit 1\n"), /--version exited 1/],
    [artifact("#!/bin/sh\necho 'something else entirely'\n"), /--version exited 0: something else entirely/],
    [artifact("#!/bin/sh\necho 'Illegal instruction' >&2\nexit 132\n"), /--version exited 132: Illegal instruction/],
    // What a build for another architecture does: the kernel refuses to execute it.
    [artifact("\x7fELF but not for this machine\n"), /the download is an ELF file .*, this host is (x86_64|aarch64)/],
  ] as const) {
    host?.cleanup();
    host = makeHost();
    bm.clearRequests();
    const exe = installedCopy();
    bm.setTarget(NAME, broken, "6.6.6");

    const run = await pass(exe);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain("the new bin-proxy does not run");
    expect(run.stderr).toMatch(why);
    expect(sha256Of(exe)).toBe(current.sha256);
    expect(await versionOf(exe)).not.toContain(NEXT_COMMIT);
    expect(readdirSync(dirname(exe))).toEqual([NAME]);
    expect(entry().version).toBe(current.sha256);
    expect(entry().hold).toMatchObject({ version: broken.sha256, failures: 1 });
    expect(host.log()).toMatch(new RegExp(`bin=${NAME} event=update_failed phase=download .*does not run`));
    expect(reported()).toEqual([]);
    expect(progress().at(-1)).toBe("failed");

    // Held: the next pass does not download it again.
    bm.clearRequests();
    const again = await pass(exe);
    expect(again.code).toBe(0);
    expect(downloads()).toBe(0);
    expect(sha256Of(exe)).toBe(current.sha256);
  }
});
