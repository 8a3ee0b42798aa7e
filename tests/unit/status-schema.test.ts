// `bin-proxy status --json` against its published schema (lib/status.schema.json): the compiled executable on a host with one binary in each state.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hostPool, runBinProxy, serviceScript, type Host } from "../fixture/host.ts";
import { STATUS_SCHEMA, validate } from "../fixture/jsonschema.ts";
import { startSupervisor, type Supervisor } from "../fixture/supervisor.ts";

const sha = (text: string) => new Bun.CryptoHasher("sha256").update(text).digest("hex");
const OTHER = "e".repeat(64);

const hosts = hostPool();
let host: Host;
let sup: Supervisor;
let supDir: string;
/** What status --json printed, parsed. */
let report: Record<string, unknown> & { binaries: Record<string, unknown>[] };

beforeAll(async () => {
  host = hosts.make();
  const web = serviceScript({ tag: "web" });
  const webPath = host.writeBinary("web", web);
  host.writeBinary("tool", "#!/bin/sh\necho tool 2\n");
  supDir = mkdtempSync(join(tmpdir(), "bin-proxy-schema-supervisor-"));
  sup = await startSupervisor(supDir, [{ name: "web", command: webPath }]);
  await sup.waitFor("web", ["RUNNING"]);
  host.writeManifest([
    // Running under supervisor, as the manifest records it.
    { serviceName: "web", binaryName: "web", version: sha(web), previousVersion: OTHER, port: 0 },
    // Not the manifest's version, locked by the old script, held after two failures.
    { serviceName: "", binaryName: "tool", version: sha("something else"), previousVersion: "", port: 0, hold: { version: OTHER, failures: 2, until: "2099-01-01T00:00:00.000Z" } },
    // Missing from disk, held by `rollback` until the API moves on.
    { serviceName: "", binaryName: "gone", version: "", previousVersion: "", port: 0, hold: { version: OTHER, failures: 0, until: null } },
    { serviceName: "", binaryName: "../escape", version: "", previousVersion: "", port: 0 },
  ]);
  writeFileSync(join(host.lockDir, `tool-${OTHER}.lock`), `${Math.floor(Date.now() / 1000) - 5}\n`);
  const { code, stdout, stderr } = await runBinProxy(["status", "--json"], host.env("http://127.0.0.1:9/api/v1", { SUPERVISORCTL: sup.ctl }));
  // 1: some binaries need attention, which is what this host is for.
  expect([code, stderr]).toEqual([1, ""]);
  report = JSON.parse(stdout);
});

afterAll(async () => {
  await sup?.stop();
  if (supDir) rmSync(supDir, { recursive: true, force: true });
  hosts.cleanup();
});

describe("status --json", () => {
  test("validates against lib/status.schema.json", () => {
    expect(validate(STATUS_SCHEMA, report)).toEqual([]);
  });

  test("the host shows every kind of value the schema allows (so the check above covers them)", () => {
    const [web, tool, gone] = report.binaries as Record<string, any>[];
    expect(web).toMatchObject({ name: "web", supervisor: "RUNNING", attention: null, hold: null, locks: [] });
    expect(tool!.locks).toHaveLength(1);
    expect(tool!.hold).toMatchObject({ failures: 2, active: true });
    expect(tool!.attention).toBeString();
    expect(gone).toMatchObject({ onDisk: null, version: null, supervisor: null, hold: { until: null } });
    expect(report.rejected).toHaveLength(1);
  });

  test("the schema is strict: a missing field, a wrong type, an unknown field, a short hash or a bad time are each refused", () => {
    const copy = (): any => structuredClone(report);
    const broken: [string, (r: any) => void, RegExp][] = [
      ["missing", (r) => delete r.binaries[0].attention, /\/binaries\/0: attention is required/],
      ["wrong type", (r) => (r.binaries[1].locks[0].stale = "no"), /\/binaries\/1\/locks\/0\/stale: is string, must be boolean/],
      ["unknown field", (r) => (r.extra = 1), /\/extra: is not in the schema/],
      ["short hash", (r) => (r.binaries[0].version = r.binaries[0].version.slice(0, 12)), /\/binaries\/0\/version: .* does not match/],
      ["bad time", (r) => (r.binaries[1].hold.until = "tomorrow"), /\/binaries\/1\/hold\/until: "tomorrow" is not a date-time/],
      ["new field of the wrong shape", (r) => (r.lastPass = { at: "2026-11-25T10:00:00.000Z", exitCode: 0 }), /\/lastPass: durationMs is required/],
    ];
    for (const [what, breakIt, message] of broken) {
      const r = copy();
      breakIt(r);
      const errors = validate(STATUS_SCHEMA, r);
      expect([what, errors.join("\n")]).toEqual([what, expect.stringMatching(message)]);
    }
  });

  test("the fields status is about to gain validate when present", () => {
    const r: any = structuredClone(report);
    r.lastPass = { at: "2026-11-25T10:00:01.500Z", exitCode: 1, durationMs: 1500 };
    r.signaturesRequired = false;
    r.binaries[0].attempt = { target: OTHER, startedAt: "2026-11-25T10:00:00.000Z", deaths: 1 };
    r.binaries[0].signedAt = null;
    r.binaries[1].attempt = null;
    r.binaries[1].signedAt = "2026-11-20T08:00:00Z";
    expect(validate(STATUS_SCHEMA, r)).toEqual([]);
  });
});
