// End-to-end tests of holds (SPEC §6 steps 2 and 7): a version that fails to start is not retried every minute.
// The tests run in order on one host and one supervised service, each starting from what the previous left.
import { afterAll, beforeAll, beforeEach, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { artifact, startBinManager, type Artifact, type BinManager } from "../fixture/bin-manager.ts";
import { makeHost, runBinProxy, serviceScript, type Host } from "../fixture/host.ts";
import { startSupervisor, type Supervisor } from "../fixture/supervisor.ts";

const NAME = "app";
const API = "/api/v1";

let bm: BinManager;
let sup: Supervisor;
let supDir: string;
let host: Host;
let binPath: string;
const v1 = artifact(serviceScript({ tag: "app-v1" }));
const broken = artifact(serviceScript({ exitCode: 1, tag: "app-v2-broken" }));
const brokenToo = artifact(serviceScript({ exitCode: 1, tag: "app-v3-broken" }));
const good = artifact(serviceScript({ tag: "app-v4" }));

beforeAll(async () => {
  bm = await startBinManager();
  host = makeHost();
  binPath = host.writeBinary(NAME, v1.bytes);
  supDir = mkdtempSync(join(tmpdir(), "bin-proxy-hold-supervisor-"));
  sup = await startSupervisor(supDir, [{ name: NAME, command: binPath }]);
  host.writeManifest([{ serviceName: NAME, binaryName: NAME, version: v1.sha256, previousVersion: "", port: 0 }]);
});

afterAll(async () => {
  await sup?.stop();
  await bm?.stop();
  host?.cleanup();
  if (supDir) rmSync(supDir, { recursive: true, force: true });
});

beforeEach(() => bm.clearRequests());

const pass = (extra: Record<string, string> = {}, args: string[] = []) => runBinProxy(args, host.env(bm.api, { SUPERVISORCTL: sup.ctl, ...extra }));
const holdOf = () => host.readManifest().binaries[0]!.hold as { version: string; failures: number; until: string | null } | undefined;
const downloads = () => bm.count("GET", `${API}/download/${NAME}`) + bm.count("GET", `${API}/releases/latest/${NAME}/download`);
const versionLocks = () => readdirSync(host.lockDir).filter((f) => f.startsWith(`${NAME}-`));
const logLines = () => host.log().split("\n").filter((l) => l !== "");

/** Runs a pass that must fail on a broken target: rolled back to v1, RUNNING, held; returns when it ran. */
async function failingPass(target: Artifact, backoff: string): Promise<{ t0: number; t1: number }> {
  bm.clearRequests();
  const t0 = Date.now();
  const r = await pass({ BIN_PROXY_RETRY_BACKOFF: backoff });
  const t1 = Date.now();
  expect(r.code).toBe(1);
  expect(r.stderr).toContain("event=update_failed");
  expect(readFileSync(binPath)).toEqual(Buffer.from(v1.bytes));
  expect(await sup.status(NAME)).toBe("RUNNING");
  expect(downloads()).toBe(1);
  expect(holdOf()?.version).toBe(target.sha256);
  return { t0, t1 };
}

/** The hold's end lies backoffSec after some instant of the pass that set it. */
function expectUntil(window: { t0: number; t1: number }, backoffSec: number): void {
  const until = Date.parse(holdOf()!.until!);
  expect(until).toBeGreaterThanOrEqual(window.t0 + backoffSec * 1000);
  expect(until).toBeLessThanOrEqual(window.t1 + backoffSec * 1000);
}

async function waitUntilPast(iso: string): Promise<void> {
  while (Date.now() <= Date.parse(iso)) await Bun.sleep(100);
}

test("a broken version is rolled back and held for BIN_PROXY_RETRY_BACKOFF (default 600 s)", async () => {
  bm.setTarget(NAME, broken);
  const window = await failingPass(broken, "600");
  expect(holdOf()!.failures).toBe(1);
  expectUntil(window, 600);
  expect(versionLocks()).toEqual([]);
});

test("within the backoff a pass downloads nothing, touches nothing, exits 0 and logs at most one line", async () => {
  const pidBefore = await sup.pid(NAME);
  const manifestBefore = readFileSync(host.manifest, "utf8");
  for (let i = 0; i < 3; i++) {
    bm.clearRequests();
    const linesBefore = logLines().length;
    const r = await pass();
    expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(downloads()).toBe(0);
    expect(bm.requests.filter((q) => q.method === "POST")).toEqual([]);
    const added = logLines().slice(linesBefore);
    expect(added.length).toBeLessThanOrEqual(1);
    for (const line of added) expect(line).toContain("event=held");
  }
  expect(readFileSync(host.manifest, "utf8")).toBe(manifestBefore);
  expect(await sup.pid(NAME)).toBe(pidBefore);
  expect(versionLocks()).toEqual([]);
});

test("--dry-run shows the hold as held until <time>", async () => {
  const r = await pass({}, ["--dry-run"]);
  expect(r.code).toBe(0);
  expect(r.stdout).toBe(`${NAME}: held until ${holdOf()!.until}\n`);
  expect(downloads()).toBe(0);
});

test("a different target from the API is tried at once, despite the hold", async () => {
  bm.setTarget(NAME, brokenToo);
  const window = await failingPass(brokenToo, "2");
  // Another target: its own count, from one.
  expect(holdOf()!.failures).toBe(1);
  expectUntil(window, 2);
});

test("once the backoff has passed it is tried once more, and the backoff doubles with each failure", async () => {
  for (const [failures, backoffSec] of [[2, 4], [3, 8]] as const) {
    await waitUntilPast(holdOf()!.until!);
    const window = await failingPass(brokenToo, "2");
    expect(holdOf()!.failures).toBe(failures);
    expectUntil(window, backoffSec);
  }
  // Held again straight after: nothing downloaded.
  bm.clearRequests();
  expect((await pass({ BIN_PROXY_RETRY_BACKOFF: "2" })).code).toBe(0);
  expect(downloads()).toBe(0);
});

test("retry NAME lifts the hold: the next pass tries the target again, counting from one", async () => {
  bm.setTarget(NAME, broken);
  await failingPass(broken, "600");
  bm.clearRequests();
  expect((await pass()).code).toBe(0);
  expect(downloads()).toBe(0);

  bm.clearRequests();
  const r = await runBinProxy(["retry", NAME], host.env(bm.api, { SUPERVISORCTL: sup.ctl }));
  expect(r.code).toBe(0);
  expect(r.stdout).toBe(`${NAME}: hold on ${broken.sha256.slice(0, 12)} cleared; the next pass tries the API's target again\n`);
  expect(holdOf()).toBeUndefined();
  expect(bm.requests).toEqual([]); // retry is local

  const window = await failingPass(broken, "600");
  expect(holdOf()!.failures).toBe(1);
  expectUntil(window, 600);
});

test("a success clears the hold", async () => {
  bm.setTarget(NAME, good);
  const r = await pass();
  expect(r).toEqual({ code: 0, stdout: "", stderr: "" });
  expect(readFileSync(binPath)).toEqual(Buffer.from(good.bytes));
  expect(await sup.status(NAME)).toBe("RUNNING");
  const m = host.readManifest().binaries[0]!;
  expect(m.version).toBe(good.sha256);
  expect(m.previousVersion).toBe(v1.sha256);
  expect(m.hold).toBeUndefined();
});
