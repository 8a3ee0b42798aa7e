// The quick-start demo: a local bin-manager, a temp host root (kept, to look around), a supervised service if supervisor is installed, five real passes and the status table.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { artifact, startBinManager } from "../tests/fixture/bin-manager.ts";
import { freePort, makeHost, runBinProxy, serviceScript } from "../tests/fixture/host.ts";
import { startSupervisor, type Supervisor } from "../tests/fixture/supervisor.ts";

const hasSupervisor = ["/usr/bin/supervisord", "/usr/local/bin/supervisord"].some(existsSync);
const api = await startBinManager();
const host = makeHost();
const port = await freePort();
const name = "demo-service";
let supervisor: Supervisor | undefined;

try {
  if (hasSupervisor) {
    // The program starts FATAL (its binary is not installed yet); the first pass installs and restarts it.
    supervisor = await startSupervisor(join(host.root, "supervisor"), [{ name, command: join(host.binDir, name) }]);
  } else {
    console.log("supervisor is not installed (apt-get install supervisor): the demo runs without restarts.\n");
  }
  host.writeManifest([{ serviceName: hasSupervisor ? name : "", binaryName: name, version: "", previousVersion: "", port: hasSupervisor ? port : 0 }]);
  const env = host.env(api.api, supervisor ? { SUPERVISORCTL: supervisor.ctl } : {});

  const pass = async (title: string) => {
    const before = api.requests.length;
    const { code } = await runBinProxy([], env);
    const state = supervisor ? `, ${name} is ${await supervisor.status(name)}` : "";
    console.log(`== ${title}: exit ${code}${state}; ${describeCalls(api.requests.slice(before).map((r) => `${r.method} ${r.path}`))}`);
  };

  api.setTarget(name, artifact(serviceScript({ port, tag: "v1" })), "v1");
  await pass("1. first install of v1");
  await pass("2. nothing changed (no-op)");
  api.setTarget(name, artifact(serviceScript({ port, tag: "v2" })), "v2");
  await pass("3. the API names v2: update");
  if (supervisor) {
    api.setTarget(name, artifact(serviceScript({ exitCode: 1, tag: "v3 (broken)" })), "v3");
    await pass("4. the API names a broken v3: restart fails, rolled back to v2");
  } else {
    const v3 = artifact(serviceScript({ tag: "v3" }));
    api.setTarget(name, v3, "v3");
    api.setPrimary(name, new TextEncoder().encode("tampered bytes"));
    api.setFallback(name, new TextEncoder().encode("tampered bytes"));
    await pass("4. the API names v3 but serves other bytes: verification fails, v2 stays");
  }
  await pass("5. the next minute: v3 is held (backoff), nothing is downloaded");
  console.log(`\n== ${host.logFile}\n${host.log()}`);
  console.log(`== status\n${(await runBinProxy(["status"], env)).stdout}`);
} finally {
  await supervisor?.stop();
  await api.stop();
  // Kept on purpose: the log, manifest, backups and binaries the passes left are worth a look.
  console.log(`== the host root is kept: ${host.root} (rm -rf ${host.root} when done)`);
}

/** "3 API calls: POST /api/v1/keepalive, 2× GET /api/v1/bins/x": every call counted, in first-seen order. */
function describeCalls(calls: string[]): string {
  const counts = new Map<string, number>();
  for (const call of calls) counts.set(call, (counts.get(call) ?? 0) + 1);
  const listed = [...counts].map(([call, n]) => (n > 1 ? `${n}× ${call}` : call));
  return `${calls.length} API call${calls.length === 1 ? "" : "s"}${listed.length ? `: ${listed.join(", ")}` : ""}`;
}
