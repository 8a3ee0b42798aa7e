// scripts/fake-bin-manager.ts, as the README's "Trying bin-proxy by hand" uses it: started on its own, serving a directory to the compiled bin-proxy.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { artifact } from "./fixture/bin-manager.ts";
import { hostPool, runBinProxy } from "./fixture/host.ts";

const SCRIPT = resolve(import.meta.dir, "../scripts/fake-bin-manager.ts");
const hosts = hostPool();
const host = hosts.make();
const releases = join(host.root, "releases");
let proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
let output = "";
let api = "";

/** Waits until the script's stdout (read in the background) shows `pattern`; its lines come every half second. */
async function waitForOutput(pattern: RegExp): Promise<RegExpExecArray> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const found = pattern.exec(output);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`fake-bin-manager did not print ${pattern} within 10 s:\n${output}`);
    await Bun.sleep(25);
  }
}

beforeAll(async () => {
  mkdirSync(releases);
  writeFileSync(join(releases, "hello"), "#!/bin/sh\necho hello v1\n");
  proc = Bun.spawn([process.execPath, SCRIPT, releases], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  void (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of proc.stdout) output += decoder.decode(chunk, { stream: true });
  })();
  api = (await waitForOutput(/BIN_MANAGER_API=(http:\/\/127\.0\.0\.1:\d+\/api\/v1)/))[1]!;
});

afterAll(async () => {
  proc?.kill("SIGTERM");
  await proc?.exited;
  hosts.cleanup();
});

test("every file of the directory is a binary of that name; a changed file is a new target; a removed one is forgotten", async () => {
  host.writeManifest([{ serviceName: "", binaryName: "hello", version: "", previousVersion: "", port: 0 }]);
  const v1 = artifact(readFileSync(join(releases, "hello")));
  expect((await runBinProxy([], host.env(api))).code).toBe(0);
  expect(readFileSync(join(host.binDir, "hello"), "utf8")).toBe("#!/bin/sh\necho hello v1\n");
  expect(host.readManifest().binaries[0]!.version).toBe(v1.sha256);
  // It prints each request it answered.
  await waitForOutput(/ GET \/api\/v1\/download\/hello/);

  writeFileSync(join(releases, "hello"), "#!/bin/sh\necho hello v2\n");
  const v2 = artifact(readFileSync(join(releases, "hello")));
  await waitForOutput(new RegExp(`serving hello ${v2.sha256}`));
  const dry = await runBinProxy(["--dry-run"], host.env(api));
  expect(dry.stdout).toContain(`would update ${v1.sha256.slice(0, 12)} -> ${v2.sha256.slice(0, 12)}`);

  rmSync(join(releases, "hello"));
  await waitForOutput(/no longer serving hello/);
  const gone = await runBinProxy(["--dry-run"], host.env(api));
  expect(gone.code).toBe(1);
  expect(gone.stderr).toContain("target_unavailable");
});
